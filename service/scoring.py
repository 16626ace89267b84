"""The pure scoring core: raw columns in, verdicts with reasons out (no I/O, no web framework).

A batch is one transform, one assignment and one judge call. Reasons come from the exact
split of the squared distance into per-column parts ``(x_j - c_j)²``, grouped back to their
fields (one-hot columns to their categorical field); each field's share of the total, its
value and the cluster's typical value in raw units, and a direction.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from training import kmeans
from training.bundle import Bundle
from training.errors import BundleError, SpecError
from training.features import CategoricalField, FeatureSpec, NumericField
from training.thresholds import Thresholds, judge

Direction = Literal["above", "below", "different", "unseen"]
# Up to this many rows, reasons are ranked in plain Python rather than with numpy.
_FEW_ROWS = 4
Assigner = Callable[
    [npt.NDArray[np.float64], npt.NDArray[np.float64]],
    tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]],
]


# Reason and Verdict are built per row on the request path: plain slotted dataclasses,
# because a frozen one's __init__ costs three to four times as much. Treat them as values.
@dataclasses.dataclass(slots=True)
class Reason:
    """One field's part in a row's distance from its cluster's centre.

    ``share`` is the field's part of the squared distance (all fields' shares sum to 1);
    ``value`` and ``typical`` are in raw units (a category for categorical fields).
    ``above``/``below``: a number higher/lower than the cluster's typical value;
    ``different``: a category other than the cluster's usual one; ``unseen``: a category
    never seen in training.
    """

    field: str
    share: float
    value: float | str
    typical: float | str
    direction: Direction


@dataclasses.dataclass(slots=True)
class Verdict:
    """The decision for one row, in plain Python types ready for JSON."""

    cluster: int
    distance: float
    threshold: float
    score: float
    anomalous: bool
    rare_pattern: bool
    reasons: tuple[Reason, ...]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything per-model that scoring would otherwise recompute per batch."""

    nearest: kmeans.NearestCentroids  # the embedded assigner, precomputed once per model
    group: npt.NDArray[np.float64]  # (d, F) 0/1: which field each column belongs to
    fields: tuple[str, ...]
    numeric: tuple[bool, ...]
    numeric_fields: npt.NDArray[np.intp]  # field positions of numeric fields
    numeric_columns: npt.NDArray[np.intp]  # their vector columns
    categorical_fields: tuple[int, ...]
    # Column of each cluster's usual category, per categorical field: (k,) each.
    usual_column: tuple[npt.NDArray[np.intp], ...]
    field_names: npt.NDArray[np.object_]  # for top_reason, with "" appended for "none"
    # Per field for building reasons in Python: (name, vector column, usual column per
    # cluster as a list, None for a numeric field).
    reason_fields: tuple[tuple[str, int, list[int] | None], ...]


@dataclasses.dataclass(frozen=True, eq=False)
class ScoringModel:
    """A model version ready to score: feature spec, centroids and one thresholds version.

    ``typical`` holds each cluster's centre in raw units (see ``FeatureSpec.typical_values``).
    """

    model_version: str
    thresholds_version: int
    spec: FeatureSpec
    centroids: npt.NDArray[np.float64]
    thresholds: Thresholds
    typical: tuple[dict[str, float | str], ...]
    _plan: _Plan = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        c = self.centroids
        where = f"model {self.model_version}"
        if not self.spec.fitted:
            raise BundleError(f"{where}: the feature spec is not fitted")
        if c.ndim != 2 or c.shape[1] != self.spec.feature_dim:
            raise BundleError(
                f"{where}: centroids have shape {c.shape}, the feature spec has "
                f"{self.spec.feature_dim} columns"
            )
        if self.thresholds.k != c.shape[0] or len(self.typical) != c.shape[0]:
            raise BundleError(
                f"{where}: {c.shape[0]} centroids but {self.thresholds.k} thresholds and "
                f"{len(self.typical)} typical values"
            )
        object.__setattr__(self, "_plan", _make_plan(self.spec, c.astype(np.float64)))

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ScoringModel:
        """Build from a validated bundle; BundleError if its feature spec cannot be used."""
        where = f"model {bundle.manifest.model_version}"
        try:
            spec = FeatureSpec.from_dict(bundle.manifest.feature_spec)
        except SpecError as exc:
            raise BundleError(f"{where}: manifest.json feature_spec: {exc}") from None
        centroids = np.ascontiguousarray(bundle.centroids, dtype=np.float64)
        if centroids.ndim != 2 or centroids.shape[1] != spec.feature_dim:
            raise BundleError(
                f"{where}: centroids have shape {centroids.shape}, the feature spec has "
                f"{spec.feature_dim} columns"
            )
        return cls(
            model_version=bundle.manifest.model_version,
            thresholds_version=bundle.thresholds.version,
            spec=spec,
            centroids=centroids,
            thresholds=bundle.thresholds,
            typical=tuple(spec.typical_values(c) for c in centroids),
        )

    @property
    def k(self) -> int:
        """Number of clusters."""
        return int(self.centroids.shape[0])

    @property
    def nearest(self) -> kmeans.NearestCentroids:
        """The in-process nearest-centroid search of this model."""
        return self._plan.nearest


@dataclasses.dataclass(frozen=True, eq=False)
class ScoredBatch:
    """Decisions for a batch of n rows as arrays, plus what reasons are built from.

    ``x`` holds the transformed rows, ``diff`` their offsets from their cluster's centre and
    ``field_distance`` each field's part of the squared distance, (n, fields); ``unseen``
    maps each categorical field to the rows whose category was not seen in training.
    """

    model: ScoringModel
    cluster: npt.NDArray[np.int64]
    distance: npt.NDArray[np.float64]
    threshold: npt.NDArray[np.float64]
    score: npt.NDArray[np.float64]
    anomalous: npt.NDArray[np.bool_]
    rare_pattern: npt.NDArray[np.bool_]
    x: npt.NDArray[np.float64]
    diff: npt.NDArray[np.float64]
    field_distance: npt.NDArray[np.float64]
    unseen: Mapping[str, npt.NDArray[np.bool_]]
    columns: Mapping[str, Any]

    @property
    def n_rows(self) -> int:
        """Rows in the batch."""
        return int(self.cluster.shape[0])

    def shares(self) -> npt.NDArray[np.float64]:
        """Each field's share of each row's squared distance: rows sum to 1 (0 at distance 0)."""
        total = self.field_distance.sum(axis=1, keepdims=True)
        out = np.zeros_like(self.field_distance)
        np.divide(self.field_distance, total, out=out, where=total > 0)
        return out

    @functools.cached_property
    def eligible(self) -> npt.NDArray[np.bool_]:
        """(n, fields): which fields can be named as a reason.

        A field with a positive part; for a categorical field, only a category other than
        the cluster's usual one, and always an unseen category.
        """
        plan = self.model._plan
        eligible = self.field_distance > 0.0
        rows = np.arange(self.n_rows)
        for f, usual in zip(plan.categorical_fields, plan.usual_column, strict=True):
            if usual.size:
                eligible[:, f] &= self.x[rows, usual[self.cluster]] != 1.0
            eligible[:, f] |= self.unseen[plan.fields[f]]
        return eligible

    @functools.cached_property
    def top_reason(self) -> npt.NDArray[np.object_]:
        """Per row, the field with the largest part among eligible ones ("" if none)."""
        plan = self.model._plan
        n = self.n_rows
        ranked = np.where(self.eligible, self.field_distance, -1.0)
        if n == 0 or ranked.shape[1] == 0:
            none: npt.NDArray[np.object_] = plan.field_names[np.full(n, len(plan.fields))]
            return none
        best = ranked.argmax(axis=1)
        best = np.where(ranked.max(axis=1) >= 0.0, best, len(plan.fields))
        result: npt.NDArray[np.object_] = plan.field_names[best]
        return result


def score_columns(
    model: ScoringModel,
    columns: Mapping[str, Any],
    *,
    assign: Assigner | None = None,
) -> ScoredBatch:
    """Score raw columns (one array-like per field): one transform, one assign, one judge.

    ``assign`` maps (vectors, centroids) to (cluster, Euclidean distance), e.g. a SageMaker
    endpoint; by default the model's centroids are searched in process. Raises SpecError
    naming a missing or malformed field.
    """
    plan = model._plan
    transformed = model.spec.transform(columns)
    x = transformed.X
    if assign is None:
        cluster, distance = plan.nearest.assign(x)
    else:
        found, found_distance = assign(x, model.centroids)
        cluster = np.asarray(found, dtype=np.int64).reshape(-1)
        distance = np.asarray(found_distance, dtype=np.float64).reshape(-1)
        _check_assignment(cluster, distance, x.shape[0], model.k)
    verdict = judge(model.thresholds, cluster, distance)
    diff = x - model.centroids[cluster]
    return ScoredBatch(
        model=model,
        cluster=cluster,
        distance=distance,
        threshold=verdict.threshold,
        score=verdict.score,
        anomalous=verdict.anomalous,
        rare_pattern=verdict.rare_pattern,
        x=x,
        diff=diff,
        field_distance=kmeans.row_products(diff * diff, plan.group),
        unseen=transformed.unseen,
        columns=columns,
    )


def verdicts(model: ScoringModel, batch: ScoredBatch, *, top: int = 3) -> list[Verdict]:
    """One verdict per row with its ``top`` reasons by share (unseen categories always listed)."""
    if batch.model is not model:
        raise ValueError("this batch was scored by another model")
    clusters = batch.cluster.tolist()
    if len(clusters) <= _FEW_ROWS:
        rows = [_row_reasons(model, batch, i, c, top) for i, c in enumerate(clusters)]
    else:
        rows = _batch_reasons(model, batch, top)
    return [
        Verdict(c, dist, thr, score, anomalous, rare, reasons)
        for c, dist, thr, score, anomalous, rare, reasons in zip(
            clusters,
            batch.distance.tolist(),
            batch.threshold.tolist(),
            batch.score.tolist(),
            batch.anomalous.tolist(),
            batch.rare_pattern.tolist(),
            rows,
            strict=True,
        )
    ]


def _row_reasons(
    model: ScoringModel, batch: ScoredBatch, i: int, c: int, top: int
) -> tuple[Reason, ...]:
    """Reasons for row ``i`` (in cluster ``c``) in plain Python: cheaper than numpy for a row."""
    plan = model._plan
    parts = batch.field_distance[i].tolist()
    x = batch.x
    ranked: list[tuple[float, int]] = []
    new: list[int] = []
    for f, (name, _column, usual) in enumerate(plan.reason_fields):
        part = parts[f]
        if usual is None:
            if part > 0.0:
                ranked.append((-part, f))
        elif batch.unseen[name][i]:
            new.append(f)  # competes for the top places, and is named in any case
            ranked.append((-part, f))
        elif part > 0.0 and x[i, usual[c]] != 1.0:
            ranked.append((-part, f))
    ranked.sort()  # largest part first; ties in field order
    chosen = [f for _, f in ranked[: max(top, 0)]]
    if new:
        chosen = sorted(set(chosen) | set(new), key=lambda f: (-parts[f], f))
    total = sum(parts)
    typical = model.typical[c]
    reasons = []
    for f in chosen:
        name, column, usual = plan.reason_fields[f]
        share = parts[f] / total if total > 0.0 else 0.0
        raw = _item(batch.columns[name], i)
        if usual is None:
            direction: Direction = "above" if batch.diff[i, column] > 0.0 else "below"
            reasons.append(Reason(name, share, float(raw), typical[name], direction))
        else:
            direction = "unseen" if batch.unseen[name][i] else "different"
            reasons.append(Reason(name, share, str(raw), typical[name], direction))
    return tuple(reasons)


def _batch_reasons(model: ScoringModel, batch: ScoredBatch, top: int) -> list[tuple[Reason, ...]]:
    """Reasons for every row: ranking vectorised, only the chosen reasons built in Python."""
    plan = model._plan
    eligible = batch.eligible
    shares = batch.shares()
    ranked = np.where(eligible, shares, -1.0)
    keep = np.minimum(eligible.sum(axis=1), max(top, 0)).tolist()
    order = np.argsort(-ranked, axis=1, kind="stable")[:, : max(top, 0)].tolist()
    unseen = np.zeros(eligible.shape, dtype=np.bool_)
    for f in plan.categorical_fields:
        unseen[:, f] = batch.unseen[plan.fields[f]]
    with_unseen = set(np.flatnonzero(unseen.any(axis=1)).tolist())
    # Per field, the row values a reason may need, as Python objects (one conversion each).
    raw = [_column_values(batch.columns[name], batch.n_rows) for name in plan.fields]
    above = (batch.diff[:, plan.numeric_columns] > 0.0).tolist()
    numeric_at = {int(f): j for j, f in enumerate(plan.numeric_fields)}
    unseen_rows = unseen.tolist()
    share_rows = shares.tolist()
    typical = model.typical
    reason_fields = plan.reason_fields
    out: list[tuple[Reason, ...]] = []
    for i, (c, chosen, m) in enumerate(zip(batch.cluster.tolist(), order, keep, strict=True)):
        row_shares = share_rows[i]
        chosen = chosen[:m]
        if i in with_unseen:
            extra = {f for f, flag in enumerate(unseen_rows[i]) if flag}
            chosen = sorted(set(chosen) | extra, key=lambda f: (-row_shares[f], f))
        reasons = []
        for f in chosen:
            name, _column, usual = reason_fields[f]
            if usual is None:
                direction: Direction = "above" if above[i][numeric_at[f]] else "below"
                value: float | str = float(raw[f][i])
            else:
                direction = "unseen" if unseen_rows[i][f] else "different"
                value = str(raw[f][i])
            reasons.append(Reason(name, row_shares[f], value, typical[c][name], direction))
        out.append(tuple(reasons))
    return out


def _column_values(values: Any, n: int) -> list[Any]:
    """A raw column as a list of Python objects."""
    if isinstance(values, np.ndarray):
        return values.reshape(-1).tolist()
    if isinstance(values, str | bytes) or not hasattr(values, "__getitem__"):
        return [values] * n
    return list(values)


def _check_assignment(
    cluster: npt.NDArray[np.int64], distance: npt.NDArray[np.float64], n: int, k: int
) -> None:
    """A pluggable assigner (e.g. a remote endpoint) must answer every row sensibly."""
    if cluster.shape != (n,) or distance.shape != (n,):
        raise ValueError(
            f"assigner answered {cluster.shape[0]} clusters and {distance.shape[0]} distances "
            f"for {n} rows"
        )
    outside = cluster[(cluster < 0) | (cluster >= k)]
    if outside.size:
        raise ValueError(
            f"assigner returned cluster {int(outside[0])}, outside 0..{k - 1} of this model"
        )
    if not np.all(np.isfinite(distance)) or np.any(distance < 0.0):
        raise ValueError("assigner returned a negative or non-finite distance")


def _make_plan(spec: FeatureSpec, centroids: npt.NDArray[np.float64]) -> _Plan:
    """Precompute norms, the column-to-field grouping and each cluster's usual categories."""
    fields = spec.fields
    slices = spec.field_slices
    group = np.zeros((spec.feature_dim, len(fields)), dtype=np.float64)
    for f, field in enumerate(fields):
        group[slices[field.name], f] = 1.0
    numeric = tuple(isinstance(field, NumericField) for field in fields)
    categorical = tuple(f for f, field in enumerate(fields) if isinstance(field, CategoricalField))
    usual: list[npt.NDArray[np.intp]] = []
    for f in categorical:
        s = slices[fields[f].name]
        block = centroids[:, s]
        usual.append(
            (s.start + block.argmax(axis=1)).astype(np.intp)
            if block.shape[1]
            else np.zeros(0, dtype=np.intp)
        )
    names = np.empty(len(fields) + 1, dtype=object)
    names[:] = [field.name for field in fields] + [""]
    return _Plan(
        nearest=kmeans.NearestCentroids(centroids),
        group=group,
        fields=tuple(field.name for field in fields),
        numeric=numeric,
        numeric_fields=np.array([f for f, is_num in enumerate(numeric) if is_num], dtype=np.intp),
        numeric_columns=np.array(
            [slices[field.name].start for field in fields if isinstance(field, NumericField)],
            dtype=np.intp,
        ),
        categorical_fields=categorical,
        usual_column=tuple(usual),
        field_names=names,
        reason_fields=tuple(
            (
                field.name,
                slices[field.name].start,
                None if is_num else usual[categorical.index(f)].tolist(),
            )
            for f, (field, is_num) in enumerate(zip(fields, numeric, strict=True))
        ),
    )


def _item(values: Any, i: int) -> Any:
    """Row ``i`` of a raw column (a lone scalar is a one-row column)."""
    if isinstance(values, np.ndarray):
        return values.reshape(-1)[i].item() if values.dtype != object else values.reshape(-1)[i]
    if isinstance(values, str | bytes) or not hasattr(values, "__getitem__"):
        return values
    return values[i]
