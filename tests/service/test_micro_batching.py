"""Micro-batching: concurrent requests share calls, keep their answers, fail alone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from service.micro_batching import Columns, MicroBatcher
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
