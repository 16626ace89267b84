"""Tests for service.scoring: verdicts, reasons in raw units, batch vs row, model loading."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.scoring import Reason, ScoredBatch, ScoringModel, Verdict, score_columns, verdicts
from training.bundle import SCHEMA_VERSION, Bundle, CalibrationSample, Manifest
from training.errors import BundleError, SpecError
from training.features import CategoricalField, FeatureSpec, NumericField
from training.kmeans import assign
from training.thresholds import ThresholdPolicy, Thresholds, judge

AMOUNT_CENTER = math.log1p(100.0)

# amount: signed log1p, then (t - log1p(100)) / 0.5; hour: (x - 12) / 6; code: one-hot A, B, C.
SPEC = FeatureSpec(
    (
        NumericField("amount", "log1p", "standard", AMOUNT_CENTER, 0.5),
        NumericField("hour", "none", "standard", 12.0, 6.0),
        CategoricalField("code", ("A", "B", "C")),
    ),
    fitted=True,
)
CENTROIDS = np.array(
    [
        [0.0, 0.0, 1.0, 0.0, 0.0],  # amount 100, hour 12, code A
        [4.0, 2.0, 0.0, 0.75, 0.25],  # a mixed cluster, mostly B
        [-4.0, -2.0, 0.0, 0.0, 1.0],  # the rare pattern: small amounts at night, code C
    ]
)


def _thresholds(values: list[float], rare: list[bool]) -> Thresholds:
    k = len(values)
    return Thresholds(
        version=2,
        model_version="m1",
        policy=ThresholdPolicy(),
        values=np.array(values),
        rare=np.array(rare),
        counts=np.zeros(k, dtype=np.int64),
        alert_rates=np.zeros(k),
        fallback=np.zeros(k, dtype=np.bool_),
    )


def _model(
    spec: FeatureSpec = SPEC,
    centroids: npt.NDArray[np.float64] = CENTROIDS,
    thresholds: Thresholds | None = None,
) -> ScoringModel:
    return ScoringModel(
        model_version="m1",
        thresholds_version=2,
        spec=spec,
        centroids=centroids,
        thresholds=thresholds or _thresholds([1.0, 1.5, 0.5], [False, False, True]),
        typical=tuple(spec.typical_values(c) for c in centroids),
    )


MODEL = _model()


def _amount(v: float) -> float:
    """The raw amount whose scaled value is ``v``."""
    return math.expm1(AMOUNT_CENTER + 0.5 * v)


def _one(model: ScoringModel, **row: Any) -> Verdict:
    batch = score_columns(model, row)
    [verdict] = verdicts(model, batch, top=10)
    return verdict


def test_reasons_are_in_raw_units_with_exact_shares() -> None:
    amount = _amount(0.6)
    v = _one(MODEL, amount=amount, hour=15.0, code="A")
    assert v.cluster == 0
    # Parts of the squared distance: amount 0.6² = 0.36, hour 0.5² = 0.25, code 0.
    assert v.distance == pytest.approx(math.sqrt(0.61))
    assert [r.field for r in v.reasons] == ["amount", "hour"]
    first, second = v.reasons
    assert first.share == pytest.approx(0.36 / 0.61)
    assert second.share == pytest.approx(0.25 / 0.61)
    assert first.value == amount
    assert first.typical == pytest.approx(100.0)
    assert first.direction == "above"
    assert (second.value, second.typical, second.direction) == (15.0, 12.0, "above")
    assert not v.anomalous
    assert v.score == pytest.approx(math.sqrt(0.61) / 1.0)


def test_below_and_different_category() -> None:
    v = _one(MODEL, amount=_amount(-0.5), hour=9.0, code="B")
    assert v.cluster == 0
    by_field = {r.field: r for r in v.reasons}
    # code B against the cluster's A: parts (0-1)² + (1-0)² = 2 of 2 + 0.25 + 0.25.
    assert by_field["code"] == Reason("code", pytest.approx(2 / 2.5), "B", "A", "different")  # type: ignore[arg-type]
    assert by_field["amount"].direction == "below"
    assert by_field["hour"].direction == "below"
    assert v.reasons[0].field == "code"
    assert v.anomalous
    assert sum(r.share for r in v.reasons) == pytest.approx(1.0)


def test_unseen_category_is_always_a_reason() -> None:
    batch = score_columns(MODEL, {"amount": [_amount(2.5)], "hour": [6.0], "code": ["Z"]})
    [v] = verdicts(MODEL, batch, top=1)
    assert v.cluster == 0
    # Parts: amount 6.25, hour 1, the unseen code 1 (an all-zero block against A). Only the
    # top reason was asked for, yet the unseen code is listed as well.
    assert [r.field for r in v.reasons] == ["amount", "code"]
    code = v.reasons[1]
    assert (code.value, code.typical, code.direction) == ("Z", "A", "unseen")
    assert code.share == pytest.approx(1 / 8.25)
    assert batch.top_reason.tolist() == ["amount"]


def test_unseen_category_alone_is_the_top_reason() -> None:
    batch = score_columns(MODEL, {"amount": [100.0], "hour": [12.0], "code": ["Z"]})
    [v] = verdicts(MODEL, batch, top=0)
    assert [(r.field, r.direction) for r in v.reasons] == [("code", "unseen")]
    assert batch.top_reason.tolist() == ["code"]


def test_the_usual_category_of_a_mixed_cluster_is_not_a_reason() -> None:
    v = _one(MODEL, amount=_amount(4.5), hour=24.0, code="B")
    assert v.cluster == 1
    assert [r.field for r in v.reasons] == ["amount"]
    # The code's part is still in the distance: listed shares sum to less than 1.
    assert v.reasons[0].share == pytest.approx(0.25 / (0.25 + 0.125))


def test_rare_pattern_rows_are_anomalous_with_score_at_least_one() -> None:
    v = _one(MODEL, amount=_amount(-4.0), hour=0.0, code="C")
    assert v.cluster == 2
    assert v.distance < 0.5 == v.threshold
    assert v.rare_pattern
    assert v.anomalous
    assert v.score == 1.0


def test_distance_zero_gives_no_reasons_and_zero_shares() -> None:
    spec = FeatureSpec((NumericField("a"), NumericField("b")), fitted=True)
    model = _model(spec, np.array([[1.0, 2.0]]), _thresholds([1.0], [False]))
    batch = score_columns(model, {"a": [1.0, 3.0], "b": [2.0, 2.0]})
    np.testing.assert_array_equal(batch.shares(), [[0.0, 0.0], [1.0, 0.0]])
    first, second = verdicts(model, batch)
    assert (first.distance, first.reasons) == (0.0, ())
    assert second.reasons == (Reason("a", 1.0, 3.0, 1.0, "above"),)
    assert batch.top_reason.tolist() == ["", "a"]


def test_verdicts_hold_plain_python_types() -> None:
    batch = score_columns(MODEL, {"amount": [5.0, 1e4], "hour": [1.0, 23.0], "code": ["A", "Z"]})
    for v in verdicts(MODEL, batch):
        assert type(v.cluster) is int
        for name in ("distance", "threshold", "score"):
            assert type(getattr(v, name)) is float
        assert type(v.anomalous) is bool
        assert type(v.rare_pattern) is bool
        for r in v.reasons:
            assert type(r.share) is float
            assert type(r.value) in (float, str)
            assert type(r.typical) in (float, str)
        json.dumps(dataclasses.asdict(v), allow_nan=False)


def test_a_single_scalar_row_works() -> None:
    batch = score_columns(MODEL, {"amount": 120.0, "hour": 13.0, "code": "A"})
    assert batch.n_rows == 1
    assert verdicts(MODEL, batch)[0].reasons[0].value in (120.0, 13.0)


def test_empty_batch() -> None:
    batch = score_columns(MODEL, {"amount": [], "hour": [], "code": []})
    assert batch.n_rows == 0
    assert verdicts(MODEL, batch) == []
    assert batch.top_reason.shape == (0,)


def test_missing_field_names_it() -> None:
    with pytest.raises(SpecError, match="hour"):
        score_columns(MODEL, {"amount": [1.0], "code": ["A"]})


def test_a_custom_assigner_is_called_once_and_judged() -> None:
    calls: list[npt.NDArray[np.float64]] = []

    def fake(
        x: npt.NDArray[np.float64], centroids: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        calls.append(x)
        assert centroids is MODEL.centroids
        return np.array([1.0, 0.0]).astype(np.int64), np.array([3.0, 0.25], dtype=np.float32)

    batch = score_columns(
        MODEL, {"amount": [1.0, 2.0], "hour": [1.0, 2.0], "code": ["A", "B"]}, assign=fake
    )
    assert len(calls) == 1
    assert calls[0].shape == (2, 5)
    assert batch.cluster.tolist() == [1, 0]
    np.testing.assert_allclose(batch.score, [2.0, 0.25])
    assert batch.anomalous.tolist() == [True, False]


def _random_columns(rng: np.random.Generator, n: int) -> dict[str, Any]:
    return {
        "amount": rng.lognormal(4.0, 2.0, n) * rng.choice([-1.0, 1.0], n, p=[0.1, 0.9]),
        "hour": rng.uniform(0.0, 24.0, n),
        "code": rng.choice(np.array(["A", "B", "C", "Z"], dtype=object), n),
    }


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40))
@settings(max_examples=40, deadline=None)
def test_batch_properties(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    columns = _random_columns(rng, n)
    batch = score_columns(MODEL, columns)
    x = SPEC.transform(columns).X
    # Distances are the in-process K-Means assignment, judged like training.thresholds.judge.
    clusters, distances = assign(x, MODEL.centroids)
    np.testing.assert_array_equal(batch.cluster, clusters)
    np.testing.assert_allclose(batch.distance, distances, rtol=1e-12, atol=1e-12)
    expected = judge(MODEL.thresholds, clusters, distances)
    np.testing.assert_allclose(batch.score, expected.score, rtol=1e-12)
    np.testing.assert_array_equal(batch.anomalous, expected.anomalous)
    # Field parts add up to the squared distance, shares to 1.
    np.testing.assert_allclose(
        batch.field_distance.sum(axis=1), batch.distance**2, rtol=1e-9, atol=1e-9
    )
    np.testing.assert_allclose(batch.shares().sum(axis=1), 1.0)
    found = verdicts(MODEL, batch, top=3)
    for i, v in enumerate(found):
        assert len([r for r in v.reasons if r.direction != "unseen"]) <= 3
        shares = [r.share for r in v.reasons]
        assert shares == sorted(shares, reverse=True)
        assert sum(shares) <= 1.0 + 1e-12
        assert (columns["code"][i] == "Z") == any(r.direction == "unseen" for r in v.reasons)
        assert batch.top_reason[i] == (v.reasons[0].field if v.reasons else "")
    # The same rows one at a time give the same verdicts.
    for i, v in enumerate(found):
        row = {name: values[i : i + 1] for name, values in columns.items()}
        [alone] = verdicts(MODEL, score_columns(MODEL, row), top=3)
        _assert_same(alone, v)


def _assert_same(a: Verdict, b: Verdict) -> None:
    assert (a.cluster, a.anomalous, a.rare_pattern) == (b.cluster, b.anomalous, b.rare_pattern)
    assert a.distance == pytest.approx(b.distance, rel=1e-12)
    assert a.score == pytest.approx(b.score, rel=1e-12)
    assert [(r.field, r.value, r.typical, r.direction) for r in a.reasons] == [
        (r.field, r.value, r.typical, r.direction) for r in b.reasons
    ]
    assert [r.share for r in a.reasons] == pytest.approx([r.share for r in b.reasons])


def test_numeric_only_reasons_cover_the_whole_distance() -> None:
    rng = np.random.default_rng(3)
    spec = FeatureSpec(tuple(NumericField(f"f{j}") for j in range(4)), fitted=True)
    centroids = rng.normal(size=(5, 4))
    model = _model(spec, centroids, _thresholds([1.0] * 5, [False] * 5))
    batch = score_columns(model, {f"f{j}": rng.normal(size=50) for j in range(4)})
    for v in verdicts(model, batch, top=4):
        assert sum(r.share for r in v.reasons) == pytest.approx(1.0)


def test_verdicts_need_the_batch_model() -> None:
    batch = score_columns(MODEL, {"amount": [1.0], "hour": [1.0], "code": ["A"]})
    with pytest.raises(ValueError, match="another model"):
        verdicts(_model(), batch)


def _bundle(centroids: npt.NDArray[np.float32]) -> Bundle:
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        model_version="m1",
        created_at="2026-01-01T00:00:00+00:00",
        k=3,
        feature_dim=SPEC.feature_dim,
        feature_spec=SPEC.to_dict(),
        hyperparameters={"k": "3"},
        metrics={},
        source={"kind": "local"},
        data_fingerprint={"rows": 10},
        cluster_shares=[0.5, 0.498, 0.002],
    )
    sample = CalibrationSample(
        clusters=np.zeros(3, dtype=np.int32), distances=np.ones(3, dtype=np.float32)
    )
    return Bundle(manifest, centroids, _thresholds([1.0, 1.5, 0.5], [False, False, True]), sample)


def test_from_bundle() -> None:
    model = ScoringModel.from_bundle(_bundle(CENTROIDS.astype(np.float32)))
    assert (model.model_version, model.thresholds_version, model.k) == ("m1", 2, 3)
    assert model.centroids.dtype == np.float64
    assert model.typical[0]["hour"] == 12.0
    assert model.typical[1]["code"] == "B"
    assert model.typical[2]["code"] == "C"
    batch = score_columns(model, {"amount": [100.0], "hour": [12.0], "code": ["A"]})
    assert isinstance(batch, ScoredBatch)
    assert batch.distance[0] == pytest.approx(0.0, abs=1e-6)


def test_inconsistent_models_are_rejected() -> None:
    with pytest.raises(BundleError, match="feature spec has 5 columns"):
        ScoringModel("m1", 2, SPEC, np.zeros((3, 4)), MODEL.thresholds, MODEL.typical)
    with pytest.raises(BundleError, match="3 centroids but 2 thresholds"):
        _model(thresholds=_thresholds([1.0, 1.0], [False, False]))
    with pytest.raises(BundleError, match="not fitted"):
        _model(spec=FeatureSpec(SPEC.fields))


@pytest.mark.parametrize(
    ("clusters", "distances", "message"),
    [
        ([0], [1.0, 1.0], "1 clusters and 2 distances for 2 rows"),
        ([0, 3], [1.0, 1.0], "cluster 3, outside 0..2"),
        ([0, -1], [1.0, 1.0], "cluster -1"),
        ([0, 1], [1.0, np.nan], "non-finite"),
        ([0, 1], [1.0, -1.0], "negative"),
    ],
)
def test_a_misbehaving_assigner_is_named(
    clusters: list[int], distances: list[float], message: str
) -> None:
    def bad(
        _x: npt.NDArray[np.float64], _centroids: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        return np.array(clusters, dtype=np.int64), np.array(distances)

    columns = {"amount": [1.0, 2.0], "hour": [1.0, 2.0], "code": ["A", "B"]}
    with pytest.raises(ValueError, match=message):
        score_columns(MODEL, columns, assign=bad)
