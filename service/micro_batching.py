"""Micro-batching: concurrent requests for a remote backend share one assignment call.

Each ``invoke_endpoint`` costs a millisecond or two of client CPU (under the GIL, which the
event loop needs too) and a round trip, and every call is billed endpoint capacity; so
requests that arrive together are sent together (up to ``max_rows`` rows, one model version
per call) and the answers handed back to each request.

A batch goes out:

- at once when it holds ``max_rows`` rows;
- otherwise once its burst of requests is over: nothing joined for ``idle_s`` (a quarter of
  ``max_wait_s`` unless set), nor in the last few turns of the event loop (so requests
  still in its sockets after a stall join too); and at the latest ``max_wait_s`` after
  its first request;
- never while ``max_in_flight`` calls are running: requests queue, and the moment a call
  returns they all go out (so batches grow with the load, and a request waits for a free
  call slot, not for a timer after one).

Each call runs on ``executor``, and its outcome is posted straight back to the event loop:
no task per batch, and no loop turn between a call's end and its requests' answers. A
request whose values cannot be scored fails alone; the others of its batch are retried
without it. A request whose caller gave up before its batch went out is not sent. If the
executor refuses or drops a call (the service is stopping), its requests fail with
:class:`CallAbandoned` rather than wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future
from typing import Any

from service.backends import BackendFailure
from service.model_state import ServingModel
from service.transactions import Decisions
from training.errors import SpecError

Columns = Mapping[str, Sequence[Any]]
# Loop turns without a new request before a quiet batch closes: a request read from its
# socket in one turn reaches submit in the next (asyncio and uvloop alike), so three turns
# cover the timer turn, the read and the handler.
_QUIET_TURNS = 3
Run = Callable[[ServingModel, Columns, Sequence[str]], Decisions]


class CallAbandoned(BackendFailure):
    """The call never ran: its executor was shut down (the service is stopping)."""

    status = 503


@dataclasses.dataclass(eq=False)
class _Pending:
    serving: ServingModel
    columns: Columns
    ids: Sequence[str]
    future: asyncio.Future[Decisions]


@dataclasses.dataclass(eq=False)
class _Call:
    """One run of ``run`` for some requests, under an in-flight slot.

    ``owner`` is the call whose slot a retry runs under; ``open`` counts the runs (the call
    itself, then its retries) that still hold that slot.
    """

    requests: list[_Pending]
    owner: _Call | None = None
    open: int = 1
    settled: bool = False


class MicroBatcher:
    """Coalesces :meth:`submit` calls into calls of ``run`` on ``executor``.

    ``executor`` None means the event loop's default executor. Everything but :meth:`_work`
    and :meth:`_post_error` runs on the event loop's thread.
    """

    def __init__(
        self,
        run: Run,
        executor: Executor | None,
        *,
        max_rows: int = 1000,
        max_wait_s: float = 0.002,
        max_in_flight: int = 4,
        idle_s: float | None = None,
    ) -> None:
        self.run = run
        self.executor = executor
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.max_in_flight = max_in_flight
        self.idle_s = max_wait_s / 4 if idle_s is None else idle_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._in_flight = 0
        self._opened_at = 0.0  # when the open batch's first request arrived (perf_counter)
        self._last_arrival = 0.0  # when the latest request joined (perf_counter)
        self._quiet_turns = 0  # loop turns the open batch has been quiet for, after idle_s
        self._check: asyncio.Handle | None = None  # the open batch's next look

    async def submit(
        self, serving: ServingModel, columns: Columns, ids: Sequence[str]
    ) -> Decisions:
        """The decisions for these rows, scored in whichever batch they join."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        future: asyncio.Future[Decisions] = loop.create_future()
        now = time.perf_counter()
        if not self._queue:
            self._opened_at = now
        self._queue.append(_Pending(serving, columns, ids, future))
        self._queued_rows += len(ids)
        self._last_arrival = now
        self._quiet_turns = 0
        if self._in_flight < self.max_in_flight:
            if self._queued_rows >= self.max_rows:
                self._dispatch(everything=False)
            elif self._check is None:
                # After the requests already on their way through the loop have joined.
                self._check = loop.call_soon(self._linger)
        return await future

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve from ``loop``; what another (stopped) loop left behind is gone with it."""
        self._loop = loop
        self._queue.clear()
        self._queued_rows = 0
        self._in_flight = 0
        self._check = None

    def _linger(self) -> None:
        """The open batch's look: send it once ``max_wait_s`` has passed since it opened,
        or once it is quiet (no request joined for ``idle_s``, nor during the last few
        turns of the loop); else look again."""
        self._check = None
        if not self._queue or self._in_flight >= self.max_in_flight:
            return  # sent already, or goes out when a call returns
        now = time.perf_counter()
        loop = asyncio.get_running_loop()
        waited = now - self._opened_at
        idle_left = self.idle_s - (now - self._last_arrival)
        if waited < self.max_wait_s:
            if idle_left > 0:
                self._quiet_turns = 0
                self._check = loop.call_later(
                    min(idle_left, self.max_wait_s - waited), self._linger
                )
                return
            if self._quiet_turns < _QUIET_TURNS:
                # After a stall the loop may not have read the requests waiting in its
                # sockets yet: let it turn (and those requests join) before closing.
                self._quiet_turns += 1
                self._check = loop.call_soon(self._linger)
                return
        self._dispatch(everything=True)

    def _dispatch(self, *, everything: bool) -> None:
        """Start calls while slots are free: every queued request, or only full batches
        (the rest stay open for the requests still arriving)."""
        while self._queue and self._in_flight < self.max_in_flight:
            if not everything and self._queued_rows < self.max_rows:
                break
            batch = self._take()
            if batch:
                self._in_flight += 1
                self._start(_Call(batch))
        if self._check is not None and (not self._queue or everything):
            self._check.cancel()
            self._check = None
        if self._queue:
            # What is left opens the next batch.
            self._opened_at = time.perf_counter()
            if self._check is None and self._in_flight < self.max_in_flight:
                self._check = asyncio.get_running_loop().call_soon(self._linger)

    def _take(self) -> list[_Pending]:
        """Whole requests of one model version, up to ``max_rows`` rows (at least one);
        requests whose caller gave up are dropped."""
        batch: list[_Pending] = []
        rows = 0
        dropped = 0
        serving: ServingModel | None = None
        keep: deque[_Pending] = deque()
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.done():  # cancelled while queued: nobody wants the answer
                dropped += len(pending.ids)
                continue
            if serving is None:
                serving = pending.serving
            if pending.serving is not serving or (
                batch and rows + len(pending.ids) > self.max_rows
            ):
                keep.append(pending)
                continue
            batch.append(pending)
            rows += len(pending.ids)
        self._queue = keep
        self._queued_rows -= rows + dropped
        return batch

    def _start(self, call: _Call) -> None:
        """Run ``call`` on the executor; its outcome comes back through :meth:`_finish`."""
        loop = asyncio.get_running_loop()
        try:
            if self.executor is None:
                done = loop.run_in_executor(None, self._work, loop, call)
                done.add_done_callback(lambda future: self._settle(call, _error_of(future)))
            else:
                # Straight to the executor: the outcome is posted by _work, so no asyncio
                # future (and no second trip through the loop) is needed per call.
                work = self.executor.submit(self._work, loop, call)
                work.add_done_callback(lambda future: self._post_error(loop, call, future))
        except RuntimeError:  # the executor is shut down: the service is stopping
            self._finish(call, CallAbandoned("the service is stopping; retry"))

    def _work(self, loop: asyncio.AbstractEventLoop, call: _Call) -> None:
        """On a worker thread: one call of ``run``, its outcome posted to the loop."""
        outcome: Decisions | Exception
        try:
            requests = call.requests
            first = requests[0]
            if len(requests) == 1:
                columns, ids = first.columns, first.ids
            else:
                # Joined here rather than on the event loop, which has requests to serve.
                columns = {
                    name: [v for p in requests for v in p.columns[name]] for name in first.columns
                }
                ids = [tid for p in requests for tid in p.ids]
            outcome = self.run(first.serving, columns, ids)
        except Exception as exc:
            outcome = exc
        loop.call_soon_threadsafe(self._finish, call, outcome)

    def _post_error(self, loop: asyncio.AbstractEventLoop, call: _Call, work: Future[None]) -> None:
        """On whichever thread ended ``work``: if it never posted an outcome (cancelled by
        the executor's shutdown, or failed outside ``run``), post its error instead."""
        error = _error_of(work)
        if error is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(self._settle, call, error)

    def _settle(self, call: _Call, error: BaseException | None) -> None:
        """Fail a call whose outcome never came."""
        if error is not None and not call.settled:
            self._finish(call, error)

    def _finish(self, call: _Call, outcome: Decisions | BaseException) -> None:
        """Hand each request its answer (or error); free the slot; send what waited for it."""
        if call.settled:
            return
        call.settled = True
        owner = call.owner or call
        if isinstance(outcome, Decisions):
            _answer(call.requests, outcome)
        elif isinstance(outcome, SpecError) and len(call.requests) > 1:
            # One request holds a value that cannot be scored: score each on its own (under
            # this call's slot), so the error names that request's row and fails only it.
            owner.open += len(call.requests)
            for pending in call.requests:
                self._start(_Call([pending], owner=owner))
        else:
            # The backend failed (or the call was refused): every request of the call sees it.
            for pending in call.requests:
                _fail(pending, outcome)
        owner.open -= 1
        if owner.open == 0:
            self._in_flight -= 1
            if self._queue and self._check is None:
                # These requests queued while every slot was busy: they have waited enough.
                # (An open batch still lingering keeps its own schedule.)
                self._dispatch(everything=True)


def _answer(requests: list[_Pending], decisions: Decisions) -> None:
    """Each request's slice of a shared call's decisions."""
    if len(requests) == 1:
        if not requests[0].future.done():
            requests[0].future.set_result(decisions)
        return
    start = 0
    for pending in requests:
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


def _error_of(work: Future[None] | asyncio.Future[None]) -> BaseException | None:
    """Why ``work`` ended without posting an outcome, or None if it posted one."""
    if work.cancelled():  # dropped by the executor's shutdown before it ran
        return CallAbandoned("the service is stopping; retry")
    return work.exception()


def _fail(pending: _Pending, exc: BaseException) -> None:
    if not pending.future.done():
        pending.future.set_exception(exc)
