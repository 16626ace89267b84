"""Admin job records in the registry: records, the one-job-per-kind lock, cancel marks, recovery.

``training.jobs.JobStore`` over a local directory, with a controllable clock. Races on the
lock are run on threads, and the interleavings that matter are forced with storage hooks so
that they happen on every run.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from training.errors import BundleError, FraudscoreError, RegistryError
from training.jobs import (
    JOB_ID_PATTERN,
    JOB_STATES,
    TERMINAL_STATES,
    JobNotFound,
    JobRecord,
    JobStore,
    local_process_alive,
    this_process,
)
from training.storage import LocalStorage

START = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
LOCK = "jobs/locks/retrain"
STALE = timedelta(seconds=30)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> JobStore:
    return JobStore(LocalStorage(tmp_path), location=str(tmp_path), clock=clock)


def running(store: JobStore, *, owner: str = "replica-1:4242", step: str = "training") -> JobRecord:
    """A new job its runner has started and beaten a heartbeat for, now."""
    record = store.new("retrain", {"data": "tx.csv"}, requested_by="sha256:alice", owner=owner)
    now = record.created_at  # the store's clock, now
    return store.save(replace(record, state="running", step=step, started_at=now, heartbeat_at=now))


def stored(store: JobStore, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(store.storage.read(f"jobs/{job_id}.json"))
    return data


# -- records --------------------------------------------------------------------------------


def test_a_new_job_is_stored_queued_with_a_time_sortable_id(store: JobStore, clock: Clock) -> None:
    record = store.new("retrain", {"data": "tx.csv", "k": 8}, requested_by="sha256:alice")
    assert JOB_ID_PATTERN.fullmatch(record.job_id)
    assert record.job_id.startswith("20261128T120000Z-")
    assert (record.kind, record.state, record.step) == ("retrain", "queued", "queued")
    assert record.created_at == record.heartbeat_at == "2026-11-28T12:00:00.000+00:00"
    assert record.owner == this_process() == f"{socket.gethostname()}:{os.getpid()}"
    assert record.requested_by == "sha256:alice"
    assert (record.started_at, record.finished_at, record.result, record.error) == (None,) * 4
    assert not record.finished
    assert store.load(record.job_id) == record
    assert stored(store, record.job_id) == record.to_dict()
    assert stored(store, record.job_id)["params"] == {"data": "tx.csv", "k": 8}
    clock.advance(seconds=1)
    later = store.new("retrain", {}, requested_by=None, owner="replica-2:7")
    assert later.owner == "replica-2:7"
    assert later.requested_by is None
    assert [r.job_id for r in store.list()] == [record.job_id, later.job_id]
    assert record.job_id < later.job_id


def test_the_params_are_copied_not_shared(store: JobStore) -> None:
    params: dict[str, Any] = {"data": "tx.csv"}
    record = store.new("retrain", params, requested_by=None)
    params["data"] = "changed.csv"
    assert record.params == {"data": "tx.csv"}
    assert store.load(record.job_id).params == {"data": "tx.csv"}


def test_unknown_kinds_are_refused_and_store_nothing(store: JobStore) -> None:
    with pytest.raises(RegistryError, match=r"unknown job kind 'deploy'; expected one of"):
        store.new("deploy", {}, requested_by=None)
    assert store.storage.list("jobs/") == []


def test_ids_stay_unique_within_one_second(store: JobStore) -> None:
    ids = {store.new("retrain", {}, requested_by=None).job_id for _ in range(20)}
    assert len(ids) == 20
    assert len(store.list()) == 20


@pytest.mark.parametrize(
    "job_id",
    [
        "",
        "nope",
        "../ACTIVE",
        "20261128T120000Z-1a2b3c4",  # one hex digit short
        "20261128T120000Z-1A2B3C4D",  # upper case
        "20261128T120000Z-1a2b3c4d.json",
        "20261128T120000Z-1a2b3c4d/../../ACTIVE",
        " 20261128T120000Z-1a2b3c4d",
        5,
        None,
    ],
)
def test_malformed_ids_are_not_found(store: JobStore, job_id: Any) -> None:
    with pytest.raises(JobNotFound, match=r"job ids look like") as info:
        store.load(job_id)
    assert isinstance(info.value, RegistryError)


def test_unknown_ids_are_not_found(store: JobStore) -> None:
    store.new("retrain", {}, requested_by=None)
    with pytest.raises(JobNotFound, match=r"no job '20261128T120000Z-00000000'$"):
        store.load("20261128T120000Z-00000000")


def test_save_replaces_and_finish_records_the_end(store: JobStore, clock: Clock) -> None:
    record = running(store)
    clock.advance(seconds=5)
    progress = store.save(replace(record, step="tuning", progress={"trials": 3}))
    assert store.load(record.job_id).progress == {"trials": 3}
    clock.advance(seconds=5)
    done = store.finish(progress, "succeeded", result={"model_version": "v2"})
    assert (done.state, done.step) == ("succeeded", "succeeded")
    assert done.finished_at == done.heartbeat_at == "2026-11-28T12:00:10.000+00:00"
    assert done.result == {"model_version": "v2"}
    assert done.error is None
    assert done.progress == {"trials": 3}
    assert done.finished
    assert store.load(record.job_id) == done


def test_finish_keeps_an_earlier_result_and_takes_the_step_and_error(store: JobStore) -> None:
    record = store.save(replace(running(store), result={"model_version": "v9"}))
    failed = store.finish(record, "failed", step="calibrating", error="disk full")
    assert (failed.state, failed.step, failed.error) == ("failed", "calibrating", "disk full")
    assert failed.result == {"model_version": "v9"}
    assert store.load(record.job_id) == failed


@pytest.mark.parametrize("state", JOB_STATES)
def test_only_terminal_states_are_finished(store: JobStore, state: str) -> None:
    record = replace(running(store), state=state)  # type: ignore[arg-type]
    assert record.finished is (state in TERMINAL_STATES)
    assert {"succeeded", "failed", "cancelled"} == TERMINAL_STATES


def test_list_skips_locks_cancel_marks_and_unreadable_records(store: JobStore) -> None:
    good = running(store)
    store.acquire("retrain", good.job_id)
    store.request_cancel(good.job_id, by=None)
    bad_json = "20261128T120000Z-00000001"
    bad_state = "20261128T120000Z-00000002"
    store.storage.write(f"jobs/{bad_json}.json", b"{not json")
    store.storage.write(
        f"jobs/{bad_state}.json", json.dumps(good.to_dict() | {"state": "paused"}).encode()
    )
    store.storage.write("jobs/notes.txt", b"x")
    store.storage.write("jobs/20261128T120000Z-0000000g.json", b"{}")  # not an id
    assert [r.job_id for r in store.list()] == [good.job_id]
    with pytest.raises(BundleError, match=rf"{bad_json}.json: not valid JSON"):
        store.load(bad_json)
    with pytest.raises(BundleError, match=r"invalid job record: unknown state 'paused'"):
        store.load(bad_state)


@pytest.mark.parametrize("missing", ["job_id", "kind", "state", "params", "owner", "heartbeat_at"])
def test_records_missing_a_required_field_are_bundle_errors(store: JobStore, missing: str) -> None:
    data = running(store).to_dict()
    del data[missing]
    with pytest.raises(BundleError, match=rf"src: invalid job record: missing key '{missing}'"):
        JobRecord.from_dict(data, source="src")


def test_records_round_trip_through_json(store: JobStore) -> None:
    record = store.finish(running(store), "succeeded", result={"nested": {"a": [1, 2]}})
    again = JobRecord.from_dict(json.loads(json.dumps(record.to_dict())), source="x")
    assert again == record
    with pytest.raises(BundleError, match=r"x: must be a JSON object"):
        JobRecord.from_dict([], source="x")


# -- the lock -------------------------------------------------------------------------------


def test_one_job_holds_the_lock_until_it_releases(store: JobStore) -> None:
    first, second = running(store), running(store)
    assert store.holder("retrain") is None
    assert store.acquire("retrain", first.job_id) is None
    assert store.holder("retrain") == first.job_id
    assert store.acquire("retrain", second.job_id) == first.job_id
    store.release("retrain", second.job_id)  # not the holder: no effect
    assert store.holder("retrain") == first.job_id
    store.release("retrain", first.job_id)
    assert store.holder("retrain") is None
    assert store.acquire("retrain", second.job_id) is None
    assert store.holder("retrain") == second.job_id


def test_finishing_a_job_frees_only_its_own_lock(store: JobStore) -> None:
    holder, other = running(store), running(store)
    store.acquire("retrain", holder.job_id)
    store.finish(other, "cancelled")
    assert store.holder("retrain") == holder.job_id
    store.finish(holder, "succeeded")
    assert store.holder("retrain") is None
    assert not store.storage.exists(LOCK)


def test_locks_are_per_kind(store: JobStore) -> None:
    first, second = running(store), running(store)
    assert store.acquire("retrain", first.job_id) is None
    assert store.acquire("recalibrate", second.job_id) is None
    assert (store.holder("retrain"), store.holder("recalibrate")) == (
        first.job_id,
        second.job_id,
    )


@pytest.mark.parametrize("how", ["finished", "vanished", "corrupt lock"])
def test_a_stale_lock_is_taken_over(store: JobStore, how: str) -> None:
    old, new = running(store), running(store)
    assert store.acquire("retrain", old.job_id) is None
    if how == "finished":
        # Its end state was stored but the lock was never freed (the runner died in between).
        store.save(replace(old, state="failed", step="failed"))
    elif how == "vanished":
        store.storage.delete(f"jobs/{old.job_id}.json")
    else:
        store.storage.write(LOCK, b"\x00garbage")
    assert store.acquire("retrain", new.job_id) is None
    assert store.holder("retrain") == new.job_id
    assert json.loads(store.storage.read(LOCK)) == {"job_id": new.job_id}


def test_racing_acquires_have_exactly_one_winner(store: JobStore) -> None:
    jobs = [running(store) for _ in range(8)]
    start = threading.Barrier(len(jobs))

    def take(record: JobRecord) -> str | None:
        start.wait(timeout=10)
        return store.acquire("retrain", record.job_id)

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(take, jobs))
    winners = [job.job_id for job, answer in zip(jobs, answers, strict=True) if answer is None]
    assert len(winners) == 1
    assert store.holder("retrain") == winners[0]
    assert all(answer in (None, winners[0]) for answer in answers)


class HookedStorage(LocalStorage):
    """Local storage that runs a hook before a chosen call, to force an interleaving."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.before: dict[str, Callable[[str], None]] = {}

    def _hook(self, method: str, key: str) -> None:
        hook = self.before.get(method)
        if hook is not None and key == LOCK:
            hook(key)

    def read(self, key: str) -> bytes:
        self._hook("read", key)
        return super().read(key)

    def delete(self, key: str) -> None:
        self._hook("delete", key)
        super().delete(key)


def test_a_lock_released_mid_acquire_is_not_taken_from_its_next_holder(
    tmp_path: Path, clock: Clock
) -> None:
    """Job X releases while A is acquiring, and C takes the lock before A retries.

    Order of events: A's create fails (X holds); X releases; A reads the lock (gone);
    C acquires; A carries on. A must not end up holding the lock together with C.
    """
    storage = HookedStorage(tmp_path)
    store = JobStore(storage, clock=clock)
    x, a, c = running(store), running(store), running(store)
    assert store.acquire("retrain", x.job_id) is None

    c_answers: list[str | None] = []

    def c_acquires(_key: str) -> None:
        del storage.before["delete"]
        c_answers.append(store.acquire("retrain", c.job_id))

    def x_releases(_key: str) -> None:
        del storage.before["read"]
        store.release("retrain", x.job_id)
        storage.before["delete"] = c_acquires  # armed for A's next step

    storage.before["read"] = x_releases
    answer = store.acquire("retrain", a.job_id)
    told = [(a.job_id, answer), *((c.job_id, got) for got in c_answers)]
    holders = [job_id for job_id, got in told if got is None]
    assert holders == [store.holder("retrain")], (
        f"both {a.job_id} (A) and {c.job_id} (C) were told they hold the lock"
    )


def test_two_replicas_taking_over_one_stale_lock_do_not_both_win(
    tmp_path: Path, clock: Clock
) -> None:
    """A and B both find the lock held by a finished job; A takes it over first, then B acts."""
    storage = HookedStorage(tmp_path)
    store = JobStore(storage, clock=clock)
    old, a, b = running(store), running(store), running(store)
    assert store.acquire("retrain", old.job_id) is None
    store.save(replace(old, state="failed", step="failed"))  # the lock was never freed

    both_checked = threading.Barrier(2)
    a_done = threading.Event()
    paused: set[str] = set()

    def rendezvous(_key: str) -> None:
        me = threading.current_thread().name
        if me in paused:
            return
        paused.add(me)
        # Both have seen the stale holder before either removes the lock; B then waits
        # until A has finished taking it over. (An implementation that never deletes here
        # simply passes through after the timeouts.)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_checked.wait(timeout=1)
        if me == "B":
            a_done.wait(timeout=1)

    storage.before["delete"] = rendezvous
    answers: dict[str, str | None] = {}

    def acquire(name: str, job: JobRecord) -> None:
        try:
            answers[name] = store.acquire("retrain", job.job_id)
        except RegistryError as exc:  # giving up is allowed; holding the lock twice is not
            answers[name] = f"refused: {exc}"
        finally:
            if name == "A":
                a_done.set()

    threads = [
        threading.Thread(target=acquire, args=(name, job), name=name)
        for name, job in (("A", a), ("B", b))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    winners = sorted(name for name, answer in answers.items() if answer is None)
    assert len(winners) == 1, f"{winners} were all told they hold the lock"
    assert store.holder("retrain") == {"A": a.job_id, "B": b.job_id}[winners[0]]


# -- cancel marks ---------------------------------------------------------------------------


def test_cancel_marks_say_who_asked_and_when(store: JobStore, clock: Clock) -> None:
    record = running(store)
    assert store.cancel_requested(record.job_id) is None
    store.request_cancel(record.job_id, by="sha256:bob")
    first = {"by": "sha256:bob", "at": "2026-11-28T12:00:00.000+00:00"}
    assert store.cancel_requested(record.job_id) == first
    clock.advance(minutes=1)
    store.request_cancel(record.job_id, by="sha256:carol")  # the first request stands
    assert store.cancel_requested(record.job_id) == first
    # The mark is beside the record, not in it: the runner keeps sole ownership of the record.
    assert store.load(record.job_id) == record
    assert store.storage.exists(f"jobs/{record.job_id}.cancel")


def test_cancel_marks_are_per_job_and_anonymous_ones_work(store: JobStore) -> None:
    first, second = running(store), running(store)
    store.request_cancel(first.job_id, by=None)
    assert store.cancel_requested(first.job_id) == {"by": None, "at": iso(START)}
    assert store.cancel_requested(second.job_id) is None


@pytest.mark.parametrize("content", [b"{broken", b"[1, 2]", b'"text"'])
def test_an_unreadable_cancel_mark_still_counts_as_a_cancel(
    store: JobStore, content: bytes
) -> None:
    record = running(store)
    store.storage.write(f"jobs/{record.job_id}.cancel", content)
    assert store.cancel_requested(record.job_id) == {}


# -- crash recovery -------------------------------------------------------------------------


def test_recover_fails_abandoned_jobs_and_leaves_the_rest(store: JobStore, clock: Clock) -> None:
    liveness = {
        "dead:1": False,  # its process is gone
        "alive:2": True,  # the pid exists (maybe reused)
        "elsewhere:3": None,  # another host: cannot tell
    }
    dead = running(store, owner="dead:1", step="tuning")
    store.acquire("retrain", dead.job_id)
    clock.advance(seconds=40)
    stale_alive = running(store, owner="alive:2")
    stale_elsewhere = running(store, owner="elsewhere:3", step="calibrating")
    done = store.finish(running(store, owner="dead:1"), "succeeded", result={"v": 1})
    cancelled = store.finish(running(store, owner="elsewhere:3"), "cancelled")
    clock.advance(seconds=31)  # those four have not beaten for 31 s; 'dead' for 71 s
    fresh_alive = running(store, owner="alive:2")
    clock.advance(seconds=29)
    fresh_elsewhere = running(store, owner="elsewhere:3")
    untouched = {
        r.job_id: store.storage.read(f"jobs/{r.job_id}.json")
        for r in (done, cancelled, fresh_alive, fresh_elsewhere)
    }
    asked: list[str] = []

    def alive(owner: str) -> bool | None:
        asked.append(owner)
        return liveness[owner]

    failed = store.recover(stale_after=STALE, alive=alive)

    assert sorted(r.job_id for r in failed) == sorted(
        [dead.job_id, stale_alive.job_id, stale_elsewhere.job_id]
    )
    now = iso(clock.now)
    by_id = {r.job_id: r for r in failed}
    assert by_id[dead.job_id].error == "abandoned while tuning: its process dead:1 is gone"
    assert by_id[stale_alive.job_id].error == (
        "abandoned while training: no heartbeat since 2026-11-28T12:00:40.000+00:00"
    )
    assert by_id[stale_elsewhere.job_id].error == (
        "abandoned while calibrating: no heartbeat since 2026-11-28T12:00:40.000+00:00"
    )
    for record in failed:
        assert (record.state, record.finished_at) == ("failed", now)
        assert record.step == {dead.job_id: "tuning", stale_elsewhere.job_id: "calibrating"}.get(
            record.job_id, "training"
        )
        assert store.load(record.job_id) == record
    for job_id, raw in untouched.items():
        assert store.storage.read(f"jobs/{job_id}.json") == raw
    # Terminal jobs are not even asked about.
    assert asked.count("dead:1") == 1
    assert store.holder("retrain") is None  # the dead job's lock is free again
    assert store.recover(stale_after=STALE, alive=alive) == []


def test_recover_keeps_a_live_holders_lock(store: JobStore, clock: Clock) -> None:
    holder = running(store, owner="alive:2")
    store.acquire("retrain", holder.job_id)
    clock.advance(seconds=10)
    assert store.recover(stale_after=STALE, alive=lambda _owner: True) == []
    assert store.holder("retrain") == holder.job_id


def test_recover_fails_a_job_whose_heartbeat_stopped_even_if_its_pid_exists(
    store: JobStore, clock: Clock
) -> None:
    record = running(store, owner=this_process())  # this very process: its pid is alive
    store.acquire("retrain", record.job_id)
    clock.advance(seconds=31)
    failed = store.recover(stale_after=STALE, alive=local_process_alive)
    assert [r.job_id for r in failed] == [record.job_id]
    assert "no heartbeat since" in (failed[0].error or "")
    assert store.holder("retrain") is None


def test_a_heartbeat_exactly_stale_after_old_is_not_stale_yet(
    store: JobStore, clock: Clock
) -> None:
    record = running(store)
    clock.advance(seconds=30)
    assert store.recover(stale_after=STALE) == []
    clock.advance(milliseconds=1)
    assert [r.job_id for r in store.recover(stale_after=STALE)] == [record.job_id]


def test_recover_by_default_judges_by_heartbeat_only(store: JobStore, clock: Clock) -> None:
    queued = store.new("retrain", {}, requested_by=None, owner="nohost:1")
    clock.advance(seconds=5)
    assert store.recover(stale_after=STALE) == []
    clock.advance(minutes=5)
    [failed] = store.recover(stale_after=STALE)
    assert failed.job_id == queued.job_id
    assert (
        failed.error == "abandoned while queued: no heartbeat since 2026-11-28T12:00:00.000+00:00"
    )


@pytest.mark.parametrize("heartbeat", ["yesterday", "2026-11-28T12:00:00"])
def test_one_record_with_an_unreadable_heartbeat_does_not_stop_recovery(
    store: JobStore, clock: Clock, heartbeat: str
) -> None:
    """A record whose heartbeat_at is not an ISO time with offset (hand-edited, written by
    another version) must not make recovery raise a non-FraudscoreError: the service only
    survives FraudscoreError from recovery, and other abandoned jobs must still be failed."""
    odd = running(store)
    store.save(replace(odd, heartbeat_at=heartbeat))
    dead = running(store, owner="dead:1")
    clock.advance(minutes=5)
    try:
        failed = store.recover(stale_after=STALE, alive=lambda owner: owner != "dead:1")
    except FraudscoreError:
        failed = None  # a clear, handled error is acceptable; a crash is not
    except Exception as exc:
        pytest.fail(f"recover raised {type(exc).__name__}: {exc}")
    if failed is not None:
        assert dead.job_id in {r.job_id for r in failed}


# -- local_process_alive --------------------------------------------------------------------


def test_this_process_is_alive() -> None:
    assert local_process_alive(this_process()) is True


def test_a_finished_process_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid no longer exists
    assert local_process_alive(f"{socket.gethostname()}:{child.pid}") is False


@pytest.mark.parametrize(
    "owner",
    [
        "another-host:1",
        f"not-{socket.gethostname()}:{os.getpid()}",
        "no-colon-at-all",
        f"{socket.gethostname()}:",
        f"{socket.gethostname()}:abc",
        f"{socket.gethostname()}:-5",
        "",
    ],
)
def test_owners_on_other_hosts_or_unreadable_cannot_be_judged(owner: str) -> None:
    assert local_process_alive(owner) is None


def test_the_owner_host_may_itself_contain_colons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "fe80::1")
    assert this_process() == f"fe80::1:{os.getpid()}"
    assert local_process_alive(this_process()) is True
    assert local_process_alive(f"fe80::2:{os.getpid()}") is None
