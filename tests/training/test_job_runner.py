"""The job runner's record keeping: heartbeat, progress, cancel (before and at commit), ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from training.errors import DataError
from training.job_runner import Runner
from training.jobs import JobStore
from training.storage import LocalStorage


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(LocalStorage(tmp_path))


def new_runner(store: JobStore, *, mode: str = "sagemaker", **kwargs: Any) -> Runner:
    record = store.new("retrain", {"data": "x.csv", "mode": mode}, requested_by="sha256:abc")
    assert store.acquire("retrain", record.job_id) is None
    return Runner(store, record, heartbeat_s=0.05, **kwargs)


def test_success_stores_the_result_progress_and_frees_the_lock(store: JobStore) -> None:
    runner = new_runner(store)

    def work(r: Runner) -> Mapping[str, Any]:
        assert store.load(r.record.job_id).state == "running"
        r.report("tuning", {"trials_done": 1, "trials_total": 4, "best_test_msd": 2.5})
        r.report("tuning", {"trials_done": 2, "trials_total": 4, "best_test_msd": None})
        return {"model_version": "m2", "promoted": True}

    ended = runner.run(work)
    stored = store.load(ended.job_id)
    assert stored.state == "succeeded"
    assert stored.result == {"model_version": "m2", "promoted": True}
    # a None detail never erases what was known
    assert stored.progress == {"trials_done": 2, "trials_total": 4, "best_test_msd": 2.5}
    assert stored.started_at is not None
    assert stored.finished_at is not None
    assert store.holder("retrain") is None


def test_a_failure_is_stored_with_its_step_and_message(store: JobStore) -> None:
    runner = new_runner(store)

    def work(r: Runner) -> Mapping[str, Any]:
        r.report("reading data", {})
        raise DataError("text in a numeric field", file="d.csv", column="amount", row=7)

    stored = store.load(runner.run(work).job_id)
    assert stored.state == "failed"
    assert stored.error is not None
    assert stored.error.startswith("reading data: ")
    assert "amount" in stored.error
    assert store.holder("retrain") is None


def test_the_heartbeat_advances_while_work_runs(store: JobStore) -> None:
    runner = new_runner(store)
    beats: list[str] = []

    def work(r: Runner) -> Mapping[str, Any]:
        for _ in range(4):
            time.sleep(0.06)
            beats.append(store.load(r.record.job_id).heartbeat_at)
        return {}

    runner.run(work)
    assert len(set(beats)) >= 3


def test_a_cancel_asked_before_commit_stops_the_tuning_job_and_touches_nothing(
    store: JobStore,
) -> None:
    stopped: list[str] = []
    runner = new_runner(store, stop_tuning=lambda name: stopped.append(name) or f"stopped {name}")
    committed = []

    def work(r: Runner) -> Mapping[str, Any]:
        r.report("tuning", {"tuning_job_name": "fraudscore-tune-1"})
        store.request_cancel(r.record.job_id, by="sha256:ops")
        with r.commit():
            committed.append(True)
        return {}

    stored = store.load(runner.run(work).job_id)
    assert committed == []
    assert stored.state == "cancelled"
    assert stored.result == {
        "cancelled_by": "sha256:ops",
        "tuning_job": "stopped fraudscore-tune-1",
    }
    assert stopped == ["fraudscore-tune-1"]
    assert store.holder("retrain") is None


def test_the_heartbeat_acts_on_a_cancel_mark_and_stops_the_process(store: JobStore) -> None:
    stopped = threading.Event()
    runner = new_runner(store, mode="local", stop_process=stopped.set)

    def work(r: Runner) -> Mapping[str, Any]:
        store.request_cancel(r.record.job_id, by="sha256:ops")
        assert stopped.wait(5), "the heartbeat did not act on the cancel mark"
        return {"never": "stored"}

    stored = store.load(runner.run(work).job_id)
    assert stored.state == "cancelled"
    assert stored.result == {"cancelled_by": "sha256:ops"}  # no tuning job in local mode


def test_a_cancel_after_commit_is_refused(store: JobStore) -> None:
    stopped = threading.Event()
    runner = new_runner(store, stop_process=stopped.set)

    def work(r: Runner) -> Mapping[str, Any]:
        with r.commit():
            store.request_cancel(r.record.job_id, by="sha256:ops")
            time.sleep(0.3)  # several heartbeats
        return {"promoted": True}

    stored = store.load(runner.run(work).job_id)
    assert not stopped.is_set()
    assert stored.state == "succeeded"
    assert stored.result == {"promoted": True}
