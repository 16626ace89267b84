"""The one-row scorer gives the array path's verdict: same cluster, decision and reasons."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.row_scoring import RowScorer
from service.scoring import ScoringModel, Verdict, score_columns, verdicts
from tests.factories import make_thresholds
from training.features import CategoricalField, FeatureSpec, NumericField

SPEC = FeatureSpec(
    (
        NumericField("amount", "log1p", "robust", 4.0, 1.5),
        CategoricalField("code", ("01", "05", "07")),
        NumericField("hour", "none", "standard", 12.0, 6.0),
        CategoricalField("channel", ("pos", "web")),
    ),
    fitted=True,
)


def model(seed: int, k: int = 5, rare: int | None = None) -> ScoringModel:
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(k, SPEC.feature_dim))
    # One-hot blocks of centroids are category shares: non-negative, summing to 1.
    for block in (slice(1, 4), slice(5, 7)):
        shares = rng.dirichlet(np.ones(block.stop - block.start), size=k)
        centroids[:, block] = shares
    flags = np.zeros(k, dtype=bool)
    if rare is not None:
        flags[rare] = True
    return ScoringModel(
        model_version="m1",
        thresholds_version=1,
        spec=SPEC,
        centroids=centroids,
        thresholds=make_thresholds("m1", k, values=rng.uniform(0.5, 3.0, k), rare=flags),
        typical=tuple(SPEC.typical_values(c) for c in centroids),
    )


def array_verdict(m: ScoringModel, row: dict[str, Any], top: int) -> Verdict:
    batch = score_columns(m, {name: [value] * 5 for name, value in row.items()})
    return verdicts(m, batch, top=top)[2]  # a batch of five takes the numpy reasons path


def assert_same(a: Verdict | None, b: Verdict) -> None:
    assert a is not None
    assert a.cluster == b.cluster
    assert math.isclose(a.distance, b.distance, rel_tol=1e-9, abs_tol=1e-12)
    assert (a.anomalous, a.rare_pattern, a.threshold) == (b.anomalous, b.rare_pattern, b.threshold)
    assert math.isclose(a.score, b.score, rel_tol=1e-9, abs_tol=1e-12)
    assert [(r.field, r.direction, r.value, r.typical) for r in a.reasons] == [
        (r.field, r.direction, r.value, r.typical) for r in b.reasons
    ]
    for x, y in zip(a.reasons, b.reasons, strict=True):
        assert math.isclose(x.share, y.share, rel_tol=1e-9, abs_tol=1e-12)


rows = st.fixed_dictionaries(
    {
        "amount": st.floats(-1e6, 1e7, allow_nan=False),
        "code": st.sampled_from(["01", "05", "07", "99"]),
        "hour": st.floats(0, 23),
        "channel": st.sampled_from(["pos", "web", "atm"]),
    }
)


@settings(max_examples=300, deadline=None)
@given(row=rows, seed=st.integers(0, 20), top=st.integers(0, 5))
def test_row_and_array_paths_agree(row: dict[str, Any], seed: int, top: int) -> None:
    m = model(seed, rare=seed % 5 if seed % 3 == 0 else None)
    assert_same(RowScorer(m).score(row, top=top), array_verdict(m, row, top))


def test_unseen_categories_are_always_named() -> None:
    m = model(1)
    row = {"amount": 55.0, "code": "99", "hour": 12.0, "channel": "atm"}
    verdict = RowScorer(m).score(row, top=0)
    assert verdict is not None
    assert {(r.field, r.direction) for r in verdict.reasons} == {
        ("code", "unseen"),
        ("channel", "unseen"),
    }


def test_a_rare_cluster_scores_at_least_one() -> None:
    m = model(2, k=3)
    row = {"amount": 55.0, "code": "01", "hour": 12.0, "channel": "pos"}
    cluster = RowScorer(m).score(row, top=3)
    assert cluster is not None
    rare = model(2, k=3, rare=cluster.cluster)
    verdict = RowScorer(rare).score(row, top=3)
    assert verdict is not None
    assert verdict.anomalous
    assert verdict.rare_pattern
    assert verdict.score >= 1.0


def test_a_value_that_scales_to_infinity_is_left_to_the_array_path() -> None:
    spec = FeatureSpec((NumericField("x", "none", "standard", 0.0, 1e-300),), fitted=True)
    m = ScoringModel(
        model_version="m1",
        thresholds_version=1,
        spec=spec,
        centroids=np.array([[0.0], [1.0]]),
        thresholds=make_thresholds("m1", 2),
        typical=({"x": 0.0}, {"x": 1e-300}),
    )
    assert RowScorer(m).score({"x": 1e300}, top=3) is None


@pytest.mark.parametrize("seed", range(3))
def test_ties_go_to_the_lowest_cluster(seed: int) -> None:
    m = model(seed)
    doubled = ScoringModel(
        model_version="m1",
        thresholds_version=1,
        spec=SPEC,
        centroids=np.vstack([m.centroids[:1], m.centroids[:1]]),
        thresholds=make_thresholds("m1", 2),
        typical=(m.typical[0], m.typical[0]),
    )
    row = {"amount": 10.0, "code": "05", "hour": 3.0, "channel": "web"}
    verdict = RowScorer(doubled).score(row, top=3)
    assert verdict is not None
    assert verdict.cluster == 0
