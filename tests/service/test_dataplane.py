"""The data plane with the embedded backend: large batches are scored off the event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import pytest

from service.backends import LocalBackend
from service.dataplane import INLINE_BATCH_BYTES, DataPlane
from service.errors import InvalidRequest
from service.metrics import ServiceMetrics
from service.model_state import ModelHolder, RegistryWatcher
from tests.service.conftest import transaction
from training.registry import Registry


class HeldExecutor(Executor):
    """Runs nothing until ``release``: the work waits, as behind a busy scoring thread."""

    def __init__(self) -> None:
        self.held: list[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        assert not kwargs
        future: Future[Any] = Future()
        self.held.append((future, fn, args))
        return future

    def release(self) -> None:
        for future, fn, args in self.held:
            try:
                future.set_result(fn(*args))
            except Exception as exc:  # handed to the waiting request, as a thread would
                future.set_exception(exc)
        self.held.clear()


def dataplane(registry: Registry, executor: Executor | None) -> DataPlane:
    holder = ModelHolder()
    backend = LocalBackend()
    metrics = ServiceMetrics()
    assert RegistryWatcher(registry, holder, backend, metrics, interval_s=60.0).refresh()
    return DataPlane(
        holder, backend, metrics, max_batch=1000, reasons=2, retry_after_s=1, executor=executor
    )


def batch_body(n: int) -> bytes:
    body = {"transactions": [transaction(transaction_id=f"tx-{i}") for i in range(n)]}
    return json.dumps(body).encode()


async def turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_single_transactions_are_answered_while_a_large_batch_is_scored(
    registry: Registry,
) -> None:
    executor = HeldExecutor()
    plane = dataplane(registry, executor)
    large = batch_body(1000)
    assert len(large) > INLINE_BATCH_BYTES

    async def main() -> tuple[bytes, bytes]:
        batch = asyncio.ensure_future(plane.score_batch(large))
        await turns()
        assert not batch.done()  # waiting for the scoring thread
        assert len(executor.held) == 1
        one = await plane.score_one(json.dumps(transaction(transaction_id="alone")).encode())
        assert not batch.done()
        executor.release()
        return one, await batch

    one, answered = asyncio.run(main())
    assert json.loads(one)["transaction_id"] == "alone"
    results = json.loads(answered)["results"]
    assert [r["transaction_id"] for r in results] == [f"tx-{i}" for i in range(1000)]
    # The same decisions as the same batch scored on the event loop.
    inline = asyncio.run(dataplane(registry, None).score_batch(large))
    assert json.loads(inline)["results"] == results


def test_small_batches_are_scored_on_the_event_loop(registry: Registry) -> None:
    executor = HeldExecutor()
    plane = dataplane(registry, executor)
    small = batch_body(3)
    assert len(small) <= INLINE_BATCH_BYTES
    answered = asyncio.run(plane.score_batch(small))
    assert not executor.held
    assert len(json.loads(answered)["results"]) == 3


@pytest.mark.parametrize("bad", ["not json", '{"transactions": []}'])
def test_a_bad_large_batch_is_refused_from_the_scoring_thread(registry: Registry, bad: str) -> None:
    executor = HeldExecutor()
    plane = dataplane(registry, executor)
    body = bad.encode() + b" " * INLINE_BATCH_BYTES  # large, and still invalid

    async def main() -> bytes:
        batch = asyncio.ensure_future(plane.score_batch(body))
        await turns()
        assert not batch.done()  # validated on the scoring thread, not on the event loop
        assert len(executor.held) == 1
        executor.release()
        return await batch

    with pytest.raises(InvalidRequest):
        asyncio.run(main())
