"""The promotion gate: when a freshly trained model may replace the active one by itself.

Two checks (``training.promotion.evaluate``): test:msd against the active model's, only when
both see the same features; and the calibrated alert rate within a band around the policy's
target. ``calibrated_alert_rate`` is checked against what the thresholds actually flag.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tests.factories import make_thresholds
from training.bundle import SCHEMA_VERSION, Manifest
from training.calibration import calibrate
from training.features import CategoricalField, FeatureSpec, NumericField
from training.promotion import GateDecision, PromotionGate, calibrated_alert_rate, evaluate
from training.thresholds import ThresholdPolicy, Thresholds, judge

ACTIVE = "20261128T004040Z-aaaaaa"
CANDIDATE = "20261129T004040Z-bbbbbb"
K = 3


def spec(*fields: Any) -> dict[str, Any]:
    chosen = fields or (
        NumericField("amount"),
        CategoricalField("tran_code", categories=("a", "b", "c")),
    )
    return FeatureSpec(fields=tuple(chosen), fitted=True).to_dict()


def manifest(
    version: str, msd: float | None, feature_spec: dict[str, Any] | None = None
) -> Manifest:
    feature_spec = feature_spec or spec()
    dim = FeatureSpec.from_dict(feature_spec).feature_dim
    return Manifest(
        schema_version=SCHEMA_VERSION,
        model_version=version,
        created_at="2026-11-28T00:40:40+00:00",
        k=K,
        feature_dim=dim,
        feature_spec=feature_spec,
        hyperparameters={"k": str(K), "feature_dim": str(dim)},
        metrics={} if msd is None else {"test:msd": msd, "train:msd": msd / 2},
        source={"kind": "local"},
        data_fingerprint={"rows": 100, "sha256": "ab" * 32},
        cluster_shares=[0.5, 0.25, 0.25],
    )


def thresholds(rate: float, policy: ThresholdPolicy | None = None) -> Thresholds:
    """Thresholds that flag ``rate`` of the held-out rows (every cluster alike)."""
    return make_thresholds(
        CANDIDATE,
        K,
        policy=policy or ThresholdPolicy(kind="target_alert_rate", value=0.01),
        counts=np.array([500, 300, 200]),
        alert_rates=np.full(K, rate),
    )


ON_TARGET = thresholds(0.01)


# -- the gate's settings --------------------------------------------------------------------


def test_defaults_and_json_form() -> None:
    gate = PromotionGate()
    assert (gate.max_msd_increase, gate.alert_rate_tolerance) == (0.10, 1.0)
    assert PromotionGate(0.25, 0.5).to_dict() == {
        "max_msd_increase": 0.25,
        "alert_rate_tolerance": 0.5,
    }
    assert PromotionGate(0.0, 0.0).to_dict() == {
        "max_msd_increase": 0.0,
        "alert_rate_tolerance": 0.0,
    }


@pytest.mark.parametrize("field", ["max_msd_increase", "alert_rate_tolerance"])
@pytest.mark.parametrize("value", [-0.01, -1.0, math.nan, math.inf, -math.inf])
def test_limits_must_be_finite_and_not_negative(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"{field} must be a finite number >= 0, got"):
        PromotionGate(**{field: value})


# -- calibrated_alert_rate ------------------------------------------------------------------


def test_alert_rate_is_weighted_by_held_out_counts() -> None:
    t = make_thresholds(
        CANDIDATE, K, counts=np.array([900, 90, 10]), alert_rates=np.array([0.0, 0.1, 1.0])
    )
    assert calibrated_alert_rate(t) == pytest.approx((0 * 900 + 0.1 * 90 + 1.0 * 10) / 1000)


def test_alert_rate_without_held_out_rows_is_zero() -> None:
    t = make_thresholds(CANDIDATE, K, counts=np.zeros(K, dtype=np.int64), alert_rates=np.ones(K))
    assert calibrated_alert_rate(t) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    counts=arrays(np.int64, K, elements=st.integers(0, 10_000)),
    rates=arrays(np.float64, K, elements=st.floats(0.0, 1.0)),
)
def test_alert_rate_is_the_flagged_share(counts: np.ndarray, rates: np.ndarray) -> None:
    t = make_thresholds(CANDIDATE, K, counts=counts, alert_rates=rates)
    rate = calibrated_alert_rate(t)
    assert isinstance(rate, float)
    if counts.sum() == 0:
        assert rate == 0.0
    else:
        flagged = float((rates * counts).sum())
        assert rate == pytest.approx(flagged / counts.sum(), abs=1e-12)
        present = rates[counts > 0]
        assert present.min() - 1e-12 <= rate <= present.max() + 1e-12


@pytest.mark.parametrize(
    "policy",
    [
        ThresholdPolicy(kind="quantile", value=0.95),
        ThresholdPolicy(kind="target_alert_rate", value=0.02),
        ThresholdPolicy(kind="target_alert_rate", value=0.05, rare_share=0.1),
    ],
)
def test_alert_rate_of_calibrated_thresholds_is_what_judge_flags(policy: ThresholdPolicy) -> None:
    rng = np.random.default_rng(7)
    clusters = rng.choice(4, size=4_000, p=[0.5, 0.3, 0.15, 0.05])
    distances = rng.gamma(2.0, 1.0 + clusters, size=clusters.size)
    t = calibrate(
        clusters,
        distances,
        cluster_shares=[0.5, 0.3, 0.15, 0.05],
        centroids=rng.normal(size=(4, 3)),
        policy=policy,
        model_version=CANDIDATE,
    )
    flagged = judge(t, clusters, distances).anomalous.mean()
    assert calibrated_alert_rate(t) == pytest.approx(flagged, abs=1e-12)


# -- evaluate: the test:msd check -----------------------------------------------------------


def test_without_an_active_model_only_the_alert_rate_decides() -> None:
    decision = evaluate(PromotionGate(), manifest(CANDIDATE, 99.0), ON_TARGET, None)
    assert decision.passed
    assert decision.checks[0] == "no active model: nothing to compare test:msd with"
    assert decision.checks[1].startswith("calibrated alert rate 1.0000% within")
    assert len(decision.checks) == 2
    off = evaluate(
        PromotionGate(alert_rate_tolerance=0.5), manifest(CANDIDATE, 1.0), thresholds(0.5), None
    )
    assert not off.passed


@pytest.mark.parametrize(
    ("new_msd", "passed"),
    [(1.0, True), (2.0, True), (2.999, True), (3.0, True), (3.0001, False), (30.0, False)],
)
def test_msd_may_grow_by_at_most_the_allowed_fraction(new_msd: float, passed: bool) -> None:
    gate = PromotionGate(max_msd_increase=0.5)
    decision = evaluate(gate, manifest(CANDIDATE, new_msd), ON_TARGET, manifest(ACTIVE, 2.0))
    assert decision.passed is passed
    op = "<=" if passed else ">"
    assert decision.checks[0] == f"test:msd {new_msd:.6g} {op} 3 (active 2 + 50%)"
    assert len(decision.checks) == 2  # the alert-rate check is always made


def test_zero_increase_allows_only_equal_or_better() -> None:
    gate = PromotionGate(max_msd_increase=0.0)
    active = manifest(ACTIVE, 1.25)
    assert evaluate(gate, manifest(CANDIDATE, 1.25), ON_TARGET, active).passed
    assert evaluate(gate, manifest(CANDIDATE, 1.0), ON_TARGET, active).passed
    assert not evaluate(gate, manifest(CANDIDATE, 1.2500001), ON_TARGET, active).passed


@pytest.mark.parametrize(
    "other_spec",
    [
        # another feature_dim
        spec(NumericField("amount"), CategoricalField("tran_code", categories=("a", "b"))),
        # the same feature_dim over other fields
        spec(NumericField("amount"), CategoricalField("channel", categories=("x", "y", "z"))),
        # the same fields in another order
        spec(CategoricalField("tran_code", categories=("a", "b", "c")), NumericField("amount")),
    ],
)
def test_msd_is_not_compared_across_feature_spaces(other_spec: dict[str, Any]) -> None:
    candidate = manifest(CANDIDATE, 1000.0, other_spec)  # far worse, were it comparable
    decision = evaluate(PromotionGate(), candidate, ON_TARGET, manifest(ACTIVE, 1.0))
    assert decision.passed
    assert decision.checks[0].startswith(f"test:msd not compared: model {ACTIVE} uses other")
    assert f"(feature_dim 4 vs {candidate.feature_dim})" in decision.checks[0]


def test_msd_is_not_compared_when_a_field_is_scaled_differently() -> None:
    """Same names, same width, but raw amounts instead of standardised ones: distances are in
    other units, so test:msd says nothing about which model is better."""
    raw = spec(
        NumericField("amount", scale="none"),
        CategoricalField("tran_code", categories=("a", "b", "c")),
    )
    candidate = manifest(CANDIDATE, 5_000.0, raw)
    decision = evaluate(PromotionGate(), candidate, ON_TARGET, manifest(ACTIVE, 1.0))
    assert decision.checks[0].startswith("test:msd not compared"), decision.checks[0]
    assert decision.passed


def test_fitted_statistics_do_not_make_features_different() -> None:
    """Every retrain refits centre and spread: that alone must not skip the msd check."""
    refitted = spec(
        NumericField("amount", center=3.5, spread=2.0),
        CategoricalField("tran_code", categories=("a", "b", "c")),
    )
    decision = evaluate(
        PromotionGate(), manifest(CANDIDATE, 5.0, refitted), ON_TARGET, manifest(ACTIVE, 1.0)
    )
    assert not decision.passed
    assert decision.checks[0].startswith("test:msd 5 > 1.1")


@pytest.mark.parametrize(("new", "old"), [(None, 1.0), (1.0, None), (None, None)])
def test_a_missing_msd_is_reported_and_not_held_against_the_candidate(
    new: float | None, old: float | None
) -> None:
    decision = evaluate(PromotionGate(), manifest(CANDIDATE, new), ON_TARGET, manifest(ACTIVE, old))
    assert decision.passed
    assert decision.checks[0] == "test:msd missing on one of the models: not compared"


# -- evaluate: the alert-rate band ----------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "passed"),
    [(0.0, False), (0.0049, False), (0.005, True), (0.01, True), (0.015, True), (0.0151, False)],
)
def test_the_alert_rate_must_be_within_the_band_around_the_target(
    rate: float, passed: bool
) -> None:
    gate = PromotionGate(alert_rate_tolerance=0.5)
    decision = evaluate(gate, manifest(CANDIDATE, 1.0), thresholds(rate), manifest(ACTIVE, 1.0))
    assert decision.passed is passed
    word = "within" if passed else "outside"
    assert decision.checks[1] == (
        f"calibrated alert rate {rate:.4%} {word} [0.5000%, 1.5000%] (policy aims at 1.0000%)"
    )


def test_the_default_tolerance_accepts_anything_up_to_twice_the_target() -> None:
    gate = PromotionGate()
    active = manifest(ACTIVE, 1.0)
    assert evaluate(gate, manifest(CANDIDATE, 1.0), thresholds(0.0), active).passed
    assert evaluate(gate, manifest(CANDIDATE, 1.0), thresholds(0.02), active).passed
    assert not evaluate(gate, manifest(CANDIDATE, 1.0), thresholds(0.021), active).passed


def test_a_quantile_policy_aims_at_one_minus_the_quantile() -> None:
    policy = ThresholdPolicy(kind="quantile", value=0.95)
    gate = PromotionGate(alert_rate_tolerance=0.1)
    ok = evaluate(gate, manifest(CANDIDATE, 1.0), thresholds(0.05, policy), None)
    assert ok.passed
    assert ok.checks[1].endswith("[4.5000%, 5.5000%] (policy aims at 5.0000%)")
    assert not evaluate(gate, manifest(CANDIDATE, 1.0), thresholds(0.95, policy), None).passed


def test_both_checks_must_pass() -> None:
    gate = PromotionGate(max_msd_increase=0.1, alert_rate_tolerance=0.5)
    active = manifest(ACTIVE, 1.0)
    good, worse = manifest(CANDIDATE, 1.0), manifest(CANDIDATE, 2.0)
    assert evaluate(gate, good, ON_TARGET, active).passed
    assert not evaluate(gate, worse, ON_TARGET, active).passed
    assert not evaluate(gate, good, thresholds(0.5), active).passed
    both = evaluate(gate, worse, thresholds(0.5), active)
    assert not both.passed
    assert [check.split(" ")[0:2] for check in both.checks] == [
        ["test:msd", "2"],
        ["calibrated", "alert"],
    ]
    assert ">" in both.checks[0]
    assert "outside" in both.checks[1]


def test_decisions_are_json_ready() -> None:
    decision = evaluate(PromotionGate(), manifest(CANDIDATE, 1.0), ON_TARGET, None)
    assert decision.to_dict() == {"passed": True, "checks": list(decision.checks)}
    copy = decision.to_dict()
    copy["checks"].append("edited")
    assert len(decision.checks) == 2
    assert GateDecision(False).to_dict() == {"passed": False, "checks": []}
