"""The service's settings: one pydantic-settings class read from ``FRAUDSCORE_*`` variables."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_REGISTRY = "var/registry"


class Settings(BaseSettings):
    """Everything the service reads from its environment (``FRAUDSCORE_`` prefix).

    Arguments passed to the constructor beat environment variables, so tests and the CLI
    build ``Settings(...)`` directly.
    """

    model_config = SettingsConfigDict(
        env_prefix="FRAUDSCORE_", extra="ignore", frozen=True, validate_default=True
    )

    registry: str = DEFAULT_REGISTRY
    """Registry root: a directory (the embedded default) or ``s3://bucket/prefix``."""

    host: str = "127.0.0.1"
    """Where ``fraudscore serve`` and ``make run`` listen."""

    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    """TCP port (0 lets the system choose, for tests)."""

    workers: Annotated[int, Field(ge=1, le=64)] = 1
    """Worker processes; each holds its own copy of the model."""

    job_stale_s: Annotated[float, Field(gt=0.0, le=86_400.0)] = 30.0
    """An admin job whose runner has not beaten its heartbeat for this long is marked failed
    (by any replica sharing the registry)."""

    promotion_max_msd_increase: Annotated[float, Field(ge=0.0, le=10.0)] = 0.10
    """Auto promotion gate: a retrained model's ``test:msd`` may exceed the active model's by
    at most this fraction (same features only)."""

    promotion_alert_rate_tolerance: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0
    """Auto promotion gate: the calibrated alert rate (on the calibration rows) must be within
    this fraction of the rate the threshold policy aims for (1.0: at most twice the aim; a
    sample of a few thousand rows measures a 1 % rate only to about +-30 %)."""

    backend: Literal["local", "sagemaker"] = "local"
    """Where the nearest cluster is found: ``local`` (centroids in process) or ``sagemaker``."""

    endpoint_name: str | None = None
    """The SageMaker endpoint to invoke (required with ``backend=sagemaker``)."""

    fallback: bool = True
    """Score with the model's own centroids when the endpoint fails (``local-fallback``)."""

    aws_region: str | None = None
    """AWS region (default: boto3's own configuration)."""

    invoke_timeout_s: Annotated[float, Field(gt=0.0, le=120.0)] = 2.0
    """Read timeout of one ``invoke_endpoint`` call."""

    backend_threads: Annotated[int, Field(ge=1, le=256)] = 32
    """Threads (and pooled connections) for blocking backend calls, per worker; with
    micro-batching, at most ``micro_batch_in_flight`` of them are busy at once."""

    micro_batch: bool = True
    """Coalesce concurrent requests into shared endpoint calls (remote backends)."""

    micro_batch_max_rows: Annotated[int, Field(ge=1, le=100_000)] = 32
    """Most rows in one coalesced call; a batch this full goes out at once. A cap more than
    a target: batches close when their burst of requests is over. Measured with a 20 ms
    endpoint and 64 connections, 32 matches 16 in throughput with about 40 % fewer calls
    (0.05-0.06 per request) and a quarter less CPU per request."""

    micro_batch_wait_ms: Annotated[float, Field(ge=0.0, le=1000.0)] = 1.0
    """The longest a request waits for others to join its call. A batch goes out sooner,
    once a quarter of this passes with no request joining (its burst is over)."""

    micro_batch_in_flight: Annotated[int, Field(ge=1, le=256)] = 8
    """Coalesced calls in flight at once, per worker: while all are busy, requests queue and
    go out together the moment one returns."""

    poll_interval_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 5.0
    """How often each worker checks the registry's ``ACTIVE`` pointer for a new version."""

    max_batch: Annotated[int, Field(ge=1, le=100_000)] = 1000
    """Most transactions in one ``POST /score/batch`` request (more: 413)."""

    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    """Largest request body accepted on any route (more: 413)."""

    reasons: Annotated[int, Field(ge=0, le=50)] = 3
    """Reasons returned per decision (fields with the largest share of the distance)."""

    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    """Comma-separated keys accepted in ``X-API-Key`` on the scoring routes (open when empty)."""

    admin_token: SecretStr | None = None
    """Bearer token for ``/admin/*``; the admin routes are disabled while it is unset."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Level of the JSON log lines on stderr."""

    access_log: bool = True
    """One JSON line per request: method, path, status, duration, request id.

    Request and response bodies are never logged: they hold customer data."""

    @model_validator(mode="after")
    def _endpoint_for_sagemaker(self) -> Settings:
        """The SageMaker backend cannot guess its endpoint."""
        if self.backend == "sagemaker" and not self.endpoint_name:
            raise ValueError(
                "endpoint_name: FRAUDSCORE_ENDPOINT_NAME is required with backend=sagemaker"
            )
        return self

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        """Keys come as one comma-separated variable; blanks around them are ignored."""
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("admin_token", mode="before")
    @classmethod
    def _blank_token_is_unset(cls, value: object) -> object:
        """An empty ``FRAUDSCORE_ADMIN_TOKEN`` means no token, not an empty password."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def retry_after_s(self) -> int:
        """What ``Retry-After`` says while no model is ready: about one poll interval."""
        return max(1, round(self.poll_interval_s))
