"""What the machine offers: the precision ``train.precision: auto`` means here, and whether this
process is one of several. The trainer, the feature cache and the model card all need these, so
they live below all three."""

from __future__ import annotations

import functools
import os


def resolve_precision(precision: str) -> str:
    """The precision ``train.precision`` means on this machine ("auto" picks per device)."""
    if precision != "auto":
        return precision
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo), read once per process."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return frozenset(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16 matrix units (bf16 matmuls several times faster than
    fp32); without them bf16 autocast on a CPU is emulated and slower."""
    flags = _cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_has_amx() -> bool:
    """True on CPUs with AMX tiles (bf16 matrix units that also serve oneDNN's convolutions)."""
    return "amx_bf16" in _cpu_flags()


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def distributed() -> bool:
    """True in a process started by a multi-process launcher (torchrun, accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1
