"""Dynamic batching: concurrent requests gathered into one forward pass.

Requests put their inputs on an asyncio queue and wait on a future. One gatherer task takes the
first waiting request, then keeps taking more until the batch holds ``max_batch_size`` inputs or
``max_wait_ms`` has passed since the first one arrived, and runs the whole batch in one worker
thread (so the event loop keeps accepting connections while the model runs). While a batch runs,
new requests queue up; the next batch takes them at once, so under load batches fill without
waiting and throughput grows with the number of clients.

The wait is only spent under load: a request that finds no other request queued, after a batch
of one, runs at once (a lone client never pays ``max_wait_ms``); once requests overlap (the
queue holds more, or the last batch had several inputs) the gatherer waits for more again.

Example::

    batcher = DynamicBatcher(predictor.predict_items, max_batch_size=32, max_wait_ms=5)
    await batcher.start()
    probs = await batcher.submit(["a text", "another"])   # rows of one or more batched passes
    await batcher.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Job:
    items: Sequence[Any]
    future: asyncio.Future


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches had it

    def add(self, size: int) -> None:
        self.batches += 1
        self.items += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1


class DynamicBatcher:
    """Gathers the items of concurrent :meth:`submit` calls into batches for ``run_batch``.

    ``run_batch(items) -> rows`` runs in the single worker thread and returns one row per item
    (any indexable: a NumPy array, a list). With ``max_batch_size=1`` every request runs alone
    (one forward per request, the baseline of benchmarks/serve_load.py). A request holding more
    items than ``max_batch_size`` is cut into several forward passes.
    """

    def __init__(self, run_batch: Callable[[list[Any]], Any], max_batch_size: int = 32, max_wait_ms: float = 5.0) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: expected at least 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms: expected 0 or more, got {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        # One thread: the model runs one batch at a time, on torch's own intra-op threads.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finetunekit-infer")
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._carry: _Job | None = None
        self._last_size = 0  # inputs in the last batch: more than one means requests overlap

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._gather_forever(), name="finetunekit-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.executor.shutdown(wait=True)

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Queue ``items`` and wait for their rows (in order). The model's exception, if any, is raised here."""
        if self._queue is None:
            raise RuntimeError("DynamicBatcher.start() was not awaited")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(items, future))
        return await future

    async def run_alone(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the worker thread, between batches (explanations, which need autograd)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def _next_batch(self) -> list[_Job]:
        assert self._queue is not None
        first = self._carry or await self._queue.get()
        self._carry = None
        jobs, size = [first], len(first.items)
        alone = self._queue.empty() and self._last_size <= 1  # no sign of concurrent requests: do not wait
        deadline = asyncio.get_running_loop().time() + (0.0 if alone else self.max_wait)
        while size < self.max_batch_size:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                job = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if size + len(job.items) > self.max_batch_size:
                self._carry = job  # starts the next batch: requests are never split across batches
                break
            jobs.append(job)
            size += len(job.items)
        return jobs

    def _run(self, items: list[Any]) -> list[Any]:
        rows: list[Any] = []
        for start in range(0, len(items), self.max_batch_size):
            chunk = items[start : start + self.max_batch_size]
            rows.extend(self.run_batch(chunk))
            self.stats.add(len(chunk))
        return rows

    async def _gather_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch()
            live = [j for j in jobs if not j.future.done()]  # a client that went away is skipped
            if not live:
                continue
            items = [item for job in live for item in job.items]
            self._last_size = len(items)
            try:
                rows = await loop.run_in_executor(self.executor, self._run, items)
            except Exception as exc:  # noqa: BLE001 - the model's error goes to every waiting request
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            start = 0
            for job in live:
                if not job.future.done():
                    job.future.set_result(list(rows[start : start + len(job.items)]))
                start += len(job.items)
