"""Micro-batching: concurrent requests share calls, keep their answers, fail alone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import pytest

from service.micro_batching import CallAbandoned, Columns, MicroBatcher
from service.transactions import Decisions
from training.errors import SpecError


class Recorder:
    """A ``run`` that answers each row with its id, records calls, and can fail."""

    def __init__(self, delay_s: float = 0.01) -> None:
        self.calls: list[tuple[Any, list[str]]] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, serving: Any, columns: Columns, ids: Sequence[str]) -> Decisions:
        with self.lock:
            self.calls.append((serving, list(ids)))
        threading.Event().wait(self.delay_s)  # an endpoint round trip
        if "bad" in ids:
            raise SpecError("out of range", field="amount", index=list(ids).index("bad"))
        if "down" in ids:
            raise RuntimeError("endpoint down")
        return Decisions(
            bodies=[
                {"transaction_id": i, "amount": a}
                for i, a in zip(ids, columns["amount"], strict=True)
            ],
            clusters=[0] * len(ids),
            anomalous=[False] * len(ids),
            backend="sagemaker",
        )


def submit_all(batcher: MicroBatcher, requests: list[tuple[Any, list[str]]]) -> list[Any]:
    async def main() -> list[Any]:
        return await asyncio.gather(
            *(
                batcher.submit(serving, {"amount": [float(len(i)) for i in ids]}, ids)
                for serving, ids in requests
            ),
            return_exceptions=True,
        )

    return asyncio.run(main())


def test_concurrent_requests_share_calls_and_get_their_own_answers() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, None, max_rows=100, max_wait_s=0.005, max_in_flight=2)
    requests = [("v1", [f"t{i}-{j}" for j in range(1 + i % 3)]) for i in range(40)]
    results = submit_all(batcher, requests)
    for (_, ids), result in zip(requests, results, strict=True):
        assert isinstance(result, Decisions)
        assert [b["transaction_id"] for b in result.bodies] == ids
    assert len(run.calls) <= 10  # 40 requests, far fewer calls
    assert sum(len(ids) for _, ids in run.calls) == sum(len(ids) for _, ids in requests)


def test_a_call_never_exceeds_max_rows_or_mixes_model_versions() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, None, max_rows=5, max_wait_s=0.005, max_in_flight=1)
    requests = [("v1" if i % 2 else "v2", [f"t{i}a", f"t{i}b"]) for i in range(12)]
    results = submit_all(batcher, requests)
    assert all(isinstance(r, Decisions) for r in results)
    for serving, ids in run.calls:
        assert len(ids) <= 5
        owners = {int(i[1:-1]) % 2 for i in ids}
        assert owners == ({1} if serving == "v1" else {0})


def test_a_bad_request_fails_alone() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, None, max_rows=100, max_wait_s=0.01, max_in_flight=1)
    requests = [("v1", ["a"]), ("v1", ["bad"]), ("v1", ["c", "d"])]
    ok_a, bad, ok_c = submit_all(batcher, requests)
    assert isinstance(bad, SpecError)
    assert bad.index == 0  # its own row, not its place in the shared call
    assert [b["transaction_id"] for b in ok_a.bodies] == ["a"]
    assert [b["transaction_id"] for b in ok_c.bodies] == ["c", "d"]


def test_a_failed_call_fails_the_requests_that_shared_it() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, None, max_rows=100, max_wait_s=0.01, max_in_flight=1)

    async def main() -> tuple[list[Any], Any]:
        failed = await asyncio.gather(
            batcher.submit("v1", {"amount": [1.0]}, ["a"]),
            batcher.submit("v1", {"amount": [1.0]}, ["down"]),
            return_exceptions=True,
        )
        # The batcher keeps working afterwards.
        return failed, await batcher.submit("v1", {"amount": [1.0]}, ["e"])

    results, after = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert isinstance(after, Decisions)


@pytest.mark.parametrize("in_flight", [1, 4])
def test_batches_grow_with_the_load(in_flight: int) -> None:
    run = Recorder(delay_s=0.02)
    batcher = MicroBatcher(run, None, max_rows=1000, max_wait_s=0.0, max_in_flight=in_flight)
    submit_all(batcher, [("v1", [f"t{i}"]) for i in range(64)])
    # No waiting at all, yet requests that arrive while calls are busy travel together.
    assert len(run.calls) <= 2 * in_flight + 2


class InlineExecutor(Executor):
    """Runs each call at once on the event loop's thread: batching, without thread timing."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class Gated(Recorder):
    """A ``run`` that holds each call until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__(delay_s=0.0)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, serving: Any, columns: Columns, ids: Sequence[str]) -> Decisions:
        self.entered.set()
        self.gate.wait(timeout=30)
        return super().__call__(serving, columns, ids)


async def turns(n: int = 10) -> None:
    """Let the event loop turn ``n`` times (calls posted back to it complete meanwhile)."""
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_full_batch_goes_out_at_once() -> None:
    run = Recorder(delay_s=0.0)
    # Nothing would go out for a minute but a full batch.
    batcher = MicroBatcher(run, InlineExecutor(), max_rows=4, max_wait_s=60.0, max_in_flight=2)

    async def main() -> list[bool]:
        tasks = [
            asyncio.create_task(batcher.submit("v1", {"amount": [1.0]}, [f"t{i}"]))
            for i in range(5)
        ]
        await turns()
        return [t.done() for t in tasks]

    done = asyncio.run(main())
    assert [ids for _, ids in run.calls] == [["t0", "t1", "t2", "t3"]]
    assert done == [True] * 4 + [False]  # t4 opened the next batch, which waits


def test_a_batch_goes_out_once_its_burst_is_over() -> None:
    run = Recorder(delay_s=0.0)
    batcher = MicroBatcher(
        run, InlineExecutor(), max_rows=100, max_wait_s=60.0, max_in_flight=2, idle_s=0.0
    )

    async def main() -> list[bool]:
        burst = [
            asyncio.create_task(batcher.submit("v1", {"amount": [1.0]}, [i]))
            for i in ("a", "b", "c")
        ]
        await turns()  # a few loop turns, not the minute of max_wait_s
        done = [t.done() for t in burst]
        await batcher.submit("v1", {"amount": [1.0]}, ["d"])
        return done

    assert asyncio.run(main()) == [True, True, True]
    assert [ids for _, ids in run.calls] == [["a", "b", "c"], ["d"]]


def test_requests_that_wait_for_a_slot_go_out_together_when_it_frees() -> None:
    run = Gated()
    with ThreadPoolExecutor(2) as executor:
        batcher = MicroBatcher(run, executor, max_rows=100, max_wait_s=0.0, max_in_flight=1)

        async def main() -> list[Any]:
            first = asyncio.create_task(batcher.submit("v1", {"amount": [1.0]}, ["a"]))
            await asyncio.to_thread(run.entered.wait, 30)  # "a" holds the only slot
            waiting = [
                asyncio.create_task(batcher.submit("v1", {"amount": [1.0]}, [i]))
                for i in ("b", "c", "d")
            ]
            cancelled = asyncio.create_task(batcher.submit("v1", {"amount": [1.0]}, ["x"]))
            await turns()
            cancelled.cancel()  # its caller gave up while it waited: it is not sent
            run.gate.set()
            return await asyncio.gather(first, *waiting, cancelled, return_exceptions=True)

        results = asyncio.run(main())
    assert [ids for _, ids in run.calls] == [["a"], ["b", "c", "d"]]
    assert all(isinstance(r, Decisions) for r in results[:4])
    assert isinstance(results[4], asyncio.CancelledError)


def test_a_stopped_executor_fails_requests_instead_of_leaving_them_waiting() -> None:
    executor = ThreadPoolExecutor(1)
    executor.shutdown()
    batcher = MicroBatcher(Recorder(), executor, max_rows=10, max_wait_s=0.0, max_in_flight=1)
    results = submit_all(batcher, [("v1", ["a"]), ("v1", ["b"])])
    assert all(isinstance(r, CallAbandoned) for r in results)
    assert all(r.status == 503 for r in results)


def test_a_batcher_serves_one_event_loop_after_another() -> None:
    run = Recorder(delay_s=0.0)
    batcher = MicroBatcher(run, None, max_rows=10, max_wait_s=0.001, max_in_flight=1)
    for _ in range(2):  # e.g. a service started, stopped and started again
        results = submit_all(batcher, [("v1", ["a"]), ("v1", ["b", "c"])])
        assert all(isinstance(r, Decisions) for r in results)


def test_calls_dropped_by_an_executor_shutdown_fail_instead_of_waiting() -> None:
    run = Gated()
    executor = ThreadPoolExecutor(1)
    batcher = MicroBatcher(run, executor, max_rows=1, max_wait_s=0.0, max_in_flight=2)

    async def main() -> list[Any]:
        running = asyncio.create_task(batcher.submit("v1", {"amount": [1.0]}, ["a"]))
        await asyncio.to_thread(run.entered.wait, 30)
        queued = asyncio.create_task(batcher.submit("v1", {"amount": [1.0]}, ["b"]))
        await turns()  # "b" waits in the executor's queue behind "a"
        executor.shutdown(wait=False, cancel_futures=True)  # as the service does when stopping
        run.gate.set()
        return await asyncio.gather(running, queued, return_exceptions=True)

    ran, dropped = asyncio.run(main())
    executor.shutdown()
    assert isinstance(ran, Decisions)
    assert isinstance(dropped, CallAbandoned)
