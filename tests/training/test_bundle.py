"""Manifest, calibration sample and bundle validation."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import fields, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from tests.factories import make_thresholds
from training.bundle import (
    SCHEMA_VERSION,
    Bundle,
    CalibrationSample,
    Manifest,
    load_json,
)
from training.errors import BundleError
from training.features import CategoricalField, FeatureSpec, NumericField
from training.thresholds import Thresholds

K, DIM = 3, 4
VERSION = "20261128T004040Z-1a2b3c"


def feature_spec() -> FeatureSpec:
    """A fitted spec with one numeric field and a 3-category one-hot field: 4 columns."""
    return FeatureSpec(
        fields=(
            NumericField("amount", transform="log1p", scale="robust", center=1.5, spread=2.0),
            CategoricalField("tran_code", categories=("a", "b", "c")),
        ),
        fitted=True,
    )


def manifest(**overrides: Any) -> Manifest:
    """A valid manifest for a k=3, 4-column model, with fields replaced by ``overrides``."""
    values: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "model_version": VERSION,
        "created_at": "2026-11-28T00:40:40+00:00",
        "k": K,
        "feature_dim": DIM,
        "feature_spec": feature_spec().to_dict(),
        "hyperparameters": {"k": "3", "feature_dim": "4", "init_method": "kmeans++"},
        "metrics": {"train:msd": 1.25, "test:msd": 1.5},
        "source": {"kind": "local"},
        "data_fingerprint": {"file": "t.csv", "rows": 100, "sha256": "ab" * 32},
        "cluster_shares": [0.5, 0.25, 0.25],
        "tags": {"team": "fraud"},
        "label_report": {"overall": {"roc_auc": 0.9, "count": 20}},
        "tuning": None,
    }
    values.update(overrides)
    return Manifest(**values)


def thresholds(**overrides: Any) -> Thresholds:
    """Valid thresholds for the manifest's model."""
    return make_thresholds(VERSION, overrides.pop("k", K), **overrides)


def sample(n: int = 6, *, labels: bool = True, training: int = 0) -> CalibrationSample:
    """A small calibration sample over clusters 0..K-1 (with ``training`` training rows)."""
    return CalibrationSample(
        clusters=(np.arange(n) % K).astype(np.int32),
        distances=np.linspace(0.0, 3.0, n).astype(np.float32),
        labels=(np.arange(n) % 2).astype(np.int8) if labels else None,
        training_clusters=(np.arange(training) % K).astype(np.int32) if training else None,
        training_distances=np.linspace(1.0, 2.0, training).astype(np.float32) if training else None,
    )


def centroids() -> npt.NDArray[np.float32]:
    return np.arange(K * DIM, dtype=np.float32).reshape(K, DIM)


# -- Manifest -------------------------------------------------------------------------------


def test_manifest_round_trips_through_json_with_stable_key_order() -> None:
    m = manifest()
    data = m.to_dict()
    assert list(data) == [f.name for f in fields(Manifest)]
    text = json.dumps(data, allow_nan=False)
    assert Manifest.from_dict(json.loads(text)) == m
    assert Manifest.from_json(m.to_json()) == m
    assert m.to_json() == manifest().to_json()
    assert m.to_json().endswith("}\n")


def test_optional_keys_may_be_absent() -> None:
    data = manifest().to_dict()
    for key in ("tags", "label_report", "tuning"):
        del data[key]
    loaded = Manifest.from_dict(data)
    assert loaded.tags == {}
    assert loaded.label_report is None


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_unknown_schema_version_is_rejected_naming_the_file(version: Any) -> None:
    data = manifest().to_dict() | {"schema_version": version}
    with pytest.raises(BundleError, match=r"^models/x/manifest.json: .*schema version"):
        Manifest.from_dict(data, source="models/x/manifest.json")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"k": 2}, "'cluster_shares' has 3 entries for k=2"),
        ({"k": "3"}, "'k' must be an integer"),
        ({"k": True}, "'k' must be an integer"),
        ({"feature_dim": 5}, "feature_dim is 5 but the feature spec produces 4 columns"),
        ({"feature_dim": 0}, "'feature_dim' must be an integer >= 1"),
        ({"cluster_shares": [0.5, 0.25, 0.2]}, "sum to"),
        ({"cluster_shares": [0.5, 0.5, float("nan")]}, r"cluster_shares\[2\]"),
        ({"cluster_shares": [1.5, -0.25, -0.25]}, r"cluster_shares\[0\]"),
        ({"cluster_shares": "0.5"}, "list of numbers"),
        ({"metrics": {"test:msd": float("inf")}}, "metric 'test:msd' must be a finite number"),
        ({"metrics": {"test:msd": "1.0"}}, "metric 'test:msd'"),
        ({"hyperparameters": {"k": 3}}, "'hyperparameters' entry 'k'"),
        ({"source": ["local"]}, "'source' must be an object"),
        ({"tags": {"team": None}}, "'tags' entry 'team'"),
        ({"model_version": "../evil"}, "model_version '../evil'"),
        ({"model_version": "a/b"}, "model_version 'a/b'"),
        ({"model_version": ""}, "model_version ''"),
        ({"created_at": 5}, "created_at"),
        ({"data_fingerprint": {"rows": -1}}, "'rows' must be an integer >= 0"),
        ({"data_fingerprint": []}, "'data_fingerprint' must be an object"),
        ({"label_report": {"auc": float("nan")}}, "'label_report' is not JSON-serialisable"),
        ({"tuning": {"best": np.float32(1.0)}}, "'tuning' is not JSON-serialisable"),
        ({"tuning": "fast"}, "'tuning' must be an object or null"),
        ({"feature_spec": {"fields": "nope"}}, "invalid feature_spec"),
        ({"feature_spec": replace(feature_spec(), fitted=False).to_dict()}, "not fitted"),
    ],
)
def test_bad_manifest_content_is_rejected(change: dict[str, Any], match: str) -> None:
    with pytest.raises(BundleError, match=match):
        manifest(**change)
    data = manifest().to_dict() | change
    with pytest.raises(BundleError, match=r"^m.json: "):
        Manifest.from_dict(data, source="m.json")


def test_missing_and_unknown_keys_are_named() -> None:
    data = manifest().to_dict()
    del data["metrics"]
    with pytest.raises(BundleError, match=r"m.json: missing manifest key.*metrics"):
        Manifest.from_dict(data, source="m.json")
    with pytest.raises(BundleError, match=r"m.json: unknown manifest key.*colour"):
        Manifest.from_dict(manifest().to_dict() | {"colour": "red"}, source="m.json")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b'{"schema_version": 1,', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "a manifest must be a JSON object"),
    ],
)
def test_manifest_json_that_is_not_a_manifest(text: bytes, match: str) -> None:
    with pytest.raises(BundleError, match=f"^m.json: {match}"):
        Manifest.from_json(text, source="m.json")


def test_load_json_names_line_and_column() -> None:
    with pytest.raises(BundleError, match=r"f.json: not valid JSON .*line 2 column 1"):
        load_json('{"a": 1,\n}', source="f.json")


# -- CalibrationSample ----------------------------------------------------------------------


@pytest.mark.parametrize("labels", [True, False])
def test_calibration_sample_round_trip(labels: bool) -> None:
    original = sample(labels=labels)
    data = original.to_npz_bytes()
    loaded = CalibrationSample.from_npz_bytes(data)
    np.testing.assert_array_equal(loaded.clusters, original.clusters)
    np.testing.assert_array_equal(loaded.distances, original.distances)
    assert loaded.clusters.dtype == np.int32
    assert loaded.distances.dtype == np.float32
    if labels:
        assert loaded.labels is not None
        assert original.labels is not None
        np.testing.assert_array_equal(loaded.labels, original.labels)
    else:
        assert loaded.labels is None
    assert data == sample(labels=labels).to_npz_bytes()  # deterministic bytes


def test_training_rows_round_trip_and_join_the_rows_thresholds_are_fitted_on() -> None:
    original = sample(n=6, training=9)
    loaded = CalibrationSample.from_npz_bytes(original.to_npz_bytes())
    assert (loaded.n, loaded.training_rows) == (6, 9)
    assert loaded.training_clusters is not None
    assert loaded.training_distances is not None
    assert loaded.training_clusters.dtype == np.int32
    assert loaded.training_distances.dtype == np.float32
    clusters, distances = loaded.calibration_rows()
    np.testing.assert_array_equal(clusters, np.r_[np.arange(6) % K, np.arange(9) % K])
    np.testing.assert_array_equal(
        distances, np.r_[original.distances, original.training_distances].astype(np.float64)
    )
    assert clusters.dtype == np.int64
    assert distances.dtype == np.float64


def test_a_sample_from_before_training_rows_were_kept_still_loads() -> None:
    # calibration.npz as older versions wrote it: held-out arrays only.
    data = npz(clusters=np.array([0, 2], np.int32), distances=np.array([1, 2], np.float32))
    loaded = CalibrationSample.from_npz_bytes(data)
    assert loaded.training_rows == 0
    assert loaded.max_cluster() == 2
    clusters, distances = loaded.calibration_rows()
    np.testing.assert_array_equal(clusters, [0, 2])
    np.testing.assert_array_equal(distances, [1.0, 2.0])


def test_empty_calibration_sample_round_trips() -> None:
    empty = CalibrationSample(np.zeros(0, np.int32), np.zeros(0, np.float32))
    assert CalibrationSample.from_npz_bytes(empty.to_npz_bytes()).n == 0


def test_every_truncation_of_calibration_npz_is_a_bundle_error() -> None:
    data = sample().to_npz_bytes()
    for end in range(len(data)):
        with pytest.raises(BundleError, match=r"^cal.npz: "):
            CalibrationSample.from_npz_bytes(data[:end], source="cal.npz")


def test_every_flipped_byte_of_calibration_npz_loads_or_is_a_bundle_error() -> None:
    data = sample().to_npz_bytes()
    failures = 0
    for i in range(len(data)):
        corrupt = bytearray(data)
        corrupt[i] ^= 0xFF
        try:
            CalibrationSample.from_npz_bytes(bytes(corrupt))
        except BundleError:
            failures += 1
    assert failures > len(data) // 2


def npz(**arrays: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def with_training(**training: npt.NDArray[Any]) -> bytes:
    """calibration.npz bytes: two valid held-out rows and the given training arrays."""
    return npz(clusters=np.zeros(2, np.int32), distances=np.zeros(2, np.float32), **training)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"not a zip at all", "corrupt or truncated"),
        (npz(clusters=np.zeros(2, np.int32)), "missing array.*distances"),
        (npz(clusters=np.zeros(2, np.int64), distances=np.zeros(2, np.float32)), "int32"),
        (npz(clusters=np.zeros(2, np.int32), distances=np.zeros(3, np.float32)), "3 rows"),
        (
            npz(clusters=np.zeros((2, 1), np.int32), distances=np.zeros(2, np.float32)),
            "1-d int32",
        ),
        (npz(clusters=np.array([0, -1], np.int32), distances=np.zeros(2, np.float32)), "negative"),
        (
            npz(clusters=np.zeros(2, np.int32), distances=np.array([1, np.nan], np.float32)),
            "finite",
        ),
        (
            npz(clusters=np.zeros(2, np.int32), distances=np.array([1, -1], np.float32)),
            ">= 0",
        ),
        (
            with_training(training_clusters=np.zeros(3, np.int32)),
            "'training_clusters' and 'training_distances' come together",
        ),
        (
            with_training(
                training_clusters=np.zeros(3, np.int32), training_distances=np.zeros(4, np.float32)
            ),
            "'training_distances' has 4 rows, 'training_clusters' has 3",
        ),
        (
            with_training(
                training_clusters=np.array([0, -2], np.int32),
                training_distances=np.zeros(2, np.float32),
            ),
            "'training_clusters' has negative cluster ids",
        ),
        (
            with_training(
                training_clusters=np.zeros(1, np.int32),
                training_distances=np.array([np.inf], np.float32),
            ),
            "'training_distances' must be finite",
        ),
        (
            with_training(
                training_clusters=np.zeros(1, np.int64), training_distances=np.zeros(1, np.float32)
            ),
            "'training_clusters' must be a 1-d int32",
        ),
        (
            npz(
                clusters=np.zeros(2, np.int32),
                distances=np.zeros(2, np.float32),
                labels=np.array([0, 2], np.int8),
            ),
            "0 or 1",
        ),
        (
            npz(clusters=np.array([None, 1], dtype=object), distances=np.zeros(2, np.float32)),
            "corrupt or truncated",
        ),
    ],
)
def test_bad_calibration_npz_is_rejected(data: bytes, match: str) -> None:
    with pytest.raises(BundleError, match=f"^cal.npz: .*{match}"):
        CalibrationSample.from_npz_bytes(data, source="cal.npz")


def test_zip_without_npy_members_is_rejected() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(BundleError, match=r"missing array"):
        CalibrationSample.from_npz_bytes(buf.getvalue())


def test_calibration_sample_constructor_validates() -> None:
    with pytest.raises(BundleError, match=r"'distances' must be a 1-d float32"):
        CalibrationSample(np.zeros(2, np.int32), np.zeros(2, np.float64))  # type: ignore[arg-type]


# -- Bundle ---------------------------------------------------------------------------------


def test_valid_bundle() -> None:
    bundle = Bundle(manifest(), centroids(), thresholds(), sample())
    bundle.validate()
    assert bundle.thresholds.k == bundle.manifest.k


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        ({"centroids": np.zeros((K, DIM + 1), np.float32)}, r"shape \(3, 5\).*feature_dim=4"),
        ({"centroids": np.zeros((K + 1, DIM), np.float32)}, r"shape \(4, 4\).*k=3"),
        ({"centroids": np.zeros((K, DIM), np.float64)}, "float32"),
        ({"centroids": np.full((K, DIM), np.nan, np.float32)}, "NaN"),
        ({"thresholds": thresholds(model_version="other-model")}, "belongs to model 'other-model'"),
        ({"thresholds": thresholds(k=K + 1)}, "has 4 clusters, the model has 3"),
        (
            {"calibration": CalibrationSample(np.array([0, K], np.int32), np.ones(2, np.float32))},
            "cluster id 3 but k=3",
        ),
        (
            {
                "calibration": CalibrationSample(
                    np.zeros(2, np.int32),
                    np.ones(2, np.float32),
                    training_clusters=np.array([1, K + 1], np.int32),
                    training_distances=np.ones(2, np.float32),
                )
            },
            "cluster id 4 but k=3",
        ),
    ],
)
def test_inconsistent_bundles_are_rejected(parts: dict[str, Any], match: str) -> None:
    values: dict[str, Any] = {
        "manifest": manifest(),
        "centroids": centroids(),
        "thresholds": thresholds(),
        "calibration": sample(),
    }
    values.update(parts)
    with pytest.raises(BundleError, match=f"model {VERSION}: .*{match}"):
        Bundle(**values)
