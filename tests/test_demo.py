"""The offline demo (quick mode): real bundled weights, real digits, three normal run directories."""

import json

import pytest

from finetunekit.demo import run_demo


@pytest.mark.slow
def test_demo_quick(tmp_path, capsys):
    rows = run_demo(tmp_path / "demo", quick=True)
    assert [r["method"] for r in rows] == ["pretrained, fine-tuned", "from scratch (same architecture)", "pretrained, linear probe"]
    for row in rows:
        assert json.loads((tmp_path / "demo" / row["run_dir"].split("/")[-1] / "metrics.json").read_text())["accuracy"] == row["accuracy"]
    scratch = rows[1]["accuracy"]
    # Even after two short epochs, the pretrained features beat random ones.
    assert max(rows[0]["accuracy"], rows[2]["accuracy"]) > scratch + 0.1
    assert "from scratch (same architecture)" in capsys.readouterr().out
    assert (tmp_path / "demo" / "summary.md").is_file()
    from finetunekit.core.errors import FinetuneError

    with pytest.raises(FinetuneError, match="already exists"):
        run_demo(tmp_path / "demo", quick=True)
