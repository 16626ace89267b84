"""Tests for training.calibration: threshold invariants, alert rates, label reports, metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from training.calibration import (
    average_precision,
    calibrate,
    label_report,
    leave_one_out,
    roc_auc,
)
from training.errors import DataError
from training.thresholds import ThresholdPolicy, Thresholds, judge

DEFAULT = ThresholdPolicy()  # one 1 % alert budget for the whole model


def _sample(
    seed: int, n: int, k: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Clusters of different widths with continuous distances, and equal shares."""
    rng = np.random.default_rng(seed)
    clusters = rng.integers(0, k, n)
    distances = rng.gamma(2.0, 1.0, n) * (1.0 + clusters)
    return clusters, distances, np.full(k, 1.0 / k)


def _centres(shares: npt.ArrayLike | int) -> npt.NDArray[np.float64]:
    """Centroids for these shares (or this many clusters) that all lie at one point: no
    cluster is further out than another."""
    k = shares if isinstance(shares, int) else np.size(shares)
    return np.zeros((k, 2))


def _calibrate(
    clusters: npt.ArrayLike,
    distances: npt.ArrayLike,
    shares: npt.ArrayLike,
    policy: ThresholdPolicy = DEFAULT,
    **weights: float,
) -> Thresholds:
    """calibrate() with every centre at one point (see _centres): thresholds by width and share."""
    return calibrate(
        clusters,
        distances,
        cluster_shares=shares,
        centroids=_centres(shares),
        policy=policy,
        model_version="m",
        **weights,
    )


def _realised(t: Thresholds, clusters: npt.ArrayLike, distances: npt.ArrayLike) -> float:
    return float(np.mean(judge(t, np.asarray(clusters), np.asarray(distances)).anomalous))


samples = st.integers(1, 6).flatmap(
    lambda k: st.tuples(
        st.just(k),
        st.lists(
            st.tuples(
                st.integers(0, k - 1),
                st.one_of(st.just(0.0), st.floats(0.0, 1e6, allow_nan=False)),
            ),
            min_size=1,
            max_size=80,
        ),
        st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k),
    )
)


@given(
    sample=samples,
    value=st.floats(0.5, 0.999),
    kind=st.sampled_from(["quantile", "target_alert_rate"]),
    min_points=st.integers(1, 40),
)
@settings(max_examples=150, deadline=None)
def test_thresholds_are_finite_positive_and_consistent(
    sample: tuple[int, list[tuple[int, float]], list[float]],
    value: float,
    kind: str,
    min_points: int,
) -> None:
    k, rows, shares = sample
    clusters = np.array([c for c, _ in rows])
    distances = np.array([d for _, d in rows])
    if kind == "target_alert_rate":
        value = 1.0 - value
    policy = ThresholdPolicy(kind=kind, value=value, min_points=min_points)  # type: ignore[arg-type]
    t = _calibrate(clusters, distances, shares, policy)
    assert t.k == k
    assert np.all(np.isfinite(t.values))
    assert np.all(t.values > 0)
    counts = np.bincount(clusters, minlength=k)
    np.testing.assert_array_equal(t.counts, counts)
    np.testing.assert_array_equal(t.fallback, counts < min_points)
    np.testing.assert_array_equal(t.rare, np.array(shares) < policy.rare_share)
    assert np.all((t.alert_rates >= 0) & (t.alert_rates <= 1))
    # The recorded per-cluster rates are what judge does on the sample.
    flagged = judge(t, clusters, distances).anomalous
    for c in range(k):
        if counts[c]:
            assert t.alert_rates[c] == pytest.approx(flagged[clusters == c].mean())
    assert t.extra["realised_alert_rate"] == pytest.approx(flagged.mean())
    # The score ranks like the decision: over 1 exactly when flagged, rare patterns at >= 1.
    verdict = judge(t, clusters, distances)
    rare_row = t.rare[clusters]
    np.testing.assert_array_equal(verdict.anomalous[~rare_row], verdict.score[~rare_row] > 1.0)
    assert np.all(verdict.anomalous[rare_row])
    assert np.all(verdict.score[rare_row] >= 1.0)
    json.dumps(t.to_dict(), allow_nan=False)


@given(
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(1e-3, 1e3),
    kind=st.sampled_from(["quantile", "target_alert_rate"]),
)
@settings(max_examples=40, deadline=None)
def test_thresholds_follow_the_units_of_the_distances(seed: int, scale: float, kind: str) -> None:
    clusters, distances, _ = _sample(seed, 3_000, 5)
    shares = np.array([0.4, 0.3, 0.2, 0.097, 0.003])
    value = 0.99 if kind == "quantile" else 0.01
    policy = ThresholdPolicy(kind=kind, value=value)  # type: ignore[arg-type]
    centroids = np.random.default_rng(seed).normal(size=(5, 3))
    t, scaled = (
        calibrate(
            clusters,
            d,
            cluster_shares=shares,
            centroids=centroids * s,
            policy=policy,
            model_version="m",
        )
        for d, s in ((distances, 1.0), (distances * scale, scale))
    )
    # Rescaling the feature space (centroids and distances) moves no cluster further out...
    np.testing.assert_allclose(scaled.extra["outlyingness"], t.extra["outlyingness"], rtol=1e-9)
    # Rescaling the feature space rescales every threshold and changes no score.
    np.testing.assert_allclose(scaled.values, t.values * scale, rtol=1e-9)
    np.testing.assert_allclose(
        judge(scaled, clusters, distances * scale).score,
        judge(t, clusters, distances).score,
        rtol=1e-9,
    )


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2_000, 6_000),
    value=st.floats(0.001, 0.1),
)
@settings(max_examples=30, deadline=None)
def test_realised_alert_rate_matches_the_target(seed: int, n: int, value: float) -> None:
    clusters, distances, _ = _sample(seed, n, 5)
    # Held-out mix = training mix: the expected rate is the held-out rate itself.
    shares = np.bincount(clusters, minlength=5) / n
    policy = ThresholdPolicy(kind="target_alert_rate", value=value)
    t = _calibrate(clusters, distances, shares, policy)
    # Continuous distances: the whole number of rows nearest to rate * n is flagged (either
    # neighbour when rate * n ends in exactly one half).
    flagged = _realised(t, clusters, distances) * n
    assert flagged == pytest.approx(round(flagged), abs=1e-9)
    assert abs(flagged - policy.expected_alert_rate * n) <= 0.5 + 1e-9
    assert t.extra["expected_alert_rate"] == pytest.approx(t.extra["realised_alert_rate"])


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2_000, 6_000),
    value=st.floats(0.001, 0.1),
)
@settings(max_examples=30, deadline=None)
def test_expected_alert_rate_matches_the_target_over_the_training_mix(
    seed: int, n: int, value: float
) -> None:
    clusters, distances, _ = _sample(seed, n, 5)
    shares = np.array([0.4, 0.25, 0.2, 0.1, 0.05])  # not the held-out mix
    policy = ThresholdPolicy(kind="target_alert_rate", value=value)
    t = _calibrate(clusters, distances, shares, policy)
    # Each held-out row of cluster c counts share[c] / count[c]: the cut gets within half the
    # heaviest row of the target.
    heaviest = float(np.max(shares / t.counts))
    assert abs(t.extra["expected_alert_rate"] - value) <= heaviest / 2 + 1e-12
    assert t.extra["expected_alert_rate"] == pytest.approx(float(shares @ t.alert_rates))


def test_a_small_cluster_over_represented_in_the_held_out_rows_does_not_skew_the_rate() -> None:
    rng = np.random.default_rng(11)
    shares = np.array([0.6, 0.3, 0.1])

    def draw(counts: list[int]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        clusters = np.repeat(np.arange(3), counts)
        return clusters, rng.gamma(2.0, 1.0, clusters.size) * (1.0 + clusters)

    # The smallest cluster, where the share-weighted thresholds spend the budget, holds 25 %
    # of the held-out rows but 10 % of the training rows.
    clusters, distances = draw([6_000, 3_000, 3_000])
    t = _calibrate(clusters, distances, shares)
    assert t.extra["expected_alert_rate"] == pytest.approx(0.01, abs=1e-4)
    assert t.extra["realised_alert_rate"] == pytest.approx(0.025, abs=1e-3)
    # New rows come in the training mix: they alert at the target rate, not 2.5 times less.
    future = draw([int(s * 300_000) for s in shares])
    assert _realised(t, *future) == pytest.approx(0.01, abs=0.0015)


@given(
    seed=st.integers(0, 2**32 - 1),
    low=st.floats(0.5, 0.999),
    gap=st.floats(0.0, 0.3),
    zeros=st.booleans(),
    min_points=st.integers(1, 200),
)
@settings(max_examples=60, deadline=None)
def test_a_higher_quantile_never_lowers_a_threshold(
    seed: int, low: float, gap: float, zeros: bool, min_points: int
) -> None:
    clusters, distances, _ = _sample(seed, 500, 4)
    if zeros:
        distances[::3] = 0.0
    shares = np.array([0.5, 0.3, 0.197, 0.003])
    high = min(low + gap, 0.9999)
    values = [
        _calibrate(
            clusters,
            distances,
            shares,
            ThresholdPolicy(kind="quantile", value=q, min_points=min_points),
        ).values
        for q in (low, high)
    ]
    assert np.all(values[1] >= values[0])


@given(seed=st.integers(0, 2**32 - 1), value=st.floats(0.8, 0.995))
@settings(max_examples=30, deadline=None)
def test_quantile_policy_is_each_clusters_own_quantile(seed: int, value: float) -> None:
    clusters, distances, shares = _sample(seed, 8_000, 4)
    policy = ThresholdPolicy(kind="quantile", value=value)
    t = _calibrate(clusters, distances, shares, policy)
    for c in range(4):
        own = distances[clusters == c]
        # Read at plotting positions i / (n + 1): what new rows exceed at 1 - quantile.
        assert t.values[c] == pytest.approx(np.quantile(own, value, method="weibull"))
        # Every cluster alerts at about 1 - quantile, however wide it is.
        assert t.alert_rates[c] == pytest.approx(1.0 - value, abs=1.0 / own.size + 1e-9)
    assert t.extra["method"] == "per_cluster_quantile"


def test_quantile_policy_alerts_new_rows_at_the_asked_rate() -> None:
    # 60 held-out rows per cluster: too few to see a 0.99 quantile, enough to calibrate on.
    value, k, n = 0.99, 4, 60
    rates = []
    for seed in range(300):
        clusters, distances, shares = _sample(seed, k * n, k)
        policy = ThresholdPolicy(kind="quantile", value=value, rare_share=0.0)
        t = _calibrate(clusters, distances, shares, policy)
        new_clusters, new_distances, _ = _sample(10_000 + seed, 20_000, k)
        rates.append(_realised(t, new_clusters, new_distances))
    # A linear reading puts each threshold between a cluster's two largest rows: about 2 %.
    assert float(np.mean(rates)) == pytest.approx(1.0 - value, rel=0.15)


def test_beyond_its_largest_row_a_cluster_follows_the_pooled_tail() -> None:
    clusters, distances, shares = _sample(12, 2_000, 2)
    clusters[:40] = 2  # 40 held-out rows: their own rows reach the 40/41 = 0.976 quantile
    shares = np.array([0.45, 0.45, 0.1])
    low, high = (
        _calibrate(
            clusters, distances, shares, ThresholdPolicy(kind="quantile", value=q, min_points=30)
        )
        for q in (0.97, 0.995)
    )
    own = distances[clusters == 2]
    assert not low.fallback[2]
    assert low.values[2] == pytest.approx(np.quantile(own, 0.97, method="weibull"))
    # Above its largest row, by the pooled tail's rise from 40/41 to 0.995.
    assert high.values[2] > own.max()


def test_rare_pattern_rows_are_flagged_and_count_in_the_overall_rate() -> None:
    clusters, distances, _ = _sample(1, 10_000, 4)
    clusters[:50] = 3  # the rare cluster holds 0.5 % of held-out rows...
    clusters[50:][clusters[50:] == 3] = 0
    shares = np.array([0.5, 0.3, 0.198, 0.002])  # ...and 0.2 % of training rows
    t = _calibrate(clusters, distances, shares)
    np.testing.assert_array_equal(t.rare, [False, False, False, True])
    assert t.alert_rates[3] == 1.0
    # 1 % overall: the rare cluster's 0.2 % of the training mix plus 0.8 % distance alerts.
    assert t.extra["rare_alert_rate"] == pytest.approx(0.002)
    assert t.extra["expected_alert_rate"] == pytest.approx(0.01, abs=2e-4)
    assert float(shares[:3] @ t.alert_rates[:3]) == pytest.approx(0.008, abs=2e-4)
    assert t.extra["budget_exhausted"] is False


def test_rare_clusters_beyond_the_budget_exhaust_it() -> None:
    clusters, distances, _ = _sample(2, 1_000, 5)
    t = _calibrate(
        clusters, distances, [0.6, 0.385, 0.005, 0.005, 0.005], ThresholdPolicy(rare_share=0.01)
    )
    # 1.5 % of the training rows are rare patterns: nothing left for distance alerts.
    assert t.extra["rare_alert_rate"] == pytest.approx(0.015)
    assert t.extra["budget_exhausted"] is True
    assert np.all(t.alert_rates[:2] == 0.0)
    assert np.all(t.alert_rates[2:] == 1.0)


def test_small_clusters_fall_back_on_a_robust_threshold() -> None:
    clusters, distances, _ = _sample(3, 3_000, 3)
    clusters[clusters == 2] = 0
    clusters[:2] = 2  # only two held-out rows in cluster 2, both far away
    distances[:2] = [400.0, 500.0]
    t = _calibrate(
        clusters,
        distances,
        np.bincount(clusters) / clusters.size,
        ThresholdPolicy(rare_share=0.0),
        spread_weight=1.0,
        share_weight=0.0,
    )
    np.testing.assert_array_equal(t.fallback, [False, False, True])
    # Two stray rows do not set the cluster's threshold on their own: they are still flagged.
    assert distances[0] > t.values[2] > 0
    assert math.isfinite(t.values[2])


def test_a_cluster_without_held_out_rows_gets_the_pooled_spread() -> None:
    clusters, distances, _ = _sample(4, 2_000, 2)
    t = _calibrate(clusters, distances, [0.4, 0.4, 0.2], spread_weight=1.0, share_weight=0.0)
    assert t.counts[2] == 0
    assert t.fallback[2]
    assert t.values[2] == pytest.approx(t.extra["cut"] * np.quantile(distances, 0.9))


def test_all_zero_distances_give_positive_thresholds_and_no_alerts() -> None:
    clusters = np.array([0, 0, 1, 1, 1])
    t = _calibrate(clusters, np.zeros(5), [0.5, 0.5])
    assert np.all(t.values > 0)
    assert not judge(t, clusters, np.zeros(5)).anomalous.any()


def test_spread_is_the_outer_shell_not_the_core() -> None:
    rng = np.random.default_rng(9)
    clusters = np.repeat(np.arange(2), 5_000)
    distances = rng.gamma(2.0, 1.0, 10_000)
    # Cluster 1: same tail, but 60 % of its rows are near-duplicates of the centroid.
    core = (clusters == 1) & (rng.random(10_000) < 0.6)
    distances[core] = 1e-3 * rng.random(int(core.sum()))
    t = _calibrate(clusters, distances, [0.5, 0.5])
    for c in range(2):
        assert t.extra["spreads"][c] == pytest.approx(np.quantile(distances[clusters == c], 0.9))
    # A median spread would put every alert in cluster 1; the tail quantile shares them out.
    median = _calibrate(clusters, distances, [0.5, 0.5], spread_quantile=0.5)
    assert median.alert_rates[0] == 0.0
    assert np.all((t.alert_rates > 0.005) & (t.alert_rates < 0.015))


def test_weights_zero_give_one_global_distance_cut() -> None:
    clusters, distances, shares = _sample(5, 4_000, 4)
    t = _calibrate(clusters, distances, shares, spread_weight=0.0, share_weight=0.0)
    assert np.ptp(t.values) == 0.0
    # Distances grow with the cluster id, so the widest cluster takes most alerts.
    assert t.alert_rates[3] > t.alert_rates[0]


def test_full_spread_weight_equalises_scaled_clusters() -> None:
    rng = np.random.default_rng(6)
    clusters = np.repeat(np.arange(4), 5_000)
    distances = rng.gamma(2.0, 1.0, 20_000) * np.array([1.0, 2.0, 5.0, 10.0])[clusters]
    t = _calibrate(clusters, distances, np.full(4, 0.25), spread_weight=1.0, share_weight=0.0)
    np.testing.assert_allclose(t.alert_rates, 0.01, atol=0.004)


def test_share_weight_judges_smaller_clusters_more_strictly() -> None:
    rng = np.random.default_rng(7)
    clusters = np.repeat(np.arange(2), 5_000)
    distances = rng.gamma(2.0, 1.0, 10_000)
    t = _calibrate(clusters, distances, [0.9, 0.1], spread_weight=0.0, share_weight=1.0)
    assert t.values[1] == pytest.approx(t.values[0] / 9)
    assert t.alert_rates[1] > t.alert_rates[0]


def test_a_cluster_far_from_the_data_is_judged_more_strictly() -> None:
    rng = np.random.default_rng(12)
    clusters = np.repeat(np.arange(3), 4_000)
    distances = rng.gamma(2.0, 1.0, 12_000)  # the same width in every cluster
    centroids = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 6.0]])
    shares = np.array([0.4, 0.4, 0.2])

    def thresholds(outlying_weight: float) -> Thresholds:
        return calibrate(
            clusters,
            distances,
            cluster_shares=shares,
            centroids=centroids,
            policy=ThresholdPolicy(outlying_weight=outlying_weight),
            model_version="m",
            spread_weight=0.0,
            share_weight=0.0,
        )

    t = thresholds(1.0)
    # By hand: the data's centre, and its total variance (the centres' spread around it plus
    # the rows' spread around their centres).
    mean = shares @ centroids
    between = np.sum((centroids - mean) ** 2, axis=1)
    expected = np.sqrt(between / (shares @ between + np.mean(distances**2)))
    np.testing.assert_allclose(t.extra["outlyingness"], expected, rtol=1e-12)
    assert t.policy.outlying_weight == 1.0
    # Each threshold is scaled by exp(-outlyingness): the far cluster's is the lowest...
    np.testing.assert_allclose(t.values / t.values[0], np.exp(expected[0] - expected), rtol=1e-9)
    assert t.alert_rates[2] > 3 * t.alert_rates[0]
    # ...while the budget stays the same.
    assert t.extra["expected_alert_rate"] == pytest.approx(0.01, abs=1e-4)
    # Weight 0: one global distance cut again.
    assert np.ptp(thresholds(0.0).values) == 0.0


def test_outlyingness_is_zero_when_all_data_is_one_point() -> None:
    t = calibrate(
        [0, 1, 1],
        np.zeros(3),
        cluster_shares=[0.5, 0.5],
        centroids=np.ones((2, 4)),
        policy=DEFAULT,
        model_version="m",
    )
    assert t.extra["outlyingness"] == [0.0, 0.0]
    assert np.all(t.values > 0)


@pytest.mark.parametrize(
    ("centroids", "message"),
    [
        (np.zeros((3, 2)), r"k = 2 rows .* got shape \(3, 2\)"),
        (np.zeros(2), r"got shape \(2,\)"),
        (np.zeros((2, 0)), r"got shape \(2, 0\)"),
        (np.array([[0.0], [np.nan]]), "centroids must be finite"),
    ],
)
def test_bad_centroids_raise_data_error(centroids: npt.NDArray[np.float64], message: str) -> None:
    with pytest.raises(DataError, match=message):
        calibrate(
            [0, 1],
            [1.0, 2.0],
            cluster_shares=[0.5, 0.5],
            centroids=centroids,
            policy=DEFAULT,
            model_version="m",
        )


def test_the_policy_keeps_its_outlying_weight_and_checks_it() -> None:
    policy = ThresholdPolicy(value=0.02, outlying_weight=0.25)
    assert policy.to_dict()["outlying_weight"] == 0.25
    assert ThresholdPolicy.from_dict(policy.to_dict()) == policy
    # Thresholds written before the weight existed read with the default.
    older = {"kind": "target_alert_rate", "value": 0.01, "rare_share": 0.005, "min_points": 30}
    assert ThresholdPolicy.from_dict(older).outlying_weight == 1.0
    for bad in (-0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="outlying_weight must be a finite number >= 0"):
            ThresholdPolicy(outlying_weight=bad)
        with pytest.raises(ValueError, match="outlying_weight must be a finite number >= 0"):
            policy.adjusted("quantile", 0.9, outlying_weight=bad)


def test_an_adjusted_policy_keeps_the_settings_it_is_not_given() -> None:
    policy = ThresholdPolicy(value=0.02, rare_share=0.01, min_points=12, outlying_weight=0.25)
    kept = policy.adjusted("quantile", 0.95)
    assert kept == ThresholdPolicy("quantile", 0.95, 0.01, 12, 0.25)
    assert policy.adjusted("target_alert_rate", 0.03, outlying_weight=0.0) == ThresholdPolicy(
        "target_alert_rate", 0.03, 0.01, 12, 0.0
    )
    with pytest.raises(ValueError, match="policy value"):
        policy.adjusted("quantile", 1.5)


def test_calibrate_records_versions_and_policy() -> None:
    clusters, distances, shares = _sample(8, 500, 3)
    policy = ThresholdPolicy(kind="target_alert_rate", value=0.05)
    t = calibrate(
        clusters,
        distances,
        cluster_shares=shares,
        centroids=_centres(shares),
        policy=policy,
        model_version="v1",
        version=3,
        parent=2,
    )
    assert (t.version, t.model_version, t.parent, t.policy) == (3, "v1", 2, policy)
    assert t.created_at
    again = Thresholds.from_dict(json.loads(json.dumps(t.to_dict())))
    np.testing.assert_array_equal(again.values, t.values)


@pytest.mark.parametrize(
    ("clusters", "distances", "shares", "message"),
    [
        ([], [], [1.0], "empty"),
        ([0, 1], [1.0], [0.5, 0.5], "same length"),
        ([0, 2], [1.0, 1.0], [0.5, 0.5], "cluster id 2 is outside 0..1"),
        ([0, -1], [1.0, 1.0], [0.5, 0.5], "cluster id -1"),
        ([0.5, 1], [1.0, 1.0], [0.5, 0.5], "integers"),
        ([0, 1], [1.0, -1.0], [0.5, 0.5], "finite and >= 0"),
        ([0, 1], [1.0, np.nan], [0.5, 0.5], "finite and >= 0"),
        ([0, 1], [1.0, 1.0], [[0.5, 0.5]], "1-d"),
        ([0, 1], [1.0, 1.0], [0.5, np.inf], "cluster_shares must be finite"),
    ],
)
def test_bad_samples_raise_data_error(
    clusters: list[float], distances: list[float], shares: list[float], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        _calibrate(np.array(clusters), distances, shares)


def test_negative_weights_are_rejected() -> None:
    one = {"cluster_shares": [1.0], "centroids": _centres(1), "policy": DEFAULT}
    with pytest.raises(DataError, match="share_weight"):
        calibrate([0], [1.0], **one, model_version="m", share_weight=-1.0)
    with pytest.raises(DataError, match="spread_quantile"):
        calibrate([0], [1.0], **one, model_version="m", spread_quantile=1.0)


# -- leave-one-out distances of training rows ------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 12), min_size=1, max_size=4),
    dim=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_leave_one_out_is_the_distance_to_the_mean_of_the_other_rows(
    sizes: list[int], dim: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(sum(sizes), dim)) * rng.uniform(0.1, 10.0)
    clusters = np.repeat(np.arange(len(sizes)), sizes)
    centres = np.array([x[clusters == c].mean(axis=0) for c in range(len(sizes))])
    distances = np.linalg.norm(x - centres[clusters], axis=1)
    kept, loo = leave_one_out(clusters, distances, np.array(sizes, dtype=np.float64))
    np.testing.assert_array_equal(kept, clusters)
    others = np.array(
        [
            np.linalg.norm(x[i] - np.delete(x, i, axis=0)[np.delete(clusters, i) == c].mean(axis=0))
            for i, c in enumerate(clusters)
        ]
    )
    np.testing.assert_allclose(loo, others, rtol=1e-9, atol=1e-12)
    # In-sample distances are biased small: leaving the row out never brings it closer.
    assert np.all(loo >= distances)


def test_leave_one_out_drops_rows_of_clusters_with_fewer_than_two_rows() -> None:
    kept, loo = leave_one_out([0, 1, 2, 2], [1.0, 2.0, 3.0, 4.0], [1.0, 0.0, 4.0])
    np.testing.assert_array_equal(kept, [2, 2])
    np.testing.assert_allclose(loo, [4.0, 16.0 / 3.0])
    empty_clusters, empty = leave_one_out([], [], [3.0])
    assert empty_clusters.shape == empty.shape == (0,)


@pytest.mark.parametrize(
    ("counts", "message"),
    [([[2.0]], "1-d"), ([np.nan], "finite"), ([-1.0], ">= 0")],
)
def test_leave_one_out_rejects_bad_counts(counts: list[object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        leave_one_out([0], [1.0], counts)  # type: ignore[arg-type]


def test_leave_one_out_rejects_a_cluster_id_beyond_the_counts() -> None:
    with pytest.raises(DataError, match=r"cluster id 1 is outside 0\.\.0"):
        leave_one_out([0, 1], [1.0, 1.0], [5.0])


def _hand_thresholds() -> Thresholds:
    return Thresholds(
        version=4,
        model_version="m",
        policy=DEFAULT,
        values=np.array([1.0, 2.0, 1.0]),
        rare=np.array([False, False, True]),
        counts=np.zeros(3, dtype=np.int64),
        alert_rates=np.zeros(3),
        fallback=np.zeros(3, dtype=np.bool_),
    )


def test_label_report_matches_hand_counts() -> None:
    clusters = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    distances = np.array([0.5, 1.5, 2.0, 0.2, 1.0, 3.0, 2.5, 0.1])
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    report = label_report(clusters, distances, labels, _hand_thresholds())
    # Flagged: cluster 0 rows 1.5 and 2.0; cluster 1 rows 3.0 and 2.5; the rare row.
    overall = report["overall"]
    assert overall["count"] == 8
    assert overall["positives"] == 4
    assert overall["alerts"] == 5
    assert overall["alert_rate"] == pytest.approx(5 / 8)
    assert overall["precision"] == pytest.approx(3 / 5)
    assert overall["recall"] == pytest.approx(3 / 4)
    scores = [0.5, 1.5, 2.0, 0.2, 0.5, 1.5, 1.25, 1.0]
    assert overall["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert overall["pr_auc"] == pytest.approx(average_precision_score(labels, scores))
    c0, c1, c2 = report["clusters"]
    assert (c0["count"], c0["alerts"], c0["precision"], c0["recall"]) == (4, 2, 0.5, 0.5)
    assert (c1["count"], c1["alerts"], c1["precision"], c1["recall"]) == (3, 2, 0.5, 1.0)
    assert (c2["rare_pattern"], c2["alert_rate"], c2["precision"]) == (True, 1.0, 1.0)
    assert report["thresholds_version"] == 4
    json.dumps(report, allow_nan=False)


def test_label_report_undefined_rates_are_none() -> None:
    report = label_report([0, 0], [0.1, 0.2], [0, 0], _hand_thresholds())
    overall = report["overall"]
    assert overall["precision"] is None  # nothing flagged
    assert overall["recall"] is None  # no positives
    assert overall["roc_auc"] is None
    assert overall["pr_auc"] is None
    assert report["clusters"][1]["alert_rate"] is None  # no rows
    json.dumps(report, allow_nan=False)


def test_label_report_rejects_bad_labels() -> None:
    with pytest.raises(DataError, match="0 or 1"):
        label_report([0, 1], [0.1, 0.2], [0, 2], _hand_thresholds())
    with pytest.raises(DataError, match="shape"):
        label_report([0, 1], [0.1, 0.2], [0], _hand_thresholds())


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 300),
    levels=st.sampled_from([2, 5, 50, 0]),
)
@settings(max_examples=80, deadline=None)
def test_metrics_agree_with_sklearn(seed: int, n: int, levels: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[rng.integers(0, n)] = 1  # at least one positive
    # Few score levels force ties; 0 means continuous scores.
    scores = rng.integers(0, levels, n).astype(float) if levels else rng.normal(size=n)
    assert average_precision(scores, labels) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )
    if 0 < labels.sum() < n:
        assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    else:
        assert math.isnan(roc_auc(scores, labels))


def test_metrics_on_known_rankings() -> None:
    assert roc_auc([3.0, 2.0, 1.0], [1, 0, 0]) == 1.0
    assert roc_auc([1.0, 2.0, 3.0], [1, 0, 0]) == 0.0
    assert roc_auc([1.0, 1.0], [1, 0]) == 0.5
    assert average_precision([3.0, 2.0, 1.0], [0, 1, 0]) == 0.5
    assert math.isnan(average_precision([1.0, 2.0], [0, 0]))
    with pytest.raises(DataError, match="finite"):
        roc_auc([1.0, np.inf], [0, 1])
