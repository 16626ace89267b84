"""Micro-batching: concurrent requests for a remote backend share one assignment call.

Each ``invoke_endpoint`` costs about a millisecond of client CPU and a round trip, and every
call is billed endpoint capacity; so requests that arrive while calls are in flight, or
within ``max_wait_s`` of each other, are sent together (up to ``max_rows`` rows, one model
version per call) and the answers handed back to each request. The batch size adapts to
the load: the busier the endpoint, the more requests wait for the next free call slot.
A request whose values cannot be scored fails alone; the others of its batch are retried
without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

from service.model_state import ServingModel
from service.transactions import Decisions
from training.errors import SpecError

Columns = Mapping[str, Sequence[Any]]
Run = Callable[[ServingModel, Columns, Sequence[str]], Decisions]


@dataclasses.dataclass(eq=False)
class _Pending:
    serving: ServingModel
    columns: Columns
    ids: Sequence[str]
    future: asyncio.Future[Decisions]


class MicroBatcher:
    """Coalesces :meth:`submit` calls into calls of ``run`` on ``executor``."""

    def __init__(
        self,
        run: Run,
        executor: Executor | None,
        *,
        max_rows: int = 1000,
        max_wait_s: float = 0.002,
        max_in_flight: int = 4,
    ) -> None:
        self.run = run
        self.executor = executor
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._collector: asyncio.Task[None] | None = None

    async def submit(
        self, serving: ServingModel, columns: Columns, ids: Sequence[str]
    ) -> Decisions:
        """The decisions for these rows, scored in whichever batch they join."""
        future: asyncio.Future[Decisions] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(serving, columns, ids, future))
        self._queued_rows += len(ids)
        self._arrived.set()
        if self._collector is None or self._collector.done():
            self._collector = asyncio.create_task(self._collect())
        return await future

    async def _collect(self) -> None:
        """Form batches while requests are queued; stop when the queue is empty."""
        try:
            await self._batches()
        except BaseException as exc:
            # Never leave a request waiting for an answer that will not come.
            while self._queue:
                _fail(self._queue.popleft(), exc)
            self._queued_rows = 0
            raise

    async def _batches(self) -> None:
        while self._queue:
            await self._slots.acquire()
            # Give concurrent requests up to max_wait_s to join (they also queue while every
            # slot is busy, which is what makes batches grow with the load).
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.max_wait_s
            while self._queued_rows < self.max_rows and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._send(batch))
            task.add_done_callback(lambda _: self._slots.release())

    def _take(self) -> list[_Pending]:
        """Whole requests of one model version, up to ``max_rows`` rows (at least one)."""
        batch: list[_Pending] = []
        rows = 0
        serving = self._queue[0].serving if self._queue else None
        keep: deque[_Pending] = deque()
        while self._queue:
            pending = self._queue.popleft()
            if pending.serving is not serving or (
                batch and rows + len(pending.ids) > self.max_rows
            ):
                keep.append(pending)
                continue
            batch.append(pending)
            rows += len(pending.ids)
        self._queue = keep
        self._queued_rows -= rows
        return batch

    async def _send(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        serving = batch[0].serving
        columns = {
            name: [value for p in batch for value in p.columns[name]] for name in batch[0].columns
        }
        ids = [tid for p in batch for tid in p.ids]
        try:
            decisions = await loop.run_in_executor(self.executor, self.run, serving, columns, ids)
        except SpecError as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            # One request holds a value that cannot be scored: score each on its own.
            await asyncio.gather(*(self._send([p]) for p in batch))
            return
        except Exception as exc:  # the backend failed: every request of the call sees it
            for pending in batch:
                _fail(pending, exc)
            return
        start = 0
        for pending in batch:
            stop = start + len(pending.ids)
            if not pending.future.done():
                pending.future.set_result(
                    Decisions(
                        bodies=decisions.bodies[start:stop],
                        clusters=decisions.clusters[start:stop],
                        anomalous=decisions.anomalous[start:stop],
                        backend=decisions.backend,
                    )
                )
            start = stop


def _fail(pending: _Pending, exc: BaseException) -> None:
    if not pending.future.done():
        pending.future.set_exception(exc)
