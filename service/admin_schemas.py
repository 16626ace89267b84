"""Request and response bodies of the admin API (model lifecycle and jobs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.thresholds import PolicyKind

Strict = ConfigDict(extra="forbid", frozen=True)


class TuningSettings(BaseModel):
    """Hyperparameter search limits (the SageMaker tuning job's, or the local search's)."""

    model_config = Strict

    max_jobs: Annotated[int, Field(ge=1, le=500, strict=True)] = 10
    max_parallel: Annotated[int, Field(ge=1, le=100, strict=True)] = 2
    strategy: Literal["Bayesian", "Random"] = "Bayesian"


class RetrainRequest(BaseModel):
    """What to retrain on and how; answered with a job to follow."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "data": "s3://fraud-data/transactions/2026-11.csv",
                    "label_column": "is_fraud",
                    "k": 10,
                    "mode": "local",
                    "tuning": {"max_jobs": 10, "max_parallel": 2, "strategy": "Bayesian"},
                    "promotion": "auto",
                }
            ]
        },
    )

    data: Annotated[str, Field(min_length=1, strict=True)]
    """A CSV file with a header row: a path on the service's machine or ``s3://bucket/key``."""
    label_column: Annotated[str | None, Field(strict=True)] = None
    features: dict[str, Any] | None = None
    """A feature spec (as ``fraudscore train --features`` takes); default: inferred."""
    k: Annotated[int, Field(ge=2, le=1000, strict=True)] = 10
    mode: Literal["local", "sagemaker"] = "local"
    tuning: TuningSettings | None = None
    """Search hyperparameters; without it one model is trained with defaults."""
    promotion: Literal["auto", "manual"] = "auto"
    """``auto``: activate if the promotion gate passes; ``manual``: register only."""
    endpoint_name: Annotated[
        str | None, Field(strict=True, pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
    ] = None
    """With auto promotion: deploy the new model to this SageMaker endpoint (blue/green)
    before activating it, for replicas serving with ``backend=sagemaker``."""


class JobView(BaseModel):
    """An admin job: state, step, progress, and the result or the error."""

    job_id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    step: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    heartbeat_at: str
    owner: str
    """``host:pid`` of the process running (or last running) the job."""
    requested_by: str | None
    params: dict[str, Any]
    progress: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None


class JobList(BaseModel):
    """Admin jobs, newest first."""

    jobs: list[JobView]


class RecalibrateRequest(BaseModel):
    """New thresholds for the active model: exactly one of ``quantile`` and
    ``target_alert_rate``."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"examples": [{"target_alert_rate": 0.005, "dry_run": True}]},
    )

    quantile: Annotated[float | None, Field(gt=0.0, lt=1.0, allow_inf_nan=False)] = None
    """Per-cluster quantile of calibration distances (e.g. 0.99)."""
    target_alert_rate: Annotated[float | None, Field(gt=0.0, lt=1.0, allow_inf_nan=False)] = None
    """Overall share of transactions to flag (e.g. 0.01)."""
    outlying_weight: Annotated[float | None, Field(ge=0.0, allow_inf_nan=False)] = None
    """How much more strictly clusters far out on the edge of the data are judged under
    ``target_alert_rate`` (0: by width and size alone); default: the active thresholds' own."""
    data: Annotated[str | None, Field(min_length=1, strict=True)] = None
    """A CSV file to calibrate on; default: the active model's stored calibration sample."""
    label_column: Annotated[str | None, Field(strict=True)] = None
    dry_run: bool = False
    """Report only; write and activate nothing."""

    @model_validator(mode="after")
    def _one_policy(self) -> RecalibrateRequest:
        self.policy_choice()
        return self

    def policy_choice(self) -> tuple[PolicyKind, float]:
        """The policy asked for: (kind, value)."""
        if self.quantile is not None and self.target_alert_rate is None:
            return "quantile", self.quantile
        if self.target_alert_rate is not None and self.quantile is None:
            return "target_alert_rate", self.target_alert_rate
        raise ValueError("give exactly one of quantile and target_alert_rate")


class ClusterChange(BaseModel):
    """One cluster: old and new threshold and alert rate on the report's sample (a stored
    calibration sample's held-out rows, or the given file's rows)."""

    cluster: int
    count: int
    rare_pattern: bool
    old_threshold: float
    new_threshold: float
    old_alert_rate: float
    new_alert_rate: float


class RecalibrationReport(BaseModel):
    """What the new thresholds change; with labels, precision/recall/PR-AUC before and after."""

    model_version: str
    old_thresholds_version: int
    new_thresholds_version: int | None
    dry_run: bool
    policy: dict[str, Any]
    sample: str
    overall: dict[str, Any]
    clusters: list[ClusterChange]


class PromoteRequest(BaseModel):
    """Optionally the thresholds version to serve with (default: the model's latest)."""

    model_config = Strict

    thresholds_version: Annotated[int | None, Field(ge=1, strict=True)] = None


class Pointer(BaseModel):
    """A model and thresholds version pair, as ``ACTIVE`` holds it."""

    model_version: str
    thresholds_version: int
    activation: int | None = None


class ActivationChange(BaseModel):
    """What was active before and what is active now."""

    previous: Pointer | None
    active: Pointer
