"""Re-thresholding the active model without retraining (``training.recalibration``).

A tiny real model is trained once per module (2,000 demo rows, k=4); each test works on its
own copy of that registry. Reports are checked against counts and metrics computed here
independently (brute-force nearest centroids, scikit-learn for precision/recall/PR-AUC).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.metrics import average_precision_score, precision_score, recall_score

from training.bundle import CalibrationSample
from training.data import iter_chunks
from training.demo import DEMO_FEATURES, LABEL_COLUMN, DemoConfig, generate, write_csv
from training.errors import DataError, RegistryError
from training.features import FeatureSpec
from training.pipeline import TrainRequest, train
from training.recalibration import recalibrate
from training.registry import ActivePointer, Registry, open_registry
from training.thresholds import ThresholdPolicy, Thresholds, judge

ROWS, K = 2_000, 4
QUANTILE = ThresholdPolicy(kind="quantile", value=0.9)


@dataclass(frozen=True)
class Trained:
    """The module's trained registries (copied per test) and its data file."""

    labelled: Path  # trained with labels: the stored sample has them
    unlabelled: Path  # trained without: the stored sample has none
    csv: Path
    model_version: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    base = tmp_path_factory.mktemp("recalibration")
    csv = base / "demo.csv"
    write_csv(generate(DemoConfig(rows=ROWS, seed=3)), csv)
    labelled, unlabelled = base / "labelled", base / "unlabelled"
    request = TrainRequest(
        data=csv, label_column=LABEL_COLUMN, features=DEMO_FEATURES, k=K, chunk_rows=1_000
    )
    outcome = train(request, open_registry(labelled), progress=False)
    train(
        TrainRequest(data=csv, features=DEMO_FEATURES, k=K, chunk_rows=1_000),
        open_registry(unlabelled),
        progress=False,
    )
    return Trained(labelled, unlabelled, csv, outcome.manifest.model_version)


@pytest.fixture
def registry(trained: Trained, tmp_path: Path) -> Registry:
    shutil.copytree(trained.labelled, tmp_path / "registry")
    return open_registry(tmp_path / "registry")


def snapshot(registry: Registry) -> dict[str, bytes]:
    return {key: registry.storage.read(key) for key in registry.storage.list("")}


def pointer(registry: Registry) -> ActivePointer:
    active = registry.active()
    assert active is not None
    return active


# -- independent reference computations ------------------------------------------------------


def alerts(t: Thresholds, clusters: npt.NDArray[Any], distances: npt.NDArray[Any]) -> Any:
    return (distances > t.values[clusters]) | t.rare[clusters]


def scores(t: Thresholds, clusters: npt.NDArray[Any], distances: npt.NDArray[Any]) -> Any:
    score = distances / t.values[clusters]
    return np.where(t.rare[clusters], np.maximum(score, 1.0), score)


def score_csv(registry: Registry, path: Path) -> tuple[Any, Any, Any]:
    """Clusters, distances and labels of a CSV under the active model, by brute force."""
    manifest = registry.load_manifest(pointer(registry).model_version)
    centroids = registry.load_centroids(manifest.model_version).astype(np.float64)
    spec = FeatureSpec.from_dict(manifest.feature_spec)
    xs, ys = [], []
    for chunk in iter_chunks(path, spec.csv_schema(), extra_numeric=(LABEL_COLUMN,)):
        xs.append(spec.transform(chunk.columns).X)
        ys.append(chunk.columns[LABEL_COLUMN] == 1)
    x = np.concatenate(xs).astype(np.float64)
    squared = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    clusters = squared.argmin(axis=1)
    return clusters, np.sqrt(squared.min(axis=1)), np.concatenate(ys)


def check_report(
    report: dict[str, Any],
    old: Thresholds,
    new: Thresholds,
    clusters: npt.NDArray[Any],
    distances: npt.NDArray[Any],
    labels: npt.NDArray[Any] | None,
) -> None:
    """The report against counts, rates and label metrics computed here."""
    n = clusters.size
    slack = 2.0 / n  # rows within float rounding of a threshold may go either way
    assert report["overall"]["rows"] == n
    before, after = alerts(old, clusters, distances), alerts(new, clusters, distances)
    assert report["overall"]["old_alert_rate"] == pytest.approx(before.mean(), abs=slack)
    assert report["overall"]["new_alert_rate"] == pytest.approx(after.mean(), abs=slack)
    assert [c["cluster"] for c in report["clusters"]] == list(range(K))
    counts = np.bincount(clusters, minlength=K)
    assert [c["count"] for c in report["clusters"]] == counts.tolist()
    for c, row in enumerate(report["clusters"]):
        member = clusters == c
        assert row["old_threshold"] == float(old.values[c])
        assert row["new_threshold"] == float(new.values[c])
        assert row["rare_pattern"] is bool(new.rare[c])
        expected_old = before[member].mean() if counts[c] else 0.0
        expected_new = after[member].mean() if counts[c] else 0.0
        tolerance = 2.0 / max(counts[c], 1)
        assert row["old_alert_rate"] == pytest.approx(expected_old, abs=tolerance)
        assert row["new_alert_rate"] == pytest.approx(expected_new, abs=tolerance)
    # The overall rate is the per-cluster rates weighted by count.
    weighted = sum(r["new_alert_rate"] * r["count"] for r in report["clusters"]) / n
    assert report["overall"]["new_alert_rate"] == pytest.approx(weighted, abs=1e-12)
    if labels is None:
        assert "old" not in report["overall"]
        assert "new" not in report["overall"]
        return
    for name, t, flagged in (("old", old, before), ("new", new, after)):
        metrics = report["overall"][name]
        assert metrics["precision"] == pytest.approx(
            precision_score(labels, flagged, zero_division=0), abs=slack * 10
        )
        assert metrics["recall"] == pytest.approx(recall_score(labels, flagged), abs=slack * 10)
        assert metrics["pr_auc"] == pytest.approx(
            average_precision_score(labels, scores(t, clusters, distances)), abs=1e-3
        )


# -- preconditions --------------------------------------------------------------------------


def test_without_an_active_model_nothing_can_be_recalibrated(
    registry: Registry, tmp_path: Path
) -> None:
    with pytest.raises(RegistryError, match=r"no active model to recalibrate"):
        recalibrate(open_registry(tmp_path / "empty"), QUANTILE)
    assert not (tmp_path / "empty").exists()
    registry.storage.delete("ACTIVE")  # a model is stored, but none is active
    before = snapshot(registry)
    with pytest.raises(RegistryError, match=r"no active model to recalibrate"):
        recalibrate(registry, QUANTILE)
    assert snapshot(registry) == before


def test_a_label_column_needs_a_data_file(registry: Registry) -> None:
    before = snapshot(registry)
    with pytest.raises(DataError, match=r"label_column needs a data file"):
        recalibrate(registry, QUANTILE, label_column=LABEL_COLUMN)
    assert snapshot(registry) == before


# -- dry run and the real thing -------------------------------------------------------------


def test_a_dry_run_reports_but_writes_and_activates_nothing(
    registry: Registry, trained: Trained
) -> None:
    before = snapshot(registry)
    outcome = recalibrate(registry, QUANTILE, dry_run=True, by="sha256:ops")
    assert snapshot(registry) == before
    assert outcome.activated is None
    assert registry.list_thresholds(trained.model_version) == [1]
    assert pointer(registry) == ActivePointer(trained.model_version, 1)
    report = outcome.report
    assert report["dry_run"] is True
    assert (report["old_thresholds_version"], report["new_thresholds_version"]) == (1, None)
    assert report["model_version"] == trained.model_version
    assert report["policy"] == QUANTILE.to_dict()
    assert outcome.thresholds.parent == 1
    assert outcome.thresholds.policy == QUANTILE
    json.dumps(report, allow_nan=False)  # JSON-ready as it stands


def test_recalibrating_stores_the_next_version_and_activates_it(
    registry: Registry, trained: Trained
) -> None:
    outcome = recalibrate(registry, QUANTILE, by="sha256:ops")
    v = trained.model_version
    assert outcome.thresholds.version == 2
    assert outcome.thresholds.parent == 1
    assert registry.list_thresholds(v) == [1, 2]
    stored = registry.load_thresholds(v, 2)
    assert stored.to_dict() == outcome.thresholds.to_dict()
    assert stored.policy == QUANTILE
    assert outcome.activated == ActivePointer(v, 2)
    assert pointer(registry) == ActivePointer(v, 2)
    assert pointer(registry).activation == outcome.activated.activation
    record = registry.activation(pointer(registry).activation)  # type: ignore[arg-type]
    assert (record.action, record.by, record.thresholds_version) == ("recalibrate", "sha256:ops", 2)
    assert record.previous == 1  # training's activation
    report = outcome.report
    assert report["dry_run"] is False
    assert (report["old_thresholds_version"], report["new_thresholds_version"]) == (1, 2)

    again = recalibrate(registry, ThresholdPolicy(kind="quantile", value=0.95))
    assert (again.thresholds.version, again.thresholds.parent) == (3, 2)
    assert again.report["old_thresholds_version"] == 2
    assert registry.activation(pointer(registry).activation).by is None  # type: ignore[arg-type]
    # Each recalibration is a step back in history.
    assert [p.thresholds_version for p in registry.rollback()] == [3, 2]
    assert [p.thresholds_version for p in registry.rollback()] == [2, 1]


def test_the_parent_is_the_active_version_not_the_latest(
    registry: Registry, trained: Trained
) -> None:
    recalibrate(registry, QUANTILE)
    registry.activate(trained.model_version, 1, action="promote")
    outcome = recalibrate(registry, ThresholdPolicy(kind="quantile", value=0.8))
    assert (outcome.thresholds.version, outcome.thresholds.parent) == (3, 1)
    assert outcome.report["old_thresholds_version"] == 1
    np.testing.assert_array_equal(
        [c["old_threshold"] for c in outcome.report["clusters"]],
        registry.load_thresholds(trained.model_version, 1).values,
    )


# -- the report on the stored calibration sample --------------------------------------------


def test_the_report_on_the_stored_sample_matches_an_independent_count(
    registry: Registry, trained: Trained
) -> None:
    sample = registry.load_calibration(trained.model_version)
    old = registry.load_thresholds(trained.model_version, 1)
    outcome = recalibrate(registry, QUANTILE, dry_run=True)
    report = outcome.report
    assert report["sample"] == "stored calibration sample"
    assert report["overall"]["rows"] == sample.n
    assert sample.labels is not None
    check_report(
        report,
        old,
        outcome.thresholds,
        sample.clusters.astype(np.int64),
        sample.distances.astype(np.float64),
        sample.labels.astype(bool),
    )


def test_the_stored_sample_fits_on_held_out_and_training_rows(
    registry: Registry, trained: Trained
) -> None:
    sample = registry.load_calibration(trained.model_version)
    assert sample.training_rows > sample.n > 0
    outcome = recalibrate(registry, QUANTILE, dry_run=True)
    assert outcome.thresholds.extra["calibration_rows"] == sample.n + sample.training_rows
    # The report stays on the held-out rows, the ones with labels.
    assert outcome.report["overall"]["rows"] == sample.n


def test_a_model_stored_without_training_rows_fits_on_its_held_out_rows(
    registry: Registry, trained: Trained
) -> None:
    sample = registry.load_calibration(trained.model_version)
    held_out_only = CalibrationSample(sample.clusters, sample.distances, sample.labels)
    key = f"models/{trained.model_version}/calibration.npz"
    registry.storage.write(key, held_out_only.to_npz_bytes())
    outcome = recalibrate(registry, QUANTILE, dry_run=True)
    assert outcome.thresholds.extra["calibration_rows"] == sample.n


def test_a_lower_quantile_alerts_more_and_at_about_the_asked_rate(
    registry: Registry, trained: Trained
) -> None:
    policy = ThresholdPolicy(kind="quantile", value=0.5, rare_share=0.0)
    outcome = recalibrate(registry, policy, dry_run=True)
    report = outcome.report
    assert report["overall"]["new_alert_rate"] > report["overall"]["old_alert_rate"]
    # The quantile is read on every row fitted on: held-out and training rows.
    clusters, distances = registry.load_calibration(trained.model_version).calibration_rows()
    alerts = judge(outcome.thresholds, clusters, distances).anomalous
    for row in report["clusters"]:
        member = clusters == row["cluster"]
        if member.sum() >= policy.min_points:
            assert alerts[member].mean() == pytest.approx(0.5, abs=0.02), row
            # The report's held-out rows alone: the same rate, within their sampling error.
            if row["count"]:
                error = 0.5 / row["count"] ** 0.5
                assert row["new_alert_rate"] == pytest.approx(0.5, abs=4 * error), row
            assert row["new_threshold"] < row["old_threshold"]


def test_the_policy_in_force_reproduces_the_thresholds_in_force(
    registry: Registry, trained: Trained
) -> None:
    old = registry.load_thresholds(trained.model_version, 1)
    outcome = recalibrate(registry, old.policy, dry_run=True)
    # Training fits on the sample as stored (float32 distances), so the values are the same.
    np.testing.assert_array_equal(outcome.thresholds.values, old.values)
    np.testing.assert_array_equal(outcome.thresholds.rare, old.rare)
    overall = outcome.report["overall"]
    assert overall["new_alert_rate"] == pytest.approx(overall["old_alert_rate"], abs=2 / ROWS)


def test_without_stored_labels_the_report_has_no_label_metrics(
    trained: Trained, tmp_path: Path
) -> None:
    shutil.copytree(trained.unlabelled, tmp_path / "registry")
    registry = open_registry(tmp_path / "registry")
    active = pointer(registry)
    sample = registry.load_calibration(active.model_version)
    assert sample.labels is None
    outcome = recalibrate(registry, QUANTILE)
    check_report(
        outcome.report,
        registry.load_thresholds(active.model_version, 1),
        outcome.thresholds,
        sample.clusters.astype(np.int64),
        sample.distances.astype(np.float64),
        None,
    )
    assert pointer(registry).thresholds_version == 2


# -- a data file ----------------------------------------------------------------------------


def test_a_data_file_is_scored_with_the_models_spec_and_centroids(
    registry: Registry, trained: Trained
) -> None:
    clusters, distances, labels = score_csv(registry, trained.csv)
    old = registry.load_thresholds(trained.model_version, 1)
    outcome = recalibrate(
        registry, QUANTILE, data=trained.csv, label_column=LABEL_COLUMN, by="sha256:ops"
    )
    assert outcome.report["sample"] == "file demo.csv"
    assert outcome.report["overall"]["rows"] == ROWS
    check_report(outcome.report, old, outcome.thresholds, clusters, distances, labels)
    assert pointer(registry) == ActivePointer(trained.model_version, 2)
    # The new thresholds are calibrated on the file's rows, not on the stored sample.
    assert outcome.thresholds.counts.tolist() == np.bincount(clusters, minlength=K).tolist()


def test_a_data_file_without_a_label_column_gives_no_label_metrics(
    registry: Registry, trained: Trained
) -> None:
    clusters, distances, _ = score_csv(registry, trained.csv)
    outcome = recalibrate(registry, QUANTILE, data=trained.csv, dry_run=True)
    check_report(
        outcome.report,
        registry.load_thresholds(trained.model_version, 1),
        outcome.thresholds,
        clusters,
        distances,
        None,
    )


def test_the_chunk_size_does_not_change_the_outcome(registry: Registry, trained: Trained) -> None:
    whole = recalibrate(
        registry, QUANTILE, data=trained.csv, label_column=LABEL_COLUMN, dry_run=True
    )
    chunked = recalibrate(
        registry,
        QUANTILE,
        data=trained.csv,
        label_column=LABEL_COLUMN,
        dry_run=True,
        chunk_rows=333,
    )
    assert chunked.report == whole.report
    np.testing.assert_array_equal(chunked.thresholds.values, whole.thresholds.values)


def test_labels_of_one_class_give_undefined_metrics_as_none(
    registry: Registry, trained: Trained, tmp_path: Path
) -> None:
    lines = trained.csv.read_text().splitlines()
    negatives = tmp_path / "negatives.csv"
    negatives.write_text(
        "\n".join([lines[0], *(line.rsplit(",", 1)[0] + ",0" for line in lines[1:])]) + "\n"
    )
    report = recalibrate(
        registry, QUANTILE, data=negatives, label_column=LABEL_COLUMN, dry_run=True
    ).report
    for name in ("old", "new"):
        metrics = report["overall"][name]
        assert metrics["recall"] is None
        assert metrics["pr_auc"] is None
        assert metrics["precision"] == 0.0  # some rows are flagged, none is a positive
    json.dumps(report, allow_nan=False)


def with_label(source: Path, target: Path, row: int, value: str) -> Path:
    """A copy of ``source`` whose data row ``row`` (1-based) has label ``value``."""
    lines = source.read_text().splitlines()
    lines[row] = lines[row].rsplit(",", 1)[0] + f",{value}"
    target.write_text("\n".join(lines) + "\n")
    return target


@pytest.mark.parametrize("value", ["2", "-1", "0.5"])
def test_a_bad_label_names_file_column_and_row(
    registry: Registry, trained: Trained, tmp_path: Path, value: str
) -> None:
    path = with_label(trained.csv, tmp_path / "bad.csv", 1_234, value)
    before = snapshot(registry)
    with pytest.raises(DataError) as info:
        recalibrate(registry, QUANTILE, data=path, label_column=LABEL_COLUMN, chunk_rows=500)
    error = info.value
    assert (error.file, error.column, error.row) == (str(path), LABEL_COLUMN, 1_234)
    assert str(error) == f"{path}, column '{LABEL_COLUMN}', row 1234: {error.problem}"
    # The value as the user wrote it (2, 2.0), not a numpy repr such as np.float64(2.0).
    prefix = "label must be 0 or 1, got "
    assert error.problem.startswith(prefix)
    shown = error.problem.removeprefix(prefix)
    assert re.fullmatch(r"-?[0-9.]+", shown), error.problem
    assert float(shown) == float(value)
    assert snapshot(registry) == before


def test_a_label_that_is_not_a_number_names_its_row(
    registry: Registry, trained: Trained, tmp_path: Path
) -> None:
    path = with_label(trained.csv, tmp_path / "bad.csv", 1_999, "yes")
    before = snapshot(registry)
    with pytest.raises(DataError) as info:
        recalibrate(registry, QUANTILE, data=path, label_column=LABEL_COLUMN, chunk_rows=500)
    assert (info.value.file, info.value.column, info.value.row) == (str(path), LABEL_COLUMN, 1_999)
    assert snapshot(registry) == before


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, r"file not found"),
        ("amount,tran_code\n", r"missing|column"),
        ("HEADER-ONLY", r"no data rows"),
    ],
)
def test_unusable_data_files_are_data_errors_and_write_nothing(
    registry: Registry, trained: Trained, tmp_path: Path, content: str | None, match: str
) -> None:
    path = tmp_path / "input.csv"
    if content == "HEADER-ONLY":
        path.write_text(trained.csv.read_text().splitlines()[0] + "\n")
    elif content is not None:
        path.write_text(content)
    before = snapshot(registry)
    with pytest.raises(DataError, match=match) as info:
        recalibrate(registry, QUANTILE, data=path, label_column=LABEL_COLUMN)
    assert str(path) in str(info.value)
    assert snapshot(registry) == before


def test_a_file_without_the_label_column_is_refused(
    registry: Registry, trained: Trained, tmp_path: Path
) -> None:
    lines = trained.csv.read_text().splitlines()
    path = tmp_path / "unlabelled.csv"
    path.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    with pytest.raises(DataError, match=LABEL_COLUMN):
        recalibrate(registry, QUANTILE, data=path, label_column=LABEL_COLUMN)
    outcome = recalibrate(registry, QUANTILE, data=path, dry_run=True)  # fine without labels
    assert outcome.report["overall"]["rows"] == ROWS
