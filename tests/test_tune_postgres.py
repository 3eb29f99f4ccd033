"""Two `finetunekit tune` workers share one study in a real PostgreSQL server; one is SIGKILLed
part-way through a trial. The other fails the dead worker's trial once its heartbeat goes stale,
runs it again with the same parameters, and finishes the study: every trial accounted for once.

The server comes from Debian's ``postgresql`` package (.ci/run installs it): a throw-away cluster in
a temporary folder, run as the ``postgres`` user when the tests run as root (PostgreSQL refuses to
run as root), listening on 127.0.0.1 only, on a free port, stopped afterwards. The killed worker runs
in its own UTS namespace with another host name, as a second machine would: its trial can only be
recovered through the heartbeat, not by noticing a dead local process.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import tiny_image_recipe
from test_tune import ENV, SLOW_EPOCHS

optuna = pytest.importorskip("optuna", reason="optuna not installed (pip install -e '.[test]')")
pytest.importorskip("psycopg", reason="psycopg (3) not installed (pip install -e '.[test]')")

BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), None)
AS_ROOT = os.geteuid() == 0
pytestmark = [
    pytest.mark.skipif(BIN is None or not Path(BIN, "initdb").is_file(),
                       reason="PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql; .ci/run does)"),
    pytest.mark.skipif(AS_ROOT and shutil.which("runuser") is None, reason="running as root without runuser to drop to the postgres user"),
]


def _as_postgres(*command: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if AS_ROOT else list(command)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    folder = Path(tempfile.mkdtemp(prefix="finetunekit-pg-"))
    if AS_ROOT:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, port = folder / "data", _free_port()
    run = lambda *c: subprocess.run(c, check=True, capture_output=True, text=True, timeout=120)  # noqa: E731
    run(*_as_postgres(f"{BIN}/initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"))
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
    run(*_as_postgres(f"{BIN}/pg_ctl", "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "-t", "60", "start"))
    try:
        run(*_as_postgres(f"{BIN}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "studies"))
        yield f"postgresql://postgres@127.0.0.1:{port}/studies"
    finally:
        subprocess.run(_as_postgres(f"{BIN}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"), capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def _worker(recipe: Path, output: Path, url: str, other_host: bool) -> subprocess.Popen:
    command = [sys.executable, "-c", SLOW_EPOCHS, "tune", str(recipe), "--trials", "5", "--output", str(output),
               "--storage", url, "--heartbeat", "1"]
    if other_host:  # exec keeps the pid: the kill hits the worker itself
        command = ["unshare", "--uts", "sh", "-c", 'hostname worker-b && exec "$@"', "sh", *command]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_workers_share_a_postgres_study_and_survive_a_sigkill(postgres_url, image_data, tmp_path):
    other_host = AS_ROOT and shutil.which("unshare") is not None
    recipe = tiny_image_recipe(
        image_data, strategy={"name": "linear_probe"}, train={"epochs": 4},
        search={"space": {"train.head_lr": {"log_uniform": [1e-3, 1e-1]}}, "pruner": "none"},
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml())
    a = _worker(path, tmp_path / "a", postgres_url, other_host=False)
    b = _worker(path, tmp_path / "b", postgres_url, other_host=other_host)

    deadline = time.monotonic() + 240
    part_way = None
    while part_way is None:  # a trial of b's with an epoch done and the run not finished
        for worker in (a, b):
            assert worker.poll() is None, f"a worker ended early ({worker.returncode}): {worker.stderr.read()}"
        assert time.monotonic() < deadline, "worker b never got part-way through a trial"
        for trial in sorted((tmp_path / "b" / "trials").glob("*")) if (tmp_path / "b" / "trials").is_dir() else []:
            log = trial / "metrics.jsonl"
            if log.is_file() and log.read_text().strip() and not (trial / "metrics.json").exists():
                part_way = int(trial.name)
        time.sleep(0.05)
    b.send_signal(signal.SIGKILL)
    b.wait(timeout=30)
    assert b.returncode == -signal.SIGKILL
    out, err = a.communicate(timeout=300)
    assert a.returncode == 0, err

    study = optuna.load_study(study_name="finetunekit", storage=postgres_url)
    trials = study.get_trials()
    states = {s: [t.number for t in trials if t.state.name == s] for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    assert len(states["COMPLETE"]) == 5, states  # the study completes, and no trial is counted twice
    assert not states["RUNNING"] and not states["WAITING"]
    assert states["FAIL"] == [part_way], states  # only the killed trial failed
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == part_way]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"  # run again exactly once, by worker a
    killed = next(t for t in trials if t.number == part_way)
    assert retries[0].params == killed.params
    assert retries[0].user_attrs["worker"].split(":")[0] == socket.gethostname()
    if other_host:
        assert killed.user_attrs["worker"].split(":")[0] == "worker-b"
    # trial numbers are the study's: the two workers' trial folders never collide
    names_a = {p.name for p in (tmp_path / "a" / "trials").iterdir()}
    names_b = {p.name for p in (tmp_path / "b" / "trials").iterdir()}
    assert not names_a & names_b
    assert len(names_a | names_b) == len(trials)
    assert "retried after their worker died" in out
