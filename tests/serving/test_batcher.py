"""The scorer's adaptive batcher (components/serving/batcher.py), driven directly with a fake model call."""

from __future__ import annotations

import asyncio
import time

import pytest

from components.serving.batcher import GreedyBatcher


class FakeModel:
    """A model call that takes `seconds` and answers item * 10, recording each batch it was given."""

    def __init__(self, seconds: float = 0.0, fail_on=None):
        self.seconds, self.fail_on, self.batches = seconds, fail_on, []

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(self.seconds)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError(f"model failed on {self.fail_on}")
        return [i * 10 for i in items]


@pytest.mark.parametrize(("n", "max_batch", "batches"), [
    (8, 16, [list(range(8))]),  # concurrent requests share one call
    (10, 4, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]),  # and no call takes more than max_batch
], ids=["one-call", "max-batch"])
def test_concurrent_requests_share_calls_of_at_most_max_batch_and_each_gets_its_own_answer(n, max_batch, batches):
    model = FakeModel()
    batcher = GreedyBatcher(model, max_batch=max_batch)

    async def main():
        return await asyncio.gather(*(batcher(i) for i in range(n)))

    assert asyncio.run(main()) == [i * 10 for i in range(n)]
    assert model.batches == batches


def test_requests_arriving_while_the_model_is_busy_form_the_next_batch():
    model = FakeModel(seconds=0.05)
    batcher = GreedyBatcher(model, max_batch=16)

    async def main():
        first = asyncio.ensure_future(batcher(0))
        await asyncio.sleep(0.01)  # the model is now busy with [0]
        rest = await asyncio.gather(*(batcher(i) for i in (1, 2, 3)))
        return [await first, *rest]

    assert asyncio.run(main()) == [0, 10, 20, 30]
    assert model.batches == [[0], [1, 2, 3]]


def test_a_lone_request_after_a_burst_is_not_held():
    """BentoML's batcher holds lone requests for a while after a burst; this one sends one at once."""
    model = FakeModel(seconds=0.05)
    batcher = GreedyBatcher(model, max_batch=16)

    async def main():
        for _ in range(5):  # a burst: five full batches of 8
            await asyncio.gather(*(batcher(i) for i in range(8)))
        t0 = time.perf_counter()
        await batcher(99)
        return time.perf_counter() - t0

    alone = asyncio.run(main())
    assert model.batches[-1] == [99] and [len(b) for b in model.batches[:-1]] == [8] * 5
    assert alone < 0.05 * 2, f"a lone request took {alone:.3f}s for a 0.05-s model call"


def test_a_failed_call_reaches_its_own_batch_only():
    model = FakeModel(seconds=0.02, fail_on=7)
    batcher = GreedyBatcher(model, max_batch=16)

    async def main():
        failing = asyncio.gather(batcher(7), batcher(1), return_exceptions=True)
        await asyncio.sleep(0.005)  # [7, 1] is running; 2 and 3 queue behind it
        later = asyncio.gather(batcher(2), batcher(3))
        return await failing, await later

    failed, later = asyncio.run(main())
    assert [type(e) for e in failed] == [RuntimeError, RuntimeError] and "failed on 7" in str(failed[0])
    assert later == [20, 30]
    assert model.batches == [[7, 1], [2, 3]]


def test_a_caller_that_went_away_is_dropped_from_its_batch():
    model = FakeModel(seconds=0.02)
    batcher = GreedyBatcher(model, max_batch=16)

    async def main():
        busy = asyncio.ensure_future(batcher(0))
        await asyncio.sleep(0.005)
        gone, kept = asyncio.ensure_future(batcher(1)), asyncio.ensure_future(batcher(2))
        await asyncio.sleep(0)
        gone.cancel()
        return await busy, await kept

    assert asyncio.run(main()) == (0, 20)
    assert model.batches == [[0], [2]]


def test_a_wrong_number_of_results_is_an_error_not_a_mismatch():
    async def short(items):
        return items[:-1]

    batcher = GreedyBatcher(short, max_batch=16)

    async def main():
        return await asyncio.gather(batcher(1), batcher(2), return_exceptions=True)

    assert all(isinstance(e, RuntimeError) and "1 results for 2 requests" in str(e) for e in asyncio.run(main()))


def test_one_batcher_serves_successive_event_loops():
    """A restarted worker (or a test) runs a new loop: the old loop's worker task is never reused."""
    model = FakeModel()
    batcher = GreedyBatcher(model, max_batch=16)
    for _ in range(2):
        assert asyncio.run(batcher(3)) == 30
    assert model.batches == [[3], [3]]


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        GreedyBatcher(FakeModel(), max_batch=0)
