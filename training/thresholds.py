"""Per-cluster distance thresholds: the versioned decision rule, and applying it.

A transaction is anomalous when its Euclidean distance to its cluster exceeds that
cluster's threshold, or when the cluster itself is a *rare pattern* (it held too small a
share of the training data). Fitting thresholds lives in :mod:`training.calibration`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from training.errors import BundleError

PolicyKind = Literal["quantile", "target_alert_rate"]
POLICY_KINDS: tuple[PolicyKind, ...] = ("quantile", "target_alert_rate")


@dataclass(frozen=True)
class ThresholdPolicy:
    """How thresholds are calibrated.

    ``target_alert_rate`` (default, 1 %): one alert budget for the whole model, spread over
    the clusters by their width, training share and how far out they lie (smaller clusters,
    and clusters on the edge of the data, are judged more strictly), so that the expected
    share of flagged rows, rare-pattern clusters included, equals ``value``: each cluster's
    alert rate on the calibration rows weighted by its training share. See
    :mod:`training.calibration` for why this is the default.
    ``quantile`` (e.g. 0.99): each cluster's threshold is that quantile of its own
    calibration distances (held-out rows, and training rows left out of their centre), so
    every cluster alerts at about ``1 - value``.
    """

    kind: PolicyKind = "target_alert_rate"
    value: float = 0.01
    rare_share: float = 0.005
    min_points: int = 30
    # How much more strictly a cluster far out on the edge of the data is judged (see
    # training.calibration); 0 judges every cluster by its width and share alone.
    outlying_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"policy kind must be one of {POLICY_KINDS}, got {self.kind!r}")
        if not (0.0 < self.value < 1.0) or not math.isfinite(self.value):
            raise ValueError(f"policy value must be in (0, 1), got {self.value!r}")
        if not (0.0 <= self.rare_share < 1.0):
            raise ValueError(f"rare_share must be in [0, 1), got {self.rare_share!r}")
        if self.min_points < 1:
            raise ValueError(f"min_points must be >= 1, got {self.min_points!r}")
        if not (math.isfinite(self.outlying_weight) and self.outlying_weight >= 0.0):
            raise ValueError(
                f"outlying_weight must be a finite number >= 0, got {self.outlying_weight!r}"
            )

    def adjusted(
        self, kind: PolicyKind, value: float, *, outlying_weight: float | None = None
    ) -> ThresholdPolicy:
        """This policy with a new kind and value, and outlying weight if one is given; its
        other settings (rare-pattern share, minimum points) carry over."""
        weight = self.outlying_weight if outlying_weight is None else outlying_weight
        return replace(self, kind=kind, value=value, outlying_weight=weight)

    @property
    def expected_alert_rate(self) -> float:
        """The overall alert rate this policy aims for."""
        return 1.0 - self.value if self.kind == "quantile" else self.value

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "kind": self.kind,
            "value": self.value,
            "rare_share": self.rare_share,
            "min_points": self.min_points,
            "outlying_weight": self.outlying_weight,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThresholdPolicy:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on bad content."""
        return cls(
            kind=data["kind"],
            value=float(data["value"]),
            rare_share=float(data.get("rare_share", 0.005)),
            min_points=int(data.get("min_points", 30)),
            outlying_weight=float(data.get("outlying_weight", cls.outlying_weight)),
        )


@dataclass(frozen=True, eq=False)
class Thresholds:
    """One thresholds version of one model: per-cluster thresholds and how they were made.

    Arrays all have length ``k``. ``values`` are strictly positive and finite.
    """

    version: int
    model_version: str
    policy: ThresholdPolicy
    values: npt.NDArray[np.float64]
    rare: npt.NDArray[np.bool_]
    counts: npt.NDArray[np.int64]
    alert_rates: npt.NDArray[np.float64]
    fallback: npt.NDArray[np.bool_]
    parent: int | None = None
    created_at: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = self.values.shape[0] if self.values.ndim == 1 else -1
        if k < 1:
            raise ValueError("thresholds need a 1-d array of at least one value")
        for name in ("rare", "counts", "alert_rates", "fallback"):
            arr = getattr(self, name)
            if arr.shape != (k,):
                raise ValueError(
                    f"thresholds field '{name}' has shape {arr.shape}, expected ({k},)"
                )
        if not np.all(np.isfinite(self.values)) or not np.all(self.values > 0):
            raise ValueError("every threshold must be finite and > 0")
        if self.version < 1:
            raise ValueError(f"thresholds version must be >= 1, got {self.version}")

    @property
    def k(self) -> int:
        """Number of clusters."""
        return int(self.values.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the content of ``thresholds/<n>.json``)."""
        return {
            "version": self.version,
            "model_version": self.model_version,
            "policy": self.policy.to_dict(),
            "created_at": self.created_at,
            "parent": self.parent,
            "clusters": [
                {
                    "cluster": i,
                    "threshold": float(self.values[i]),
                    "rare_pattern": bool(self.rare[i]),
                    "count": int(self.counts[i]),
                    "alert_rate": float(self.alert_rates[i]),
                    "fallback": bool(self.fallback[i]),
                }
                for i in range(self.k)
            ],
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "thresholds") -> Thresholds:
        """Parse and validate; raises :class:`BundleError` naming ``source`` on bad content."""
        try:
            clusters = list(data["clusters"])
            if [int(c["cluster"]) for c in clusters] != list(range(len(clusters))):
                raise ValueError("clusters must be listed in order 0..k-1")
            parent = data.get("parent")
            return cls(
                version=int(data["version"]),
                model_version=str(data["model_version"]),
                policy=ThresholdPolicy.from_dict(data["policy"]),
                values=np.array([float(c["threshold"]) for c in clusters], dtype=np.float64),
                rare=np.array([bool(c["rare_pattern"]) for c in clusters], dtype=np.bool_),
                counts=np.array([int(c["count"]) for c in clusters], dtype=np.int64),
                alert_rates=np.array([float(c["alert_rate"]) for c in clusters], dtype=np.float64),
                fallback=np.array(
                    [bool(c.get("fallback", False)) for c in clusters], dtype=np.bool_
                ),
                parent=None if parent is None else int(parent),
                created_at=str(data.get("created_at", "")),
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise BundleError(f"{source}: invalid thresholds: {detail}") from exc


@dataclass(frozen=True)
class Judgement:
    """Vectorised decision for a batch: arrays of length n."""

    threshold: npt.NDArray[np.float64]
    score: npt.NDArray[np.float64]
    anomalous: npt.NDArray[np.bool_]
    rare_pattern: npt.NDArray[np.bool_]


def judge(
    thresholds: Thresholds,
    clusters: npt.NDArray[np.integer[Any]],
    distances: npt.NDArray[np.floating[Any]],
) -> Judgement:
    """Apply thresholds to (cluster, distance) pairs.

    ``score = distance / threshold``; a rare-pattern cluster's rows are anomalous and
    their score is raised to at least 1.0, so that ``anomalous`` rows always score
    >= 1 and normal rows <= 1 (the score ranks like the decision).
    """
    threshold = thresholds.values[clusters]
    dist = np.asarray(distances, dtype=np.float64)
    score = dist / threshold
    rare = thresholds.rare[clusters]
    anomalous = (dist > threshold) | rare
    score = np.where(rare, np.maximum(score, 1.0), score)
    return Judgement(threshold=threshold, score=score, anomalous=anomalous, rare_pattern=rare)
