"""Where a command's time goes: named phases, timed in the process that runs them.

A training run records its phases (start-up, reading the data, each epoch's training and
validation, the final evaluation, saving, the card, the report) in ``RUN_DIR/timings.json`` and
prints them with the summary::

    timer = PhaseTimer()
    with timer.phase("read data"):
        examples = read(...)
    timer.add("epoch 1 train", 12.3)
    timer.as_dict()   # {"read data": 0.41, "epoch 1 train": 12.3}
    print(format_phases(timer.as_dict(), total=20.0))

Fractions of a run stay meaningful on a busy machine, where whole-process wall times do not.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseTimer:
    """Wall seconds per named phase, in the order the phases first ran (a repeated name adds up),
    and the process's CPU seconds in each (all threads; steadier than wall time when other work
    shares the machine)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self._cpu_mark: float | None = None

    def add(self, name: str, seconds: float, cpu_seconds: float | None = None) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, seconds)
        if cpu_seconds is not None:
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + max(0.0, cpu_seconds)

    def start(self) -> tuple[float, float]:
        """A mark to pass to :meth:`stop` (for phases that do not fit a ``with`` block)."""
        return time.perf_counter(), time.process_time()

    def stop(self, name: str, mark: tuple[float, float]) -> None:
        self.add(name, time.perf_counter() - mark[0], time.process_time() - mark[1])

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        mark = self.start()
        try:
            yield
        finally:
            self.stop(name, mark)

    def as_dict(self, digits: int = 3) -> dict[str, float]:
        return {name: round(value, digits) for name, value in self.seconds.items()}

    def cpu_dict(self, digits: int = 3) -> dict[str, float]:
        return {name: round(value, digits) for name, value in self.cpu_seconds.items()}


def process_age() -> float | None:
    """Seconds since this process started (the interpreter's own start-up and every import
    included), from Linux's /proc; None where that is not available."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in clock ticks after boot
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return max(0.0, uptime - started)


def format_phases(seconds: dict[str, float], total: float | None = None, cpu: dict[str, float] | None = None) -> str:
    """One line per phase, in the order they ran: its wall seconds and share of ``total`` (default:
    their sum), and its CPU seconds when ``cpu`` has them."""
    whole = total if total else sum(seconds.values()) or 1.0
    width = max((len(name) for name in seconds), default=0)
    cpu = cpu or {}
    lines = [f"  {name:<{width}}  {value:7.2f}s  {100 * value / whole:5.1f}%" + (f"  cpu {cpu[name]:7.2f}s" if name in cpu else "")
             for name, value in seconds.items()]
    accounted = sum(seconds.values())
    if total and total - accounted > 0.05:
        lines.append(f"  {'other':<{width}}  {total - accounted:7.2f}s  {100 * (total - accounted) / whole:5.1f}%")
    return "\n".join(lines)
