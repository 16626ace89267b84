"""Transactions in, decisions out: the service logic between HTTP and the scoring core.

A model's fields are read from a transaction by name: ``amount`` and ``tran_code`` from the
top-level fields of the same names, every other field from ``features``. A field the model
needs but the transaction lacks, or a value of the wrong kind, is a problem named by its
path in the request body; nothing is guessed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from service.backends import ClusterBackend
from service.errors import InvalidRequest
from service.schemas import Transaction
from service.scoring import Assigner, ScoringModel, Verdict, score_columns, verdicts
from training.errors import BundleError
from training.features import CategoricalField, NumericField

Location = Literal["amount", "tran_code", "features"]
_TOP_LEVEL: dict[str, tuple[Location, bool]] = {
    "amount": ("amount", True),
    "tran_code": ("tran_code", False),
}


@dataclasses.dataclass(frozen=True, slots=True)
class FieldSource:
    """Where a transaction carries one model field, and what kind of value it must be."""

    name: str
    numeric: bool
    location: Location
    categories: tuple[str, ...] | None  # for categorical fields


def input_layout(model: ScoringModel) -> tuple[FieldSource, ...]:
    """Where each model field comes from; BundleError if the API cannot carry a field."""
    out = []
    for field in model.spec.fields:
        numeric = isinstance(field, NumericField)
        location, needs_numeric = _TOP_LEVEL.get(field.name, ("features", numeric))
        if location != "features" and numeric != needs_numeric:
            kind = "numeric" if needs_numeric else "categorical"
            raise BundleError(
                f"model {model.model_version}: field '{field.name}' must be {kind} to be read "
                f"from the request's '{field.name}'"
            )
        categories = tuple(field.categories) if isinstance(field, CategoricalField) else None
        out.append(FieldSource(field.name, numeric, location, categories))
    return tuple(out)


def model_columns(
    layout: Sequence[FieldSource],
    transactions: Sequence[Transaction],
    where: Callable[[int], str],
) -> dict[str, list[Any]]:
    """The model's raw columns from validated transactions; InvalidRequest naming each gap.

    ``where(i)`` is the body path of transaction ``i`` ("" for a lone transaction).
    """
    columns: dict[str, list[Any]] = {}
    problems: list[tuple[str, str]] = []
    for source in layout:
        name = source.name
        if source.location == "amount":
            columns[name] = [t.amount for t in transactions]
        elif source.location == "tran_code":
            columns[name] = [t.tran_code for t in transactions]
        else:
            values = [t.features.get(name) for t in transactions]
            # Check the whole column at once; look row by row only to name the bad ones.
            if None in values or (
                any(isinstance(v, str) for v in values)
                if source.numeric
                else not all(isinstance(v, str) for v in values)
            ):
                values = [
                    _feature(source, t, i, where, problems) for i, t in enumerate(transactions)
                ]
            columns[name] = values
    if problems:
        raise InvalidRequest.of(problems)
    return columns


def row_values(layout: Sequence[FieldSource], transaction: Transaction) -> dict[str, Any]:
    """One transaction's model values by field name; InvalidRequest naming each gap."""
    values: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for source in layout:
        if source.location == "amount":
            values[source.name] = transaction.amount
        elif source.location == "tran_code":
            values[source.name] = transaction.tran_code
        else:
            values[source.name] = _feature(source, transaction, 0, one, problems)
    if problems:
        raise InvalidRequest.of(problems)
    return values


def _feature(
    source: FieldSource,
    transaction: Transaction,
    i: int,
    where: Callable[[int], str],
    problems: list[tuple[str, str]],
) -> Any:
    """A model field from ``features``, noting a problem if it is missing or of the wrong kind."""
    value = transaction.features.get(source.name)
    if value is None:
        kind = "a number" if source.numeric else "a category string"
        problems.append(
            (f"{where(i)}features.{source.name}", f"field required by the model ({kind})")
        )
    elif source.numeric and isinstance(value, str):
        problems.append((f"{where(i)}features.{source.name}", "expected a number, got a string"))
    elif not source.numeric and not isinstance(value, str):
        problems.append(
            (f"{where(i)}features.{source.name}", "expected a category string, got a number")
        )
    return value


def one(i: int) -> str:  # noqa: ARG001 (same signature as in_batch)
    """Body path prefix of a lone transaction."""
    return ""


def in_batch(i: int) -> str:
    """Body path prefix of transaction ``i`` in a batch."""
    return f"transactions[{i}]."


@dataclasses.dataclass(frozen=True, slots=True)
class Decisions:
    """Response bodies in request order, and the clusters and outcomes for the metrics."""

    bodies: list[dict[str, Any]]
    clusters: list[int]
    anomalous: list[bool]
    backend: str  # who answered: the backend, or its fallback


def decide(
    model: ScoringModel,
    layout: Sequence[FieldSource],
    transactions: Sequence[Transaction],
    *,
    backend: ClusterBackend,
    reasons: int,
    where: Callable[[int], str],
) -> Decisions:
    """Score validated transactions with one model version: one transform, one assignment."""
    columns = model_columns(layout, transactions, where)
    ids = [t.transaction_id for t in transactions]
    return decide_columns(model, columns, ids, backend=backend, reasons=reasons)


def decide_columns(
    model: ScoringModel,
    columns: Mapping[str, Sequence[Any]],
    ids: Sequence[str],
    *,
    backend: ClusterBackend,
    reasons: int,
) -> Decisions:
    """Score checked model columns (from :func:`model_columns`) of the transactions ``ids``."""
    answered = backend.name
    assign: Assigner | None = None
    if not backend.embedded:

        def assign(
            x: npt.NDArray[np.float64], _centroids: npt.NDArray[np.float64]
        ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
            nonlocal answered
            clusters, distances, answered = backend.assign(model, x)
            return clusters, distances

    batch = score_columns(model, columns, assign=assign)
    found = verdicts(model, batch, top=reasons)
    mv, tv = model.model_version, model.thresholds_version
    bodies = [response_body(tid, v, mv, tv, answered) for tid, v in zip(ids, found, strict=True)]
    return Decisions(
        bodies=bodies,
        clusters=[v.cluster for v in found],
        anomalous=[v.anomalous for v in found],
        backend=answered,
    )


def response_body(
    transaction_id: str, v: Verdict, model_version: str, thresholds_version: int, backend: str
) -> dict[str, Any]:
    """A decision as the JSON object of ``schemas.ScoreResponse``."""
    return {
        "transaction_id": transaction_id,
        "anomalous": v.anomalous,
        "cluster": v.cluster,
        "distance": v.distance,
        "threshold": v.threshold,
        "score": v.score,
        "rare_pattern": v.rare_pattern,
        "reasons": [
            {
                "field": r.field,
                "share": r.share,
                "value": r.value,
                "typical": r.typical,
                "direction": r.direction,
            }
            for r in v.reasons
        ],
        "model_version": model_version,
        "thresholds_version": thresholds_version,
        "backend": backend,
    }
