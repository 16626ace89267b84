"""Feature specs: config parsing, streaming fit, transform, inverse and serialisation."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.data import CsvSchema
from training.errors import SpecError
from training.features import (
    CategoricalField,
    FeatureFitter,
    FeatureSpec,
    NumericField,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "features.json"

SPEC = FeatureSpec(
    (
        NumericField("amount", transform="log1p", scale="robust"),
        CategoricalField("code"),
        NumericField("hour"),
        NumericField("risk", scale="none"),
    )
)


def sample_columns(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "amount": np.round(rng.lognormal(3.0, 1.0, n) * np.where(rng.random(n) < 0.1, -1, 1), 2),
        "code": rng.choice(np.array(["05", "01", "07"], dtype=object), n),
        "hour": rng.integers(0, 24, n).astype(np.float64),
        "risk": rng.random(n),
    }


def fit(spec: FeatureSpec, columns: dict[str, np.ndarray], **kwargs: Any) -> FeatureSpec:
    fitter = FeatureFitter(spec, **kwargs)
    fitter.update(columns)
    return fitter.finish()


def signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


# --- from_config ---------------------------------------------------------------------------


def test_example_spec_file_parses() -> None:
    spec = FeatureSpec.from_config(json.loads(EXAMPLE.read_text()))
    assert spec.fields[0] == NumericField("amount", transform="log1p", scale="robust")
    assert spec.fields[1] == CategoricalField("tran_code")
    assert not spec.fitted
    assert spec.csv_schema().categorical == ("tran_code", "channel")


def test_config_defaults() -> None:
    spec = FeatureSpec.from_config({"fields": [{"name": "x", "type": "numeric"}]})
    assert spec.fields == (NumericField("x", transform="none", scale="standard"),)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ([], "must be an object"),
        ({}, "missing 'fields'"),
        ({"fields": []}, "'fields' is empty"),
        ({"fields": {"name": "a"}}, "'fields' must be a list"),
        ({"fields": [], "feilds": []}, "unknown key 'feilds'; did you mean 'fields'?"),
        ({"fields": ["amount"]}, r"fields\[0\]: expected an object"),
        ({"fields": [{"type": "numeric"}]}, r"fields\[0\]: 'name' must be a non-empty string"),
        ({"fields": [{"name": "a", "type": "text"}]}, r"fields\[0\] \('a'\): unknown type 'text'"),
        ({"fields": [{"name": "a"}]}, r"\('a'\): unknown type None"),
        (
            {"fields": [{"name": "a", "type": "numerc"}]},
            "unknown type 'numerc'.*did you mean 'numeric'",
        ),
        (
            {"fields": [{"name": "a", "type": "numeric", "transform": "log"}]},
            r"\('a'\): unknown transform 'log' \(expected 'none' or 'log1p'\)",
        ),
        (
            {"fields": [{"name": "a", "type": "numeric", "scale": "minmax"}]},
            r"\('a'\): unknown scale 'minmax'",
        ),
        (
            {"fields": [{"name": "a", "type": "numeric", "scal": "robust"}]},
            r"\('a'\): unknown key 'scal' for a numeric field; did you mean 'scale'\?",
        ),
        (
            {"fields": [{"name": "c", "type": "categorical", "transform": "log1p"}]},
            r"\('c'\): unknown key 'transform' for a categorical field",
        ),
        (
            {
                "fields": [
                    {"name": "a", "type": "numeric"},
                    {"name": "b", "type": "numeric"},
                    {"name": "a", "type": "categorical"},
                ]
            },
            r"fields\[2\]: duplicate field name 'a' \(also fields\[0\]\)",
        ),
    ],
)
def test_config_errors_name_the_bad_entry(config: Any, expected: str) -> None:
    with pytest.raises(SpecError, match=expected):
        FeatureSpec.from_config(config)


def test_default_for_schema() -> None:
    spec = FeatureSpec.default_for(CsvSchema(numeric=("a", "b"), categorical=("c",)))
    assert spec.fields == (NumericField("a"), NumericField("b"), CategoricalField("c"))
    assert spec.csv_schema() == CsvSchema(numeric=("a", "b"), categorical=("c",))


def test_fields_validate_themselves() -> None:
    with pytest.raises(SpecError, match="spread must be > 0"):
        NumericField("a", spread=0.0)
    with pytest.raises(SpecError, match="center must be finite"):
        NumericField("a", center=math.inf)
    with pytest.raises(SpecError, match="duplicate category 'x'"):
        CategoricalField("c", ("x", "y", "x"))
    with pytest.raises(SpecError, match="duplicate field name 'a'"):
        FeatureSpec((NumericField("a"), CategoricalField("a")))
    with pytest.raises(SpecError, match="unknown scale 'minmax'"):
        NumericField("a", scale="minmax")  # type: ignore[arg-type]


def test_numpy_scalars_are_stored_as_floats() -> None:
    f = NumericField("a", center=np.float32(1.5), spread=np.int64(2))  # type: ignore[arg-type]
    assert f == NumericField("a", center=1.5, spread=2.0)
    assert type(f.center) is float
    assert type(f.spread) is float


# --- fitting -------------------------------------------------------------------------------


def test_fit_learns_scales_and_sorted_categories() -> None:
    columns = sample_columns(2_000)
    fitted = fit(SPEC, columns)
    assert fitted.fitted
    amount, code, hour, risk = fitted.fields
    assert isinstance(amount, NumericField)
    t = signed_log1p(columns["amount"])
    assert amount.center == pytest.approx(np.median(t), rel=1e-12)
    q25, q75 = np.percentile(t, [25, 75])
    assert amount.spread == pytest.approx(q75 - q25, rel=1e-12)
    assert code == CategoricalField("code", ("01", "05", "07"))
    assert isinstance(hour, NumericField)
    assert hour.center == pytest.approx(columns["hour"].mean(), rel=1e-12)
    assert hour.spread == pytest.approx(columns["hour"].std(), rel=1e-12)
    assert risk == NumericField("risk", scale="none")


def test_constant_column_gets_spread_one() -> None:
    spec = FeatureSpec((NumericField("a"), NumericField("b", scale="robust")))
    fitted = fit(spec, {"a": np.full(999, 0.1), "b": np.full(999, -4.0)})
    assert fitted.fields == (
        NumericField("a", center=0.1, spread=1.0),
        NumericField("b", scale="robust", center=-4.0, spread=1.0),
    )


def test_reservoir_estimates_the_median_of_a_long_stream() -> None:
    spec = FeatureSpec((NumericField("x", scale="robust"),))
    fitter = FeatureFitter(spec, reservoir_size=2_000, seed=1)
    rng = np.random.default_rng(7)
    for _ in range(20):
        fitter.update({"x": rng.normal(10.0, 2.0, 5_000)})
    (x,) = fitter.finish().fields
    assert isinstance(x, NumericField)
    assert x.center == pytest.approx(10.0, abs=0.15)
    assert x.spread == pytest.approx(2.0 * 1.349, rel=0.08)  # IQR of a normal


def test_fit_errors() -> None:
    with pytest.raises(SpecError, match="zero rows"):
        FeatureFitter(SPEC).finish()
    with pytest.raises(SpecError, match="field 'hour' is missing"):
        FeatureFitter(SPEC).update({"amount": [1.0], "code": ["a"], "risk": [0.0]})
    with pytest.raises(SpecError, match="field 'risk' has 1 values, expected 2"):
        FeatureFitter(SPEC).update(
            {"amount": [1.0, 2.0], "code": ["a", "b"], "hour": [1.0, 2.0], "risk": [0.0]}
        )
    with pytest.raises(SpecError, match="field 'hour': values must be finite"):
        FeatureFitter(SPEC).update(
            {"amount": [1.0], "code": ["a"], "hour": [np.nan], "risk": [0.0]}
        )
    with pytest.raises(SpecError, match="field 'amount': values must be numbers"):
        FeatureFitter(SPEC).update({"amount": ["x"], "code": ["a"], "hour": [1.0], "risk": [0.0]})
    with pytest.raises(SpecError, match="more than 3 distinct categories"):
        FeatureFitter(FeatureSpec((CategoricalField("id"),)), max_categories=3).update(
            {"id": np.array(["a", "b", "c", "d"], dtype=object)}
        )


def test_fit_ignores_extra_columns_and_empty_chunks() -> None:
    columns = sample_columns(100)
    fitter = FeatureFitter(SPEC)
    fitter.update({name: values[:0] for name, values in columns.items()})
    fitter.update({**columns, "is_fraud": np.zeros(100)})
    assert fitter.finish() == fit(SPEC, columns)


# --- transform -----------------------------------------------------------------------------


def test_transform_values_and_layout() -> None:
    columns = sample_columns(500)
    fitted = fit(SPEC, columns)
    assert fitted.feature_dim == 6
    assert fitted.column_names == ["amount", "code=01", "code=05", "code=07", "hour", "risk"]
    assert fitted.field_slices == {
        "amount": slice(0, 1),
        "code": slice(1, 4),
        "hour": slice(4, 5),
        "risk": slice(5, 6),
    }
    out = fitted.transform(columns)
    amount, _, hour, _ = fitted.fields
    assert isinstance(amount, NumericField)
    assert isinstance(hour, NumericField)
    assert out.X.shape == (500, 6)
    assert out.X.dtype == np.float64
    np.testing.assert_allclose(
        out.X[:, 0], (signed_log1p(columns["amount"]) - amount.center) / amount.spread
    )
    np.testing.assert_allclose(out.X[:, 4], (columns["hour"] - hour.center) / hour.spread)
    np.testing.assert_array_equal(out.X[:, 5], columns["risk"])
    np.testing.assert_array_equal(out.X[:, 1], columns["code"] == "01")
    assert set(out.unseen) == {"code"}
    assert not out.unseen["code"].any()


def test_unseen_category_is_flagged_with_an_empty_block() -> None:
    fitted = fit(SPEC, sample_columns(100))
    columns = {"amount": [5.0, 5.0], "code": ["07", "99"], "hour": [3.0, 3.0], "risk": [0.1, 0.1]}
    out = fitted.transform(columns)
    np.testing.assert_array_equal(out.X[:, 1:4], [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(out.unseen["code"], [False, True])


def test_non_text_categories_compare_as_text() -> None:
    fitted = fit(FeatureSpec((CategoricalField("c"),)), {"c": np.array(["1", "2"], dtype=object)})
    out = fitted.transform({"c": [2, 3]})
    np.testing.assert_array_equal(out.X, [[0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(out.unseen["c"], [False, True])


def test_single_row_matches_the_batch_exactly() -> None:
    columns = sample_columns(40, seed=3)
    columns["code"][[5, 17]] = "new"
    fitted = fit(SPEC, sample_columns(300))
    batch = fitted.transform(columns)
    for i in range(40):
        one = fitted.transform({name: values[i : i + 1] for name, values in columns.items()})
        np.testing.assert_array_equal(one.X[0], batch.X[i])
        assert one.unseen["code"][0] == batch.unseen["code"][i]
    scalars = fitted.transform({name: values[17] for name, values in columns.items()})
    np.testing.assert_array_equal(scalars.X[0], batch.X[17])


def test_transform_errors() -> None:
    fitted = fit(SPEC, sample_columns(50))
    ok = {"amount": [1.0], "code": ["01"], "hour": [2.0], "risk": [0.5]}
    with pytest.raises(SpecError, match="not fitted"):
        SPEC.transform(ok)
    with pytest.raises(SpecError, match="field 'code' is missing"):
        fitted.transform({k: v for k, v in ok.items() if k != "code"})
    with pytest.raises(SpecError, match="field 'hour' has 2 values, expected 1"):
        fitted.transform({**ok, "hour": [1.0, 2.0]})
    with pytest.raises(SpecError, match="field 'risk': value inf at index 0 is not finite"):
        fitted.transform({**ok, "risk": [np.inf]})
    with pytest.raises(SpecError, match="field 'hour': values must be numbers"):
        fitted.transform({**ok, "hour": ["noon"]})


def test_transform_ignores_extra_columns() -> None:
    columns = sample_columns(10)
    fitted = fit(SPEC, columns)
    plain = fitted.transform(columns).X
    np.testing.assert_array_equal(fitted.transform({**columns, "note": ["x"] * 10}).X, plain)


# --- inverse and typical values ------------------------------------------------------------


def test_typical_values_of_a_transformed_row_are_the_raw_row() -> None:
    columns = sample_columns(200)
    fitted = fit(SPEC, columns)
    row = fitted.transform({name: values[:1] for name, values in columns.items()}).X[0]
    typical = fitted.typical_values(row.astype(np.float32))
    assert typical["code"] == columns["code"][0]
    assert typical["amount"] == pytest.approx(columns["amount"][0], rel=1e-5)
    assert typical["hour"] == pytest.approx(columns["hour"][0], rel=1e-5, abs=1e-5)


def test_typical_category_is_the_heaviest() -> None:
    fitted = fit(SPEC, sample_columns(100))
    centroid = np.zeros(fitted.feature_dim)
    centroid[1:4] = [0.2, 0.7, 0.1]
    assert fitted.typical_values(centroid)["code"] == "05"


def test_inverse_errors() -> None:
    fitted = fit(SPEC, sample_columns(100))
    with pytest.raises(SpecError, match="centroid has 2 values, the feature spec 6"):
        fitted.typical_values(np.zeros(2))
    with pytest.raises(SpecError, match="'code' is categorical"):
        fitted.raw_numeric("code", 0.0)
    with pytest.raises(SpecError, match="no field 'hours'; did you mean 'hour'"):
        fitted.raw_numeric("hours", 0.0)


def test_raw_numeric_of_extreme_values_does_not_warn() -> None:
    fitted = fit(SPEC, sample_columns(100))
    assert fitted.raw_numeric("amount", 1e6) == math.inf
    np.testing.assert_array_equal(fitted.raw_numeric("amount", np.array([-1e6])), [-math.inf])


# --- to_dict / from_dict -------------------------------------------------------------------


def test_from_dict_errors_name_the_bad_content() -> None:
    good = fit(SPEC, sample_columns(50)).to_dict()
    cases: list[tuple[Any, str]] = [
        ("spec", "must be an object"),
        ({**good, "version": 2}, "unknown key 'version'"),
        ({"fields": good["fields"]}, "'fitted' must be true or false"),
        ({**good, "fields": "x"}, "'fields' must be a list"),
        ({**good, "fields": [{"type": "numeric", "name": "a"}]}, r"fields\[0\]: missing key"),
        ({**good, "fields": [{**good["fields"][0], "type": "date"}]}, "unknown type 'date'"),
        ({**good, "fields": [{**good["fields"][0], "spread": -1.0}]}, "spread must be > 0"),
        ({**good, "fields": [{**good["fields"][0], "center": "0"}]}, "center must be a number"),
        ({**good, "fields": [{**good["fields"][0], "extra": 1}]}, "unknown key 'extra'"),
        ({**good, "fields": [{**good["fields"][1], "categories": "ab"}]}, "must be a list"),
        ({**good, "fields": [{**good["fields"][1], "categories": [""]}]}, "non-empty text"),
        ({**good, "fields": [good["fields"][0], good["fields"][0]]}, "duplicate field name"),
    ]
    for data, expected in cases:
        with pytest.raises(SpecError, match=expected):
            FeatureSpec.from_dict(data)


names = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12
).filter(lambda s: bool(s.strip()))
finite = st.floats(allow_nan=False, allow_infinity=False)
numeric_fields = st.builds(
    NumericField,
    name=names,
    transform=st.sampled_from(["none", "log1p"]),
    scale=st.sampled_from(["standard", "robust", "none"]),
    center=finite,
    spread=st.floats(min_value=5e-324, allow_infinity=False),
)
categorical_fields = st.builds(
    CategoricalField,
    name=names,
    categories=st.lists(names, unique=True, max_size=6).map(lambda c: tuple(sorted(c))),
)
specs = st.builds(
    FeatureSpec,
    fields=st.lists(
        st.one_of(numeric_fields, categorical_fields),
        min_size=1,
        max_size=6,
        unique_by=lambda f: f.name,
    ).map(tuple),
    fitted=st.booleans(),
)


@settings(max_examples=40, deadline=None)
@given(specs)
def test_to_dict_round_trips_exactly_through_json(spec: FeatureSpec) -> None:
    stored = json.loads(json.dumps(spec.to_dict()))
    again = FeatureSpec.from_dict(stored)
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    assert again.column_names == spec.column_names


# --- properties ----------------------------------------------------------------------------

raw_values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(raw_values, min_size=1, max_size=30),
    st.sampled_from(["none", "log1p"]),
    st.sampled_from(["standard", "robust", "none"]),
)
def test_numeric_inverse_recovers_raw_values(
    values: list[float], transform: str, scale: str
) -> None:
    spec = FeatureSpec((NumericField("x", transform=transform, scale=scale),))  # type: ignore[arg-type]
    fitted = fit(spec, {"x": np.array(values)})
    X = fitted.transform({"x": values}).X
    back = fitted.raw_numeric("x", X[:, 0])
    np.testing.assert_allclose(back, values, rtol=1e-9, atol=1e-9)
    for row, value in zip(X, values, strict=True):
        assert fitted.typical_values(row)["x"] == pytest.approx(value, rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from("abcd"), min_size=1, max_size=20),
    st.lists(st.sampled_from("abcdxyz"), min_size=1, max_size=20),
)
def test_one_hot_sums_to_one_for_seen_and_flags_unseen(train: list[str], rows: list[str]) -> None:
    fitted = fit(FeatureSpec((CategoricalField("c"),)), {"c": np.array(train, dtype=object)})
    out = fitted.transform({"c": np.array(rows, dtype=object)})
    known = set(train)
    for value, x, unseen in zip(rows, out.X, out.unseen["c"], strict=True):
        assert set(np.unique(x)) <= {0.0, 1.0}
        if value in known:
            assert x.sum() == 1.0
            assert fitted.column_names[int(np.argmax(x))] == f"c={value}"
            assert not unseen
        else:
            assert x.sum() == 0.0
            assert unseen


@st.composite
def chunkings(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], list[int]]:
    n = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 1_000))
    columns = sample_columns(n, seed)
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))
    return columns, [0, *cuts, n]


@settings(max_examples=40, deadline=None)
@given(chunkings(), st.integers(1, 400))
def test_streaming_fit_equals_one_shot_fit(
    case: tuple[dict[str, np.ndarray], list[int]], reservoir: int
) -> None:
    columns, bounds = case
    one_shot = fit(SPEC, columns, reservoir_size=reservoir, seed=9)
    fitter = FeatureFitter(SPEC, reservoir_size=reservoir, seed=9)
    for start, stop in itertools.pairwise(bounds):
        fitter.update({name: values[start:stop] for name, values in columns.items()})
    streamed = fitter.finish()
    for a, b in zip(streamed.fields, one_shot.fields, strict=True):
        if isinstance(a, NumericField) and a.scale == "standard":
            assert isinstance(b, NumericField)
            assert a.center == pytest.approx(b.center, rel=1e-12, abs=1e-12)
            assert a.spread == pytest.approx(b.spread, rel=1e-9)
        else:
            # Robust scales use a reservoir drawn row by row, independent of chunking.
            assert a == b
