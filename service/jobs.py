"""Admin jobs on the service side: start runner processes, watch them, cancel, recover.

A retrain runs in its own process (``python -m training.job_runner``), started in a new
session so it competes with scoring only for CPU, never for the event loop or the GIL, and
so a cancel or a shutdown can stop it and its tuning workers at once. Its record in the
registry is the shared truth: any replica can list, show or cancel any job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from service.errors import Conflict, NotFound
from training.jobs import JobList, JobNotFound, JobRecord, JobStore, local_process_alive
from training.promotion import PromotionGate
from training.registry import Registry

log = logging.getLogger("fraudscore.jobs")

# Credentials of the HTTP API: a job process never needs them.
_SECRET_VARIABLES = frozenset({"FRAUDSCORE_ADMIN_TOKEN", "FRAUDSCORE_API_KEYS"})
# How long a cancel waits for the runner to confirm before stopping it outright.
CANCEL_WAIT_S = 5.0


class JobManager:
    """Starts and follows this replica's job processes; reads every replica's records."""

    def __init__(
        self,
        registry: Registry,
        *,
        gate: PromotionGate,
        stale_after_s: float = 30.0,
        python: str = sys.executable,
    ) -> None:
        self.registry = registry
        self.store = JobStore(registry.storage, location=registry.location)
        self.gate = gate
        self.stale_after = timedelta(seconds=stale_after_s)
        self.python = python
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    # -- starting -------------------------------------------------------------------------

    def start_retrain(self, params: Mapping[str, Any], *, by: str | None) -> JobRecord:
        """Record a retrain job and start its runner; Conflict naming a running one."""
        if not self.registry.location:
            raise Conflict("this registry has no location a job process could open")
        record = self.store.new("retrain", {**params, "gate": self.gate.to_dict()}, requested_by=by)
        holder = self.store.acquire("retrain", record.job_id)
        if holder is not None:
            # The refused job leaves no trace: it never ran.
            self.store.storage.delete(f"jobs/{record.job_id}.json")
            raise Conflict(
                f"a retrain is already running on this registry: job {holder}",
                [("job_id", holder)],
            )
        try:
            # The command is this interpreter and our own module; the ids are validated.
            child = subprocess.Popen(  # noqa: S603
                [
                    self.python,
                    "-m",
                    "training.job_runner",
                    "--registry",
                    self.registry.location,
                    "--job",
                    record.job_id,
                ],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=_job_environment(),
            )
        except OSError as exc:
            self.store.finish(record, "failed", step="starting", error=f"cannot start: {exc}")
            raise
        with self._lock:
            self._children[record.job_id] = child
        threading.Thread(
            target=self._follow, args=(record.job_id, child), name="job-follow", daemon=True
        ).start()
        log.info("job started", extra={"job_id": record.job_id, "pid": child.pid})
        return record

    # -- reading --------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        """One job; NotFound naming it."""
        try:
            return self.store.load(job_id)
        except JobNotFound as exc:
            raise NotFound(str(exc), [("job_id", job_id)]) from None

    def list(self) -> JobList:
        """Every job, newest first."""
        return list(reversed(self.store.list()))

    # -- cancelling -----------------------------------------------------------------------

    def cancel(self, job_id: str, *, by: str | None) -> JobRecord:
        """Ask the job to stop and wait briefly for it; Conflict if it already ended."""
        record = self.get(job_id)
        if record.finished:
            raise Conflict(f"job {job_id} already ended: {record.state}", [("job_id", job_id)])
        self.store.request_cancel(job_id, by=by)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            record = self.get(job_id)
            if record.finished:
                return record
            time.sleep(0.1)
        with self._lock:
            child = self._children.get(job_id)
        if child is not None and child.poll() is None:
            # The runner did not answer (stuck in native code): stop it and record the cancel.
            _kill_group(child)
            child.wait()
            record = self.get(job_id)
            if not record.finished:
                record = self.store.finish(
                    record, "cancelled", step=record.step, result={"cancelled_by": by}
                )
        return record

    # -- recovery and shutdown ------------------------------------------------------------

    def recover(self) -> JobList:
        """Fail jobs whose runner is gone (this host: by pid; any host: by heartbeat)."""
        failed = self.store.recover(stale_after=self.stale_after, alive=local_process_alive)
        for record in failed:
            log.warning("job abandoned", extra={"job_id": record.job_id, "reason": record.error})
        return failed

    def shutdown(self) -> None:
        """Stop this replica's running jobs; their records end as failed, never 'running'."""
        with self._lock:
            children = dict(self._children)
        for job_id, child in children.items():
            if child.poll() is None:
                _kill_group(child)
                child.wait()
                self._end_if_running(job_id, "the service stopped while it ran")

    def _follow(self, job_id: str, child: subprocess.Popen[bytes]) -> None:
        """Wait for a runner; if it died without an end state, record the failure."""
        status = child.wait()
        with self._lock:
            self._children.pop(job_id, None)
        how = f"signal {-status}" if status < 0 else f"status {status}"
        self._end_if_running(job_id, f"the job process exited with {how}")

    def _end_if_running(self, job_id: str, why: str) -> None:
        try:
            record = self.store.load(job_id)
        except JobNotFound:
            return
        if not record.finished:
            self.store.finish(record, "failed", step=record.step, error=f"{record.step}: {why}")
            log.warning("job failed", extra={"job_id": job_id, "reason": why})


def _job_environment() -> dict[str, str]:
    """The service's environment without the secrets a job has no use for."""
    return {k: v for k, v in os.environ.items() if k not in _SECRET_VARIABLES}


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """Kill a runner and the tuning workers of its session."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
