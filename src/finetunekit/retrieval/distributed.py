"""Multi-process training of a dual encoder, with the in-batch negatives of every process (CLIP's).

Started the way every finetunekit run is started on several processes, by torchrun (gloo on CPU,
NCCL on GPUs)::

    torchrun --nproc_per_node 2 -m finetunekit train examples/flickr8k.yaml --output runs/f8k

``train.batch_size`` stays the global batch: each step, every process embeds its own contiguous
slice of the batch's rows, the image and caption embeddings of all processes are gathered (the
gradient flows back to each process's own slice), and the symmetric loss is taken over the whole
global batch, so each query has ``batch_size - 1`` negatives, not ``batch_size / processes - 1``.
Every process computes the same loss; the gather's backward sums the gradient of each slice over
the processes, and the parameters' gradients are then averaged over the processes, which gives
exactly the gradient of one process on the global batch (``tests/test_retrieval_distributed.py``).
In one process every function here is the identity.

Process 0 writes the run directory; the others write theirs into a temporary directory that is
removed at the end (they read process 0's checkpoint to resume).

Example::

    from finetunekit.retrieval import distributed
    rows = distributed.shard(batch)                       # this process's rows of the global batch
    img, txt = distributed.gather_pairs(img, txt, len(batch))
    loss = contrastive_loss(img, txt, scale); loss.backward()
    distributed.average_gradients(model)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def launched() -> bool:
    """True in a process that torchrun (or accelerate launch) started with others."""
    from ..core.runtime import distributed

    return distributed()


def setup() -> None:
    """Join the launcher's process group (gloo on CPU, NCCL with GPUs) unless one exists already."""
    import torch.distributed as dist

    if launched() and dist.is_available() and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def device() -> torch.device:
    """This process's device: its own GPU (LOCAL_RANK) when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if active() else torch.cuda.current_device())
    return torch.device("cpu")


def active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """(start, end) of each of ``parts`` contiguous slices of ``n`` rows, sizes differing by at most one."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for p in range(parts):
        end = start + base + (1 if p < extra else 0)
        out.append((start, end))
        start = end
    return out


def shard(batch: Sequence[T]) -> list[T]:
    """This process's contiguous slice of a global batch (the whole batch in one process)."""
    if len(batch) < world():
        from ..core.errors import FinetuneError

        raise FinetuneError(f"train.batch_size: a batch of {len(batch)} rows cannot give each of {world()} processes a row; "
                            "use fewer processes or a batch size (and a number of training images) that leaves every batch "
                            "at least one row per process")
    start, end = bounds(len(batch), world())[rank()]
    return list(batch[start:end])


class _GatherRows(torch.autograd.Function):
    """All processes' rows, padded to one length for the collective, concatenated in rank order;
    the backward sums each process's gradient of every slice and hands each process its own."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        me = dist.get_rank()
        ctx.sizes, ctx.me = sizes, me
        longest = max(sizes)
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        import torch.distributed as dist

        total = grad.contiguous().clone()
        dist.all_reduce(total)  # every process's gradient of every row, summed
        start = sum(ctx.sizes[: ctx.me])
        return total[start : start + ctx.sizes[ctx.me]], None


def gather_rows(local: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The rows of the whole global batch (of ``batch_size`` rows, sharded by :func:`shard`), in
    batch order, differentiable with respect to this process's own rows."""
    if not active():
        return local
    sizes = tuple(end - start for start, end in bounds(batch_size, world()))
    return _GatherRows.apply(local, sizes)


def gather_pairs(image_emb: torch.Tensor, text_emb: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both towers' embeddings of the global batch (see :func:`gather_rows`)."""
    return gather_rows(image_emb, batch_size), gather_rows(text_emb, batch_size)


def average_gradients(model: torch.nn.Module) -> None:
    """Average every parameter's gradient over the processes (after ``backward``), as DDP does."""
    if not active():
        return
    import torch.distributed as dist

    # the same parameters have gradients in every process (the same model, the same code path)
    params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not params:
        return
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world()
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def describe_batch(batch_size: int) -> str:
    """The batch line's start: the global batch, and how the processes share it."""
    if not active():
        return f"batch size {batch_size}: {batch_size - 1} in-batch negatives per query"
    share = " or ".join(sorted({str(e - s) for s, e in bounds(batch_size, world())}, key=int, reverse=True))
    return (f"global batch size {batch_size} over {world()} processes ({share} each, embeddings gathered): "
            f"{batch_size - 1} in-batch negatives per query")


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def private_run_dir(run_dir: Any, resume: bool) -> Any:
    """Where a process other than process 0 writes (a temporary directory; its checkpoint, to
    resume from, copied from process 0's run directory)."""
    import shutil
    import tempfile
    from pathlib import Path

    own = Path(tempfile.mkdtemp(prefix=f"finetunekit-rank{rank()}-")) / "run"
    if resume and (Path(run_dir) / "checkpoint" / "state.json").is_file():
        shutil.copytree(Path(run_dir) / "checkpoint", own / "checkpoint")
    return own
