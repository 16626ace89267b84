"""Admin job records in the registry: ``jobs/<job_id>.json``, a lock per job kind, cancel marks.

Records live beside the models, so they survive restarts and every replica sharing the
registry sees the same jobs. Layout::

    jobs/<job_id>.json          the record (state, step, progress, result or error)
    jobs/<job_id>.cancel        present once a cancel was asked (any replica may ask)
    jobs/locks/<kind>           names the one running job of that kind (exclusive create)

A job's runner writes its record (heartbeat included); nobody else does while it lives.
A job whose runner died is found by :meth:`JobStore.recover`: its process is gone (same
host) or its heartbeat is older than ``stale_after``; it is marked failed and its lock freed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from training.bundle import load_json
from training.errors import BundleError, RegistryError
from training.storage import MissingKeyError, Storage

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
JOB_KINDS = ("retrain",)
JOBS_PREFIX = "jobs/"
JobList = list["JobRecord"]  # a method named `list` shadows the builtin inside JobStore
JOB_ID_PATTERN = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}")
_ACQUIRE_ATTEMPTS = 6
_RECORD_FILE = re.compile(r"jobs/([0-9]{8}T[0-9]{6}Z-[0-9a-f]{8})\.json")


class JobNotFound(RegistryError):
    """No job with that id."""


def this_process() -> str:
    """``host:pid`` of the calling process: who owns a job it runs or queues."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class JobRecord:
    """One admin job, as stored."""

    job_id: str
    kind: str
    state: JobState
    step: str
    created_at: str
    requested_by: str | None
    params: Mapping[str, Any]
    owner: str
    heartbeat_at: str
    started_at: str | None = None
    finished_at: str | None = None
    progress: Mapping[str, Any] = field(default_factory=dict)
    result: Mapping[str, Any] | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the job reached a terminal state."""
        return self.state in TERMINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["params"] = dict(self.params)
        out["progress"] = dict(self.progress)
        out["result"] = None if self.result is None else dict(self.result)
        return out

    @classmethod
    def from_dict(cls, data: Any, *, source: str) -> JobRecord:
        """Parse and validate a stored record; :class:`BundleError` naming ``source``."""
        if not isinstance(data, dict):
            raise BundleError(f"{source}: must be a JSON object")
        try:
            state = data["state"]
            if state not in JOB_STATES:
                raise ValueError(f"unknown state {state!r}")
            result = data.get("result")
            return cls(
                job_id=str(data["job_id"]),
                kind=str(data["kind"]),
                state=state,
                step=str(data["step"]),
                created_at=str(data["created_at"]),
                requested_by=None
                if data.get("requested_by") is None
                else str(data["requested_by"]),
                params=dict(data["params"]),
                owner=str(data["owner"]),
                heartbeat_at=str(data["heartbeat_at"]),
                started_at=data.get("started_at"),
                finished_at=data.get("finished_at"),
                progress=dict(data.get("progress") or {}),
                result=None if result is None else dict(result),
                error=data.get("error"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise BundleError(f"{source}: invalid job record: {detail}") from None


class JobStore:
    """Job records, locks and cancel marks over the registry's storage."""

    def __init__(
        self,
        storage: Storage,
        *,
        location: str = "",
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.storage = storage
        self.location = location
        self._clock = clock

    # -- records ---------------------------------------------------------------------------

    def new(
        self,
        kind: str,
        params: Mapping[str, Any],
        *,
        requested_by: str | None,
        owner: str | None = None,
    ) -> JobRecord:
        """Store a new queued job and return it (its id is fresh and time-sortable)."""
        if kind not in JOB_KINDS:
            raise RegistryError(f"unknown job kind {kind!r}; expected one of {JOB_KINDS}")
        now = self._clock()
        record = JobRecord(
            job_id=f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}",
            kind=kind,
            state="queued",
            step="queued",
            created_at=_iso(now),
            requested_by=requested_by,
            params=dict(params),
            owner=owner or this_process(),
            heartbeat_at=_iso(now),
        )
        if not self.storage.create(self._key(record.job_id), _encode(record)):
            raise RegistryError(f"job id {record.job_id} is already taken")
        return record

    def save(self, record: JobRecord) -> JobRecord:
        """Replace the stored record (the runner's heartbeat, progress and end)."""
        self.storage.write(self._key(record.job_id), _encode(record))
        return record

    def load(self, job_id: str) -> JobRecord:
        """The record; :class:`JobNotFound` for an unknown or malformed id."""
        if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
            raise JobNotFound(f"no job {job_id!r}: job ids look like 20261128T120000Z-1a2b3c4d")
        key = self._key(job_id)
        try:
            raw = self.storage.read(key)
        except MissingKeyError:
            raise JobNotFound(f"no job {job_id!r}") from None
        return JobRecord.from_dict(load_json(raw, source=self._where(key)), source=key)

    def list(self) -> JobList:
        """Every job, oldest first; unreadable records are skipped, not fatal."""
        records: JobList = []
        for key in self.storage.list(JOBS_PREFIX):
            match = _RECORD_FILE.fullmatch(key)
            if match is None:
                continue
            try:
                records.append(self.load(match.group(1)))
            except (RegistryError, BundleError):
                continue
        return records

    def finish(
        self,
        record: JobRecord,
        state: JobState,
        *,
        step: str | None = None,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> JobRecord:
        """Store the record's end and free its lock."""
        now = _iso(self._clock())
        done = replace(
            record,
            state=state,
            step=step or state,
            finished_at=now,
            heartbeat_at=now,
            result=result if result is not None else record.result,
            error=error,
        )
        self.save(done)
        self.release(done.kind, done.job_id)
        return done

    # -- the one running job of a kind ----------------------------------------------------

    def acquire(self, kind: str, job_id: str) -> str | None:
        """Take the kind's lock for ``job_id``; None when taken, else the holder's job id.

        A lock whose holder has finished (or vanished, or whose record is unreadable) is
        stale and taken over. Takeover is exclusive: of several replicas that find the same
        stale lock, only the one that creates its takeover mark deletes it; the others
        retry and find the new holder.
        """
        key = self._lock_key(kind)
        for attempt in range(_ACQUIRE_ATTEMPTS):
            if attempt:
                time.sleep(0.02 * attempt)
            if self.storage.create(key, json.dumps({"job_id": job_id}).encode()):
                return None
            raw = self._read_lock(key)
            if raw is None:
                continue  # released since our create: try again, never delete a lock unseen
            holder = _holder_of(raw)
            if holder and self._holder_running(holder):
                return holder
            # Job ids are never reused, so one mark per stale holder (per unreadable content)
            # names exactly the lock that was seen, not one taken since.
            seen = holder or "unreadable-" + hashlib.sha256(raw).hexdigest()[:12]
            mark = f"{key}.takeover-{seen}"
            if self.storage.create(mark, json.dumps({"by": job_id}).encode()):
                self.storage.delete(key)
        raise RegistryError(f"could not take the {kind} lock: it keeps changing hands")

    def _holder_running(self, holder: str) -> bool:
        try:
            return not self.load(holder).finished
        except (JobNotFound, BundleError):
            return False  # vanished or unreadable: nobody can be running it

    def _read_lock(self, key: str) -> bytes | None:
        try:
            return self.storage.read(key)
        except MissingKeyError:
            return None

    def release(self, kind: str, job_id: str) -> None:
        """Free the kind's lock if ``job_id`` holds it."""
        key = self._lock_key(kind)
        if self._lock_holder(key) == job_id:
            self.storage.delete(key)

    def holder(self, kind: str) -> str | None:
        """The job id holding the kind's lock, if any."""
        return self._lock_holder(self._lock_key(kind))

    # -- cancel marks ---------------------------------------------------------------------

    def request_cancel(self, job_id: str, *, by: str | None) -> None:
        """Leave a cancel mark the job's runner acts on at its next heartbeat."""
        body = json.dumps({"by": by, "at": _iso(self._clock())}).encode()
        self.storage.create(f"{JOBS_PREFIX}{job_id}.cancel", body)

    def cancel_requested(self, job_id: str) -> dict[str, Any] | None:
        """The cancel mark's content (who, when), or None."""
        try:
            raw = self.storage.read(f"{JOBS_PREFIX}{job_id}.cancel")
        except MissingKeyError:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    # -- crash recovery -------------------------------------------------------------------

    def recover(
        self,
        *,
        stale_after: timedelta,
        alive: Callable[[str], bool | None] = lambda _owner: None,
    ) -> JobList:
        """Mark jobs whose runner is gone as failed; return them.

        ``alive(owner)`` says whether the owning process still runs (None: cannot tell, e.g.
        another host); otherwise a heartbeat older than ``stale_after`` means it is gone.
        """
        now = self._clock()
        failed: JobList = []
        for record in self.list():
            if record.finished:
                continue
            # A live runner beats every second or so: a stale heartbeat is a dead runner even
            # when its pid exists (pids are reused, e.g. after a container restart).
            beat = _aware_time(record.heartbeat_at)
            if alive(record.owner) is False:
                why = f"its process {record.owner} is gone"
            elif beat is None:
                # Hand-edited or written by another version: nobody can prove it is alive.
                why = f"its heartbeat {record.heartbeat_at!r} is not a time with an offset"
            elif now - beat > stale_after:
                why = f"no heartbeat since {record.heartbeat_at}"
            else:
                continue
            failed.append(
                self.finish(
                    record,
                    "failed",
                    step=record.step,
                    error=f"abandoned while {record.step}: {why}",
                )
            )
        return failed

    # -- helpers --------------------------------------------------------------------------

    def _key(self, job_id: str) -> str:
        return f"{JOBS_PREFIX}{job_id}.json"

    def _lock_key(self, kind: str) -> str:
        return f"{JOBS_PREFIX}locks/{kind}"

    def _lock_holder(self, key: str) -> str | None:
        raw = self._read_lock(key)
        return None if raw is None else _holder_of(raw)

    def _where(self, key: str) -> str:
        return f"{self.location.rstrip('/')}/{key}" if self.location else key


def local_process_alive(owner: str) -> bool | None:
    """Whether a ``host:pid`` owner on this host still runs; None for another host."""
    host, _, pid_text = owner.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _aware_time(text: str) -> datetime | None:
    """An ISO time with a UTC offset, or None when ``text`` is not one."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _holder_of(raw: bytes) -> str:
    """The job id a lock's content names; "" when it names none readable."""
    try:
        data = json.loads(raw)
    except ValueError:
        return ""
    holder = data.get("job_id") if isinstance(data, dict) else None
    return holder if isinstance(holder, str) else ""


def _encode(record: JobRecord) -> bytes:
    return (json.dumps(record.to_dict(), indent=2, allow_nan=False) + "\n").encode()
