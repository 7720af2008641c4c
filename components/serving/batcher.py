"""Adaptive batching for the scorer: concurrent requests share one model call; a lone request never waits.

When the model is free, a call takes every request already queued (up to `max_batch`) into one model
call. Requests that arrive while the model is busy queue, and form the next call. So the batch size
follows the load: 1 when requests come one at a time, up to `max_batch` under a burst, with no timer and
no estimate anywhere.

Why not BentoML's own batcher (`@bentoml.api(batchable=True)`, its `CorkDispatcher`)? It holds a lone
request while `n * (its wait + tick + a) <= 0.95 x` the mean queueing wait of its last 50 batches. Under
load that mean is mostly time spent waiting for the busy model, not time worth waiting for company. It
decays by about a twentieth per 5-s refresh, so after every burst lone requests are held. On the 2-core dev VM, the real model's c1 p50 went from 157 ms
to 320-368 ms for ~25 s after a c8 burst (docs/benchmarks.md, serving history). BentoML has no setting for this,
and the PR that would have bounded it (bentoml/BentoML#3630) was closed unmerged.

Pure asyncio with no BentoML import, so tests drive it directly.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GreedyBatcher(Generic[T, R]):
    """`await batcher(item)` returns `run(batch)[i]` for the batch the item joined. `run` is the model
    call: async, one result per item, in order. An exception from `run` reaches every caller in that
    batch and no other. A caller that goes away (its task cancelled) is dropped from the batch it would
    have joined."""

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], max_batch: int, gather_rounds: int = 8):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._run, self.max_batch, self.gather_rounds = run, max_batch, gather_rounds
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._worker: asyncio.Task | None = None

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        # One worker per event loop. It exits when the queue is empty, and the next request starts a new
        # one. A worker from an earlier loop (tests, a restarted server) is never reused.
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._worker = loop.create_task(self._drain())
        return await future

    async def _gather(self) -> None:
        """Let requests that are already being handled reach the queue before a batch is cut.

        Requests read in the same loop iteration are scheduled ahead of the worker. Each round is a bare
        yield, microseconds when there is nothing to wait for. This matters when the model runs on the
        event loop (CUDA): requests that arrive during a model call sit in the socket until it ends, and
        are then handled together."""
        for _ in range(self.gather_rounds):
            before = len(self._queue)
            if before >= self.max_batch:
                return
            await asyncio.sleep(0)
            if len(self._queue) == before:
                return

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._gather()
                batch: list[tuple[T, asyncio.Future[R]]] = []
                while self._queue and len(batch) < self.max_batch:
                    item, future = self._queue.popleft()
                    if not future.done():  # done here = cancelled: its caller went away
                        batch.append((item, future))
                if batch:
                    await self._call(batch)
        finally:
            # Only reached with requests left when this worker itself is cancelled (the loop shutting down):
            # no caller may be left waiting forever.
            while self._queue:
                self._queue.popleft()[1].cancel()

    async def _call(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch call returned {len(results)} results for {len(batch)} requests")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as e:  # the model call failed: every caller in this batch gets the error, no one else
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
