"""Run one admin job in its own process: ``python -m training.job_runner --registry R --job ID``.

The service starts this process per retrain (in a new session, so a cancel can stop it and
its tuning workers together); the record in the registry is the only channel back. The
runner owns the record while it lives: it heartbeats, reports steps and progress, notices a
cancel mark or the death of the process that started it, and always writes an end state.
Nothing touches ``ACTIVE`` until the very last step, which a cancel can no longer interrupt.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from training.errors import FraudscoreError
from training.jobs import JobRecord, JobStore, this_process
from training.json_logs import JsonFormatter
from training.pipeline import SageMakerTarget, TrainRequest, train
from training.promotion import PromotionGate, evaluate
from training.recalibration import policy_in_force
from training.registry import Registry, open_registry, parse_s3_url
from training.thresholds import ThresholdPolicy

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0


class JobCancelled(Exception):
    """The job was cancelled before it could commit."""


class Runner:
    """Keeps one job's record: heartbeat, progress, cancel and end state."""

    def __init__(
        self,
        store: JobStore,
        record: JobRecord,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        stop_tuning: Callable[[str], str] | None = None,
        stop_process: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.record = record
        self.heartbeat_s = heartbeat_s
        # Injected by tests; by default a cancel stops the SageMaker tuning job through boto3
        # and then this process group.
        self._stop_tuning = stop_tuning or _stop_tuning_job
        self._stop_process = stop_process or _stop_this_process_group
        self._lock = threading.Lock()
        self._committing = False
        self._stop = threading.Event()
        self._parent = os.getppid()

    def run(self, work: Callable[[Runner], Mapping[str, Any]]) -> JobRecord:
        """Mark the job running, do ``work`` with heartbeats, store how it ended."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self._lock:
            self.record = self.store.save(
                replace(
                    self.record,
                    state="running",
                    step="starting",
                    started_at=now,
                    heartbeat_at=now,
                    owner=this_process(),
                )
            )
        beat = threading.Thread(target=self._heartbeat, name="job-heartbeat", daemon=True)
        beat.start()
        try:
            result = work(self)
        except JobCancelled:
            with self._lock:
                self._cancel_locked(self.store.cancel_requested(self.record.job_id) or {})
        except BaseException as exc:
            message = (
                str(exc) if isinstance(exc, FraudscoreError) else f"{type(exc).__name__}: {exc}"
            )
            log.error(
                "job failed",
                extra={"job_id": self.record.job_id, "step": self.record.step, "reason": message},
            )
            self._end("failed", error=f"{self.record.step}: {message}")
        else:
            self._end("succeeded", result=result)
        finally:
            self._stop.set()
        return self.record

    def report(self, step: str, details: Mapping[str, Any]) -> None:
        """Record the current step and its progress (the pipeline's progress hook)."""
        with self._lock:
            if self.record.finished:
                return
            progress = dict(self.record.progress)
            progress.update({k: v for k, v in details.items() if v is not None})
            self.record = self.store.save(replace(self.record, step=step, progress=progress))

    @contextlib.contextmanager
    def commit(self) -> Iterator[None]:
        """The point of no return: a cancel asked before it wins; after, it is refused."""
        with self._lock:
            if self.store.cancel_requested(self.record.job_id) is not None:
                raise JobCancelled
            self._committing = True
        yield

    # -- internals ------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                if self.record.finished:
                    return
                mark = None if self._committing else self.store.cancel_requested(self.record.job_id)
                if mark is not None:
                    self._cancel_locked(mark)
                    self._stop_process()
                    return
                if os.getppid() != self._parent:
                    self._end_locked(
                        "failed", error=f"{self.record.step}: the process that started it stopped"
                    )
                    self._stop_process()
                    return
                now = datetime.now(UTC).isoformat(timespec="milliseconds")
                self.record = self.store.save(replace(self.record, heartbeat_at=now))

    def _cancel_locked(self, mark: Mapping[str, Any]) -> None:
        """End the job as cancelled (stopping its SageMaker tuning job); lock held."""
        tuning_job = self.record.progress.get("tuning_job_name")
        result: dict[str, Any] = {"cancelled_by": mark.get("by")}
        if tuning_job and self.record.params.get("mode") == "sagemaker":
            result["tuning_job"] = self._stop_tuning(str(tuning_job))
        self._end_locked("cancelled", result=result)

    def _end(self, state: Any, **kwargs: Any) -> None:
        with self._lock:
            self._end_locked(state, **kwargs)

    def _end_locked(self, state: Any, **kwargs: Any) -> None:
        if not self.record.finished:
            self.record = self.store.finish(self.record, state, **kwargs)


def _stop_this_process_group() -> None:
    """Stop this job now, tuning workers included."""
    if os.getpgrp() == os.getpid():
        # The service started us as a session leader: the group is ours alone.
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(1)  # run from a terminal: never signal the shell's group


def _stop_tuning_job(name: str) -> str:
    """Stop a SageMaker tuning job; what happened, in words (never raises)."""
    try:
        import boto3

        region = os.environ.get("FRAUDSCORE_AWS_REGION") or None
        client = boto3.client("sagemaker", region_name=region)
        client.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    except Exception as exc:
        return f"could not stop {name}: {type(exc).__name__}: {exc}"
    return f"stopped {name}"


def retrain(registry: Registry, runner: Runner) -> dict[str, Any]:
    """Train with the job's parameters, register, and promote if asked and the gate passes."""
    params = runner.record.params
    tuning = params.get("tuning")
    gate = PromotionGate(**params.get("gate", {}))
    with tempfile.TemporaryDirectory(prefix="fraudscore-job-") as tmp:
        data = _local_copy(str(params["data"]), Path(tmp), runner)
        request = TrainRequest(
            data=data,
            label_column=params.get("label_column"),
            features=params.get("features"),
            k=int(params.get("k", 10)),
            tune=tuning is not None,
            max_jobs=int((tuning or {}).get("max_jobs", 10)),
            max_parallel=int((tuning or {}).get("max_parallel", 2)),
            strategy=str((tuning or {}).get("strategy", "Bayesian")),
            # An operator's recalibration (alert rate, rare-pattern share, outlying weight)
            # outlives a retrain; the defaults when no model is active.
            policy=policy_in_force(registry) or ThresholdPolicy(),
            activate=False,
            sagemaker=_sagemaker_target(float(params.get("poll_s", 30.0)))
            if params.get("mode") == "sagemaker"
            else None,
            on_progress=runner.report,
        )
        outcome = train(request, registry)
    manifest, thresholds = outcome.manifest, outcome.thresholds
    runner.report("gating", {"model_version": manifest.model_version})
    active = registry.active()
    active_manifest = None if active is None else registry.load_manifest(active.model_version)
    decision = evaluate(gate, manifest, thresholds, active_manifest)
    promoted, reason = False, "promotion is manual: promote the version when ready"
    deployed: dict[str, str] | None = None
    if params.get("promotion", "auto") == "auto":
        if decision.passed:
            with runner.commit():
                endpoint = params.get("endpoint_name")
                if endpoint:
                    # The endpoint must serve the new model before ACTIVE names it, or the
                    # replicas' parity check would (rightly) refuse it.
                    runner.report("deploying", {"endpoint_name": endpoint})
                    deployed = _deploy(
                        registry, manifest, str(endpoint), float(params.get("poll_s", 30.0))
                    )
                runner.report("promoting", {})
                registry.activate(
                    manifest.model_version,
                    thresholds.version,
                    action="train",
                    by=runner.record.requested_by,
                )
            promoted, reason = True, "the promotion gate passed"
        else:
            reason = "the promotion gate failed: " + "; ".join(decision.checks)
    return {
        "model_version": manifest.model_version,
        "thresholds_version": thresholds.version,
        "metrics": dict(manifest.metrics),
        "train_rows": outcome.train_rows,
        "test_rows": outcome.test_rows,
        "gate": decision.to_dict(),
        "promoted": promoted,
        "reason": reason,
        "deployment": deployed,
    }


def _deploy(registry: Registry, manifest: Any, endpoint: str, poll_s: float) -> dict[str, str]:
    """Put the model on the SageMaker endpoint (blue/green), from S3 or the registry."""
    import boto3

    from training.sagemaker_deploy import deploy, deploy_version
    from training.sagemaker_requests import config_from_environment

    config = config_from_environment(os.environ)
    sagemaker = boto3.client("sagemaker", region_name=config.region)
    when = datetime.now(UTC)
    model_data_url = manifest.source.get("model_data_url")
    if model_data_url:
        done = deploy(
            sagemaker,
            config,
            model_data_url=str(model_data_url),
            endpoint_name=endpoint,
            when=when,
            poll_s=poll_s,
        )
    else:
        done = deploy_version(
            boto3.client("s3", region_name=config.region),
            sagemaker,
            config,
            manifest.model_version,
            registry.load_artifact(manifest.model_version),
            endpoint_name=endpoint,
            when=when,
        )
    return {
        "endpoint": done.endpoint_name,
        "endpoint_config": done.endpoint_config_name,
        "model": done.model_name,
    }


def _local_copy(location: str, folder: Path, runner: Runner) -> Path:
    """A local path for the data: itself, or a download of an ``s3://`` object."""
    if not location.startswith("s3://"):
        return Path(location)
    runner.report("downloading data", {"data": location})
    bucket, key = parse_s3_url(location)
    if not key:
        raise FraudscoreError(f"{location}: the data location names a bucket, not an object")
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    target = folder / "data.csv"
    try:
        # Streams to disk in parts: the file never has to fit in memory.
        boto3.client("s3").download_file(bucket, key, str(target))
    except (BotoCoreError, ClientError) as exc:
        raise FraudscoreError(f"{location}: cannot download ({exc})") from None
    return target


def _sagemaker_target(poll_s: float) -> SageMakerTarget:
    import boto3

    from training.sagemaker_requests import config_from_environment

    config = config_from_environment(os.environ)
    return SageMakerTarget(
        sagemaker=boto3.client("sagemaker", region_name=config.region),
        s3=boto3.client("s3", region_name=config.region),
        config=config,
        poll_s=poll_s,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the job named on the command line; 0 once its end state is stored."""
    parser = argparse.ArgumentParser(prog="python -m training.job_runner", description=__doc__)
    parser.add_argument("--registry", required=True, help="registry location")
    parser.add_argument("--job", required=True, help="job id")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # Library warnings become JSON lines too: they land in the service's log stream.
    logging.captureWarnings(True)
    # The trainer's per-iteration lines (the SageMaker container's format) are noise here.
    logging.getLogger("training.kmeans").setLevel(logging.WARNING)
    try:
        registry = open_registry(args.registry)
        store = JobStore(registry.storage, location=registry.location)
        record = store.load(args.job)
    except FraudscoreError as exc:
        log.error("job cannot start", extra={"job_id": args.job, "reason": str(exc)})
        return 2
    if record.finished:
        log.error("job already ended", extra={"job_id": record.job_id, "state": record.state})
        return 2
    if record.kind != "retrain":
        log.error("unknown job kind", extra={"job_id": record.job_id, "kind": record.kind})
        return 2
    ended = Runner(store, record).run(lambda runner: retrain(registry, runner))
    return 0 if ended.finished else 1


if __name__ == "__main__":
    raise SystemExit(main())
