"""Follow a SageMaker hyperparameter tuning job to its best training job and artifact.

botocore has no waiter for tuning jobs, so this polls ``DescribeHyperParameterTuningJob``,
reporting trials done and the best ``test:msd`` so far, until the job ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from training.errors import TuningError

_ENDED = ("Completed", "Failed", "Stopped")


@dataclass(frozen=True)
class TuningProgress:
    """One poll's view of a tuning job."""

    status: str
    done: int  # training jobs that ended (completed, failed or stopped)
    total: int
    best_msd: float | None
    job_name: str = ""


@dataclass(frozen=True)
class BestModel:
    """The winning training job and where its ``model.tar.gz`` is."""

    training_job_name: str
    objective: float
    hyperparameters: dict[str, str]
    model_data_url: str


def progress_of(described: dict[str, Any]) -> TuningProgress:
    """Trials done, planned and the best objective so far, from a describe response."""
    counters = described.get("TrainingJobStatusCounters", {})
    done = sum(
        int(counters.get(key, 0))
        for key in ("Completed", "NonRetryableError", "Stopped", "RetryableError")
    )
    limits = described.get("HyperParameterTuningJobConfig", {}).get("ResourceLimits", {})
    best = described.get("BestTrainingJob", {}).get("FinalHyperParameterTuningJobObjectiveMetric")
    return TuningProgress(
        status=str(described.get("HyperParameterTuningJobStatus", "")),
        done=done,
        total=int(limits.get("MaxNumberOfTrainingJobs", 0)),
        best_msd=float(best["Value"]) if best else None,
        job_name=str(described.get("HyperParameterTuningJobName", "")),
    )


def wait_for_tuning_job(
    client: Any,
    name: str,
    *,
    poll_s: float = 60.0,
    timeout_s: float = 86_400.0,
    progress: Callable[[TuningProgress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll until the job ends; its ``BestTrainingJob``, or TuningError saying why not."""
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = clock() + timeout_s
    last: TuningProgress | None = None
    while True:
        try:
            described = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        except (ClientError, BotoCoreError) as exc:
            raise TuningError(f"tuning job {name}: cannot describe it: {exc}") from None
        now = progress_of(described)
        if progress is not None and now != last:
            progress(now)
        last = now
        if now.status in _ENDED:
            break
        if clock() >= deadline:
            raise TuningError(f"tuning job {name}: still {now.status} after {timeout_s:.0f} s")
        sleep(poll_s)
    best = described.get("BestTrainingJob")
    if now.status == "Failed":
        reason = described.get("FailureReason") or "no reason given"
        raise TuningError(f"tuning job {name} failed: {reason}")
    if not best:
        raise TuningError(f"tuning job {name} ended {now.status} without a successful trial")
    return dict(best)


def best_model(client: Any, best: dict[str, Any]) -> BestModel:
    """The best training job's artifact URL, from ``DescribeTrainingJob``."""
    from botocore.exceptions import BotoCoreError, ClientError

    job = str(best["TrainingJobName"])
    try:
        described = client.describe_training_job(TrainingJobName=job)
    except (ClientError, BotoCoreError) as exc:
        raise TuningError(f"training job {job}: cannot describe it: {exc}") from None
    url = described.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if not url:
        raise TuningError(f"training job {job} has no model artifact")
    metric = best.get("FinalHyperParameterTuningJobObjectiveMetric", {})
    return BestModel(
        training_job_name=job,
        objective=float(metric.get("Value", "nan")),
        hyperparameters={str(k): str(v) for k, v in best.get("TunedHyperParameters", {}).items()},
        model_data_url=str(url),
    )
