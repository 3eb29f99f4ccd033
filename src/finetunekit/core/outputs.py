"""What finetunekit writes, checked before it writes: outputs that can be written at all, outputs
that are not replaced unless asked, one process per run directory, and OS errors as one line.

* :func:`check_writable`: creates (and removes) a probe directory where an output will go, so a
  path under ``/proc``, on a read-only mount or without permission is refused before minutes are
  spent loading a model;
* :func:`check_new_file`: an existing file is replaced only with ``--overwrite``;
* :class:`RunDirLock`: an exclusive ``fcntl.flock`` on ``RUN_DIR/.finetunekit.lock`` while ``train``,
  ``resume`` or an export into the run directory runs; a second process gets a one-line error
  naming the holder's pid. The kernel releases the lock when its process dies, however it dies, so
  a lock left by a killed process never blocks the next one;
* :func:`check_output`: an output never lands on what its command reads, on a folder holding it,
  or on a run directory's own files, ``--overwrite`` or not (symlinks and ``..`` resolved first);
* :class:`WriteError`: an OS error while writing, naming the file and the system's reason.

Example::

    with RunDirLock(Path("runs/x")):
        ...  # the only process writing runs/x
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import FinetuneError, os_reason

LOCK_NAME = ".finetunekit.lock"


class WriteError(FinetuneError):
    """A file or directory could not be written (a full disk, a read-only mount, no permission)."""

    def __init__(self, path: Path, exc: OSError) -> None:
        self.path, self.reason = Path(path), os_reason(exc)
        super().__init__(f"could not write {path} ({self.reason})")


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path) -> None:
    """Refuse ``path`` (a directory to create or fill) when nothing can be created where it goes."""
    path = Path(path)
    base = _nearest_existing(path)
    if not base.is_dir():
        raise FinetuneError(f"cannot create {path}: {base} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(dir=base, prefix=".finetunekit-probe-"))
    except OSError as exc:
        where = "" if base == Path(os.path.abspath(path)) else f" in {base}"
        raise FinetuneError(f"cannot write {path}: cannot create files{where} ({os_reason(exc)})") from None


def check_new_file(path: Path, overwrite: bool, suffixes: tuple[str, ...] = (".html", ".htm")) -> None:
    """Refuse to replace an existing ``path`` unless ``overwrite``, and any path whose suffix is not
    one of ``suffixes`` (so an HTML page never lands on a run's weights, whatever the flags)."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise FinetuneError(f"{path}: expected a file name ending in {' or '.join(suffixes)}")
    if path.is_dir():
        raise FinetuneError(f"{path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise FinetuneError(f"{path} already exists; pass --overwrite to replace it, or choose another --output")
    check_writable(path.parent)


# What makes a folder a run directory for :func:`check_output`: finetunekit.json (a finished run), or
# a recipe.yaml with the per-epoch log or checkpoints beside it (a run stopped part-way). Stricter
# than recipe.yaml alone, since every ancestor of an output is asked and a project folder holding
# its recipe is not a run.
RUN_MARKER = "finetunekit.json"
# Inside a run directory, the places other commands write into on purpose: export's default
# folder, and pages and tables (report.html, predictions). Anything else there that exists is the
# run's own (weights, recipe, labels, checkpoints, the backbone's files, ...).
RUN_OUTPUT_FOLDERS = ("export",)
RUN_OUTPUT_SUFFIXES = (".html", ".htm", ".csv")
# A run's own sub-folders (the backbone's files, checkpoints, adapters, trackers). Any other folder
# inside a run that holds no weights is an earlier command's output (explain, lr-find) and may be
# replaced with --overwrite, so running `explain --output runs/x/explanations` twice works.
RUN_OWN_FOLDERS = ("backbone", "checkpoints", "adapter", "tensorboard", "mlruns")


def _earlier_output_folder(run: Path, inside: Path) -> bool:
    folder = run / inside.parts[0]
    if not folder.is_dir() or folder.is_symlink() or inside.parts[0] in RUN_OWN_FOLDERS:
        return False
    return not any(p.suffix == ".safetensors" or p.name == RUN_MARKER for p in folder.rglob("*"))


def is_finished_or_stopped_run(path: Path) -> bool:
    """Whether ``path`` is a run directory for :func:`check_output` (see RUN_MARKER)."""
    path = Path(path)
    if (path / RUN_MARKER).is_file():
        return True
    return (path / "recipe.yaml").is_file() and ((path / "metrics.jsonl").is_file() or (path / "checkpoints").is_dir())


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def check_output(
    output: str | os.PathLike, reads: Iterable[str | os.PathLike | None] = (), *, replaces: bool = True,
    own_run: bool = False, flag: str = "--output",
) -> None:
    """Refuse an ``output`` that would destroy an input, before anything is written; ``--overwrite``
    means "replace my earlier output", never "replace what this command reads".

    * ``output`` is one of ``reads`` (a file or folder the command reads), or, when the command
      ``replaces`` the output as a whole (a file; a folder emptied first), a folder holding one;
    * ``output`` is a run directory, unless it is the run this command trains (``own_run``);
    * ``output`` already exists inside a run directory and is not one of the places other
      commands write there (``export/``, ``.html`` and ``.csv`` files): it is the run's own file.

    Paths are compared after resolving symlinks and ``..``; ``reads`` that do not exist are skipped
    (their own command reports them). The error names both paths.

    Example::

        check_output("runs/x", reads=["runs/x"])  # FinetuneError: --output runs/x is the run directory ...
    """
    target = _real(output)
    for read in reads:
        if read is None or str(read) == "" or not os.path.lexists(read):
            continue
        source = _real(read)
        what = "run directory" if source.is_dir() and is_finished_or_stopped_run(source) else (
            "folder" if source.is_dir() else "file")
        if target == source:
            raise FinetuneError(
                f"{flag} {output} is the {what} this command reads ({read}); choose another {flag}")
        if replaces and source.is_relative_to(target):
            raise FinetuneError(
                f"{flag} {output} holds the {what} {read} that this command reads; replacing it would delete "
                f"that {what}: choose another {flag}")
    if is_finished_or_stopped_run(target) and not own_run:
        real = "" if str(target) == os.path.abspath(output) else f" ({target})"
        raise FinetuneError(f"{flag} {output} is a run directory{real}; an output never replaces a run: choose another {flag}")
    for run in target.parents:
        if not is_finished_or_stopped_run(run):
            continue
        inside = target.relative_to(run)
        if os.path.lexists(target) and inside.parts[0] not in RUN_OUTPUT_FOLDERS and not (
            target.suffix.lower() in RUN_OUTPUT_SUFFIXES and target.is_file()
        ) and not _earlier_output_folder(run, inside) and not (own_run and is_finished_or_stopped_run(target)):
            raise FinetuneError(
                f"{flag} {output} is {inside} of the run directory {run}; --overwrite replaces earlier outputs, never a "
                f"run's own files: choose another {flag}")


def in_run_dir(path: Path, run_dir: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(run_dir))


class RunDirLock:
    """An exclusive lock on a run directory (see the module doc). Creates the directory when it
    does not exist, and on release removes the lock file and any directory it created that is
    still empty, so a command refused early leaves nothing behind."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.created: list[Path] = []

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        missing = []
        parent = Path(os.path.abspath(self.run_dir))
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FinetuneError(f"cannot create {self.run_dir} ({os_reason(exc)})") from None
        self.created = missing  # innermost first: the order to remove them in
        try:
            self._lock()
        except BaseException:
            self._remove_created()
            raise

    def _lock(self) -> None:
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise FinetuneError(f"cannot write {self.path} ({os_reason(exc)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise FinetuneError(
                    f"{self.run_dir} is in use by another finetunekit process (pid {holder}); "
                    "wait for it to finish or stop it, then try again"
                ) from None
            # The holder before us may have removed the file between our open and our lock: then
            # we hold a lock on a file nobody else can find; start again on the current one.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding the lock (see _lock)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self.created:
            try:
                folder.rmdir()  # only when empty: a run that wrote something keeps its directory
            except OSError:
                break
        self.created = []


def is_lock(path: Path) -> bool:
    return path.name == LOCK_NAME
