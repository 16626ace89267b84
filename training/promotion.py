"""The promotion gate: whether a freshly trained model may replace the active one by itself.

A retrain with ``promotion: auto`` activates its model only when the gate passes; otherwise
the model stays registered and inactive, and the job says why. Two checks:

- ``test:msd`` not worse than the active model's by more than ``max_msd_increase`` (a
  fraction). Only comparable when both models see the same feature space (same
  ``feature_dim`` and fields); otherwise the check is skipped and the decision says so.
- the calibrated alert rate (what the thresholds flag on the calibration rows) within
  ``alert_rate_tolerance`` (a fraction) of the rate the threshold policy aims for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.bundle import Manifest
from training.thresholds import Thresholds


@dataclass(frozen=True)
class PromotionGate:
    """Limits a new model must meet to be promoted automatically."""

    max_msd_increase: float = 0.10
    alert_rate_tolerance: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_msd_increase", "alert_rate_tolerance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    def to_dict(self) -> dict[str, float]:
        """JSON-ready form (recorded in the job's parameters)."""
        return {
            "max_msd_increase": self.max_msd_increase,
            "alert_rate_tolerance": self.alert_rate_tolerance,
        }


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict: ``passed`` and one line per check."""

    passed: bool
    checks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"passed": self.passed, "checks": list(self.checks)}


def calibrated_alert_rate(thresholds: Thresholds) -> float:
    """The share of calibration rows the thresholds flag (per-cluster rates weighted by count)."""
    counts = thresholds.counts.astype(np.float64)
    total = float(counts.sum())
    return float((thresholds.alert_rates * counts).sum() / total) if total else 0.0


def evaluate(
    gate: PromotionGate,
    candidate: Manifest,
    thresholds: Thresholds,
    active: Manifest | None,
) -> GateDecision:
    """Check ``candidate`` (with its new ``thresholds``) against the ``active`` model."""
    checks: list[str] = []
    passed = True
    new_msd = candidate.metrics.get("test:msd")
    if active is None:
        checks.append("no active model: nothing to compare test:msd with")
    elif not _same_features(candidate, active):
        checks.append(
            f"test:msd not compared: model {active.model_version} uses other features "
            f"(feature_dim {active.feature_dim} vs {candidate.feature_dim})"
        )
    else:
        old_msd = active.metrics.get("test:msd")
        if new_msd is None or old_msd is None:
            checks.append("test:msd missing on one of the models: not compared")
        else:
            limit = old_msd * (1.0 + gate.max_msd_increase)
            ok = new_msd <= limit
            passed &= ok
            checks.append(
                f"test:msd {new_msd:.6g} {'<=' if ok else '>'} {limit:.6g} "
                f"(active {old_msd:.6g} + {gate.max_msd_increase:.0%})"
            )
    rate = calibrated_alert_rate(thresholds)
    target = thresholds.policy.expected_alert_rate
    low, high = (
        target * (1.0 - gate.alert_rate_tolerance),
        target * (1.0 + gate.alert_rate_tolerance),
    )
    ok = low <= rate <= high
    passed &= ok
    checks.append(
        f"calibrated alert rate {rate:.4%} {'within' if ok else 'outside'} "
        f"[{low:.4%}, {high:.4%}] (policy aims at {target:.4%})"
    )
    return GateDecision(passed, checks)


# Refitted on every retrain; everything else about a field decides what a distance means.
_FITTED_STATISTICS = frozenset({"center", "spread"})


def _same_features(a: Manifest, b: Manifest) -> bool:
    """Whether distances of both models are in the same units (fitted statistics aside)."""

    def definitions(manifest: Manifest) -> list[dict[str, Any]]:
        return [
            {key: value for key, value in field.items() if key not in _FITTED_STATISTICS}
            for field in manifest.feature_spec.get("fields", [])
        ]

    return a.feature_dim == b.feature_dim and definitions(a) == definitions(b)
