"""The dynamic batcher on its own: a lone request does not wait, overlapping requests are gathered."""

from __future__ import annotations

import asyncio
import time

from finetunekit.use.serving.batching import DynamicBatcher


def run(coro):
    return asyncio.run(coro)


def test_a_lone_request_runs_at_once_and_overlapping_requests_share_a_batch():
    async def scenario():
        batcher = DynamicBatcher(lambda items: [x * 2 for x in items], max_batch_size=8, max_wait_ms=2000)
        await batcher.start()
        try:
            started = time.perf_counter()
            assert await batcher.submit([1]) == [2]
            lone = time.perf_counter() - started
            # five requests at once: the first finds the others queued, so the gatherer waits for them
            answers = await asyncio.gather(*(batcher.submit([i]) for i in range(5)))
            return lone, answers, dict(batcher.stats.sizes)
        finally:
            await batcher.stop()

    lone, answers, sizes = run(scenario())
    assert lone < 1.0  # not the 2 s max_wait
    assert answers == [[0], [2], [4], [6], [8]]
    assert sizes == {1: 1, 5: 1}


def test_under_load_the_gatherer_waits_for_requests_that_arrive_later():
    async def scenario():
        batcher = DynamicBatcher(lambda items: list(items), max_batch_size=4, max_wait_ms=300)
        await batcher.start()
        try:
            await asyncio.gather(*(batcher.submit([i]) for i in range(2)))  # a batch of two: requests overlap

            async def later(i):
                await asyncio.sleep(0.05 * i)
                return await batcher.submit([i])

            answers = await asyncio.gather(*(later(i) for i in range(4)))  # 0, 50, 100, 150 ms apart
            return answers, dict(batcher.stats.sizes)
        finally:
            await batcher.stop()

    answers, sizes = run(scenario())
    assert answers == [[0], [1], [2], [3]]
    assert sizes == {2: 1, 4: 1}
