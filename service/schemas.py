"""The HTTP API's request and response bodies (pydantic), with the examples shown in ``/docs``.

Requests are strict: a string where a number belongs, NaN or infinity, a boolean for an
amount, or a top-level field the API does not know are all rejected with the field named.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Text = Annotated[str, Field(strict=True)]

TRANSACTION_EXAMPLE: dict[str, Any] = {
    "transaction_id": "tx-20261128-000042",
    "amount": 42.5,
    "tran_code": "05",
    "timestamp": "2026-11-28T14:03:11Z",
    "features": {
        "channel": "ecom",
        "hour": 14,
        "km_from_home": 3.2,
        "tx_last_24h": 2,
        "merchant_risk": 0.12,
    },
}


class Transaction(BaseModel):
    """One card transaction to score.

    ``amount`` and ``tran_code`` are the model's fields of the same names; every other
    field the model uses goes in ``features`` (numbers for numeric fields, strings for
    categorical ones). Features the model does not use are ignored, so a caller may send
    a superset. ``GET /model`` lists the fields the active model needs.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"examples": [TRANSACTION_EXAMPLE]}
    )

    transaction_id: Annotated[str, Field(strict=True, min_length=1, max_length=128)] = Field(
        description="The caller's id, echoed in the response."
    )
    amount: FiniteNumber = Field(description="Transaction amount in the account currency.")
    tran_code: Annotated[str, Field(strict=True, min_length=1, max_length=64)] = Field(
        description='Transaction code, a category such as "05" (never a magnitude).'
    )
    timestamp: Annotated[datetime, Field(strict=True)] | None = Field(
        default=None,
        description="When the transaction happened (ISO 8601 text); recorded, not scored.",
    )
    features: dict[Annotated[str, Field(max_length=128)], FiniteNumber | Text] = Field(
        default_factory=dict,
        description="The model's other fields by name: a number or a category string.",
        max_length=256,
    )


class Reason(BaseModel):
    """One field's part in the distance from the cluster's centre."""

    field: str = Field(description="Model field name.", examples=["amount"])
    share: float = Field(
        description="The field's share of the squared distance (all fields sum to 1).",
        examples=[0.83],
    )
    value: float | str = Field(description="The transaction's value in raw units.")
    typical: float | str = Field(
        description="The cluster's typical value in raw units (its most common category)."
    )
    direction: Literal["above", "below", "different", "unseen"] = Field(
        description=(
            "above/below: higher/lower than typical; different: another category than the "
            "cluster's usual one; unseen: a category never seen in training."
        )
    )


SCORE_EXAMPLE: dict[str, Any] = {
    "transaction_id": "tx-20261128-000042",
    "anomalous": True,
    "cluster": 3,
    "distance": 4.812,
    "threshold": 2.407,
    "score": 1.999,
    "rare_pattern": False,
    "reasons": [
        {
            "field": "amount",
            "share": 0.81,
            "value": 4250.0,
            "typical": 38.2,
            "direction": "above",
        },
        {"field": "hour", "share": 0.12, "value": 3.0, "typical": 14.6, "direction": "below"},
    ],
    "model_version": "20261128T101500Z-3f9c2a",
    "thresholds_version": 1,
    "backend": "local",
}


class ScoreResponse(BaseModel):
    """The decision for one transaction."""

    model_config = ConfigDict(json_schema_extra={"examples": [SCORE_EXAMPLE]})

    transaction_id: str
    anomalous: bool = Field(description="distance > threshold, or the cluster is a rare pattern.")
    cluster: int = Field(description="Nearest cluster (0-based).")
    distance: float = Field(description="Euclidean distance to the cluster's centre.")
    threshold: float = Field(description="The cluster's learned distance threshold.")
    score: float = Field(
        description=(
            "distance / threshold: above 1 is anomalous; how far past (or short of) the boundary."
        )
    )
    rare_pattern: bool = Field(
        description="The cluster holds too few training rows to be normal (flagged regardless)."
    )
    reasons: list[Reason] = Field(
        description="Fields that pulled the transaction away from its cluster, largest first."
    )
    model_version: str = Field(description="Model version that decided.")
    thresholds_version: int = Field(description="Thresholds version that decided.")
    backend: str = Field(description="Where the cluster was found: local or sagemaker.")


class BatchResponse(BaseModel):
    """Decisions in request order; all by the same model and thresholds version."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"results": [SCORE_EXAMPLE]}]})

    results: list[ScoreResponse]


def batch_request_model(max_batch: int) -> type[BaseModel]:
    """The ``/score/batch`` body for this service's batch limit (more transactions: 413)."""
    return create_model(
        "TransactionBatch",
        __config__=ConfigDict(
            extra="forbid",
            frozen=True,
            json_schema_extra={"examples": [{"transactions": [TRANSACTION_EXAMPLE]}]},
        ),
        __doc__=f"Up to {max_batch} transactions, scored together and answered in order.",
        transactions=(
            list[Transaction],
            Field(min_length=1, max_length=max_batch, description="The transactions to score."),
        ),
    )


class Problem(BaseModel):
    """One thing wrong with a request."""

    field: str = Field(
        description='Where: a dotted path into the body such as "transactions[3].amount".',
        examples=["amount"],
    )
    problem: str = Field(examples=["Input should be a finite number"])


class ErrorBody(BaseModel):
    """The body of every error response, on every route."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "invalid_request",
                    "message": "1 problem in the request",
                    "details": [{"field": "amount", "problem": "Input should be a finite number"}],
                    "request_id": "5f0c6a3e9b0d4d8e8a1f0c2b7d9e4a61",
                }
            ]
        }
    )

    error: str = Field(
        description=(
            "Machine-readable kind: invalid_request, payload_too_large, unauthorized, "
            "forbidden, not_found, method_not_allowed, not_ready, admin_disabled, internal."
        )
    )
    message: str = Field(description="What went wrong, for a person.")
    details: list[Problem] = Field(default_factory=list)
    request_id: str = Field(description="Also in the X-Request-ID response header.")


class Health(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Readiness: which model serves, or why none does."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "ready": True,
                    "reason": None,
                    "model_version": SCORE_EXAMPLE["model_version"],
                    "thresholds_version": 1,
                    "backend": "local",
                }
            ]
        }
    )

    ready: bool
    reason: str | None = Field(default=None, description="Why not ready.")
    model_version: str | None = None
    thresholds_version: int | None = None
    backend: str


class ModelInfo(BaseModel):
    """The model that scores requests now and the fields a request must carry."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_version": SCORE_EXAMPLE["model_version"],
                    "thresholds_version": 1,
                    "backend": "local",
                    "k": 10,
                    "fields": [
                        {"name": "amount", "kind": "numeric", "location": "amount"},
                        {
                            "name": "tran_code",
                            "kind": "categorical",
                            "location": "tran_code",
                            "categories": ["01", "05", "07", "12", "20"],
                        },
                        {"name": "hour", "kind": "numeric", "location": "features.hour"},
                    ],
                    "loaded_at": "2026-11-28T10:15:02Z",
                }
            ]
        }
    )

    model_version: str
    thresholds_version: int
    backend: str
    k: int
    fields: list[ModelField]
    loaded_at: datetime


class ModelField(BaseModel):
    """One model input and where the request carries it."""

    name: str
    kind: Literal["numeric", "categorical"]
    location: str = Field(
        description='Where it goes in a transaction: "amount", "tran_code" or "features.<name>".'
    )
    categories: list[str] | None = Field(
        default=None, description="Known categories (categorical fields)."
    )


ModelInfo.model_rebuild()
