"""Multi-process retrieval training (finetunekit.retrieval.distributed): the in-batch negatives
of every process are gathered, so two processes on a global batch compute the loss and the
gradients that one process computes on the whole batch."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from finetunekit.retrieval import distributed

HERE = Path(__file__).resolve().parent


def test_a_global_batch_is_shared_in_contiguous_slices():
    assert distributed.bounds(7, 2) == [(0, 4), (4, 7)]
    assert distributed.bounds(8, 3) == [(0, 3), (3, 6), (6, 8)]
    assert [e - s for s, e in distributed.bounds(5, 5)] == [1] * 5
    # one process: the whole batch, the embeddings as they are, the batch line unchanged
    assert distributed.world() == 1 and distributed.shard([1, 2, 3]) == [1, 2, 3]
    x = torch.randn(3, 4)
    assert distributed.gather_rows(x, 3) is x
    assert distributed.describe_batch(8) == "batch size 8: 7 in-batch negatives per query"


@pytest.mark.slow  # three processes start torch and transformers: 30-60 s on 2 shared cores
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_processes_gather_the_negatives_and_match_one(tiny_bert, tmp_path):
    from safetensors.torch import load_file

    from test_distributed import _free_port, _run
    from test_retrieval import make_pairs, tiny_recipe

    make_pairs(tmp_path / "pairs", "train", 3, 0)  # 12 images: batches of 8 and 4
    make_pairs(tmp_path / "pairs", "val", 1, 1)
    step = tiny_recipe(tmp_path / "pairs", tiny_bert, strategy={"name": "full"}).to_dict()
    # both towers locked: no dropout draws, so two processes can match one exactly over a whole run
    whole = tiny_recipe(tmp_path / "pairs", tiny_bert, strategy={"name": "projections"}).to_dict()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    env.pop("WORLD_SIZE", None)
    two, one = tmp_path / "two", tmp_path / "one"
    args = [str(HERE / "dist_retrieval.py"), json.dumps(step), json.dumps(whole)]
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()), *args, str(two)], env)
    _run([sys.executable, *args, str(one)], env)
    assert json.loads((two / "rank0.json").read_text())["world"] == 2

    # one step: the same loss over the global batch of 7 (each process embedded 4 or 3 rows), and
    # the same gradients, in both processes, as one process on all 7 rows
    ranks = [load_file(str(two / f"step{r}.safetensors")) for r in (0, 1)]
    single = load_file(str(one / "step0.safetensors"))
    assert single.keys() == ranks[0].keys() == ranks[1].keys()
    assert any(k.startswith("grad.image.") for k in single) and any(k.startswith("grad.text.") for k in single)
    for r in ranks:
        assert r["loss"].item() == pytest.approx(single["loss"].item(), abs=1e-6)
        for k in single:  # float32 sums in another order: a millionth of the tensor's scale
            tolerance = 1e-5 * single[k].abs().max().item() + 1e-8
            assert torch.allclose(r[k], single[k], atol=tolerance, rtol=1e-4), f"{k}: differs by {(r[k] - single[k]).abs().max():g}"

    # a whole run: every process ends with the weights of one process on the same global batches
    rank0, rank1, alone = (load_file(str(p)) for p in (two / "rank0.safetensors", two / "rank1.safetensors", one / "rank0.safetensors"))
    for k in alone:
        assert torch.equal(rank0[k], rank1[k]), f"processes disagree on {k}"
        assert torch.allclose(rank0[k], alone[k], atol=1e-5, rtol=1e-4), f"{k}: 2 processes vs 1 differ by {(rank0[k] - alone[k]).abs().max():g}"
    # one run directory, written by process 0, judged on the whole validation set
    metrics = json.loads((two / "run" / "metrics.json").read_text())
    assert metrics["t2i_r1"] == json.loads((one / "run" / "metrics.json").read_text())["t2i_r1"]
    assert not (two / "run" / "checkpoint").exists()
