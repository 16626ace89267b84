"""Training end to end on this machine: split, fit, train, calibrate, register, activate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training import pipeline
from training.demo import DEMO_FEATURES, LABEL_COLUMN, DemoConfig, generate, write_csv
from training.errors import DataError, HyperparameterError, SpecError, TuningError
from training.pipeline import TrainRequest, train
from training.recalibration import score_file
from training.registry import Registry, open_registry
from training.thresholds import ThresholdPolicy


@pytest.fixture(scope="module")
def demo_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pipeline") / "demo.csv"
    write_csv(generate(DemoConfig(rows=6_000, seed=11)), path)
    return path


def request(data: Path, **overrides: object) -> TrainRequest:
    base: dict[str, object] = {
        "data": data,
        "label_column": LABEL_COLUMN,
        "features": DEMO_FEATURES,
        "k": 6,
        "chunk_rows": 1_000,
    }
    base.update(overrides)
    return TrainRequest(**base)  # type: ignore[arg-type]


def test_train_registers_and_activates(demo_csv: Path, tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "reg")
    outcome = train(request(demo_csv), registry)
    assert outcome.train_rows + outcome.test_rows == 6_000
    assert outcome.test_rows == pytest.approx(1_200, abs=len(DEMO_FEATURES["fields"]) * 5)
    pointer = registry.active()
    assert pointer is not None
    assert pointer.model_version == outcome.manifest.model_version
    assert pointer.thresholds_version == 1
    bundle = registry.load_bundle(pointer.model_version)
    assert bundle.centroids.shape == (6, outcome.manifest.feature_dim)
    assert bundle.calibration.distances.shape == (outcome.test_rows,)
    assert bundle.calibration.labels is not None
    manifest = outcome.manifest
    assert manifest.metrics["test:msd"] > 0
    assert manifest.metrics["test:ssd"] == pytest.approx(
        manifest.metrics["test:msd"] * outcome.test_rows, rel=1e-6
    )
    assert manifest.hyperparameters["k"] == "6"
    assert manifest.source == {"kind": "local"}
    assert manifest.data_fingerprint["rows"] == 6_000
    assert len(manifest.data_fingerprint["sha256"]) == 64
    assert manifest.label_report is not None
    assert sum(manifest.cluster_shares) == pytest.approx(1.0)


def test_test_metric_matches_calibration_sample(demo_csv: Path, tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "reg")
    outcome = train(request(demo_csv), registry)
    sample = registry.load_calibration(outcome.manifest.model_version)
    msd = float(np.mean(sample.distances.astype(np.float64) ** 2))
    assert msd == pytest.approx(outcome.manifest.metrics["test:msd"], rel=1e-4)


def test_thresholds_are_fitted_on_held_out_and_training_rows(
    demo_csv: Path, tmp_path: Path
) -> None:
    registry = open_registry(tmp_path / "reg")
    outcome = train(request(demo_csv), registry)
    manifest = outcome.manifest
    sample = registry.load_calibration(manifest.model_version)
    # Every training row (none of the six clusters has fewer than two), with its
    # leave-one-out distance: its distance to the centre times n / (n - 1).
    assert sample.training_rows == outcome.train_rows
    assert sample.training_clusters is not None
    assert sample.training_distances is not None
    n = np.asarray(manifest.cluster_shares)[sample.training_clusters] * outcome.train_rows
    in_sample = sample.training_distances * (n - 1.0) / n
    # Together with the held-out rows, those are the distances of every row of the file.
    every_row = score_file(
        demo_csv,
        manifest.feature_spec,
        registry.load_centroids(manifest.model_version),
        None,
        1_000,
    )
    np.testing.assert_allclose(
        np.sort(np.r_[sample.distances, in_sample]), np.sort(every_row.distances), rtol=2e-6
    )
    extra = outcome.thresholds.extra
    assert extra["calibration_rows"] == outcome.train_rows + outcome.test_rows
    # The policy's expected rate holds over the training cluster mix, on all those rows.
    assert extra["expected_alert_rate"] == pytest.approx(0.01, abs=0.002)


def test_at_most_a_capped_sample_of_training_rows_is_kept(
    demo_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "CALIBRATION_TRAINING_ROWS", 500)
    first = open_registry(tmp_path / "a")
    second = open_registry(tmp_path / "b")
    a = train(request(demo_csv), first).manifest.model_version
    b = train(request(demo_csv), second).manifest.model_version
    sample_a, sample_b = first.load_calibration(a), second.load_calibration(b)
    assert sample_a.training_rows == 500
    assert sample_a.n > 1_000  # the held-out rows are all kept
    # Seeded: the same rows each time.
    assert sample_a.training_distances is not None
    assert sample_b.training_distances is not None
    np.testing.assert_array_equal(sample_a.training_distances, sample_b.training_distances)


def test_reproducible_with_seed(demo_csv: Path, tmp_path: Path) -> None:
    a = open_registry(tmp_path / "a")
    b = open_registry(tmp_path / "b")
    va = train(request(demo_csv, seed=5), a).manifest.model_version
    vb = train(request(demo_csv, seed=5), b).manifest.model_version
    np.testing.assert_array_equal(a.load_centroids(va), b.load_centroids(vb))


def test_target_alert_rate_policy(demo_csv: Path, tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "reg")
    policy = ThresholdPolicy(kind="target_alert_rate", value=0.05)
    outcome = train(request(demo_csv, policy=policy), registry)
    counts = outcome.thresholds.counts
    rate = float(np.sum(outcome.thresholds.alert_rates * counts) / counts.sum())
    assert rate == pytest.approx(0.05, abs=0.01)


def test_inferred_spec_skips_identifier_columns(demo_csv: Path, tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "reg")
    outcome = train(request(demo_csv, features=None), registry)
    assert "transaction_id" in outcome.skipped_columns
    names = [f["name"] for f in outcome.manifest.feature_spec["fields"]]
    assert "transaction_id" not in names
    assert LABEL_COLUMN not in names
    assert "amount" in names


def test_tuning_picks_a_trial(demo_csv: Path, tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "reg")
    outcome = train(request(demo_csv, tune=True, max_jobs=2, max_parallel=1), registry)
    assert outcome.tuning is not None
    assert len(outcome.tuning.trials) == 2
    tuned = outcome.tuning.best_training_job["TunedHyperParameters"]
    for name, value in tuned.items():
        assert outcome.manifest.hyperparameters[name] == value
    assert outcome.manifest.tuning is not None
    # The registered model is the best trial's model, as SageMaker's BestTrainingJob is.
    best = outcome.tuning.best_training_job["FinalHyperParameterTuningJobObjectiveMetric"]
    assert outcome.manifest.metrics["test:msd"] == pytest.approx(best["Value"], rel=1e-9)


def trained_registry(demo_csv: Path, root: Path) -> tuple[Registry, str]:
    registry = open_registry(root)
    return registry, train(request(demo_csv), registry).manifest.model_version


def test_failed_training_leaves_active_model_untouched(demo_csv: Path, tmp_path: Path) -> None:
    registry, version = trained_registry(demo_csv, tmp_path / "reg")
    before = registry.active()
    bad = tmp_path / "bad.csv"
    lines = demo_csv.read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if i > 100 and '"ecom"' in line)
    lines[i] = lines[i].replace('"ecom"', "")
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError):
        train(request(bad), registry)
    with pytest.raises(HyperparameterError, match="epochz"):
        train(request(demo_csv, hyperparameters={"epochz": "2"}), registry)
    assert registry.active() == before
    assert [m.model_version for m in registry.list_models()] == [version]


def test_no_activate_registers_only(demo_csv: Path, tmp_path: Path) -> None:
    registry, version = trained_registry(demo_csv, tmp_path / "reg")
    outcome = train(request(demo_csv, activate=False), registry)
    pointer = registry.active()
    assert pointer is not None
    assert pointer.model_version == version
    assert len(registry.list_models()) == 2
    assert outcome.activated is False


def test_label_column_cannot_be_a_feature(demo_csv: Path, tmp_path: Path) -> None:
    spec = {"fields": [*DEMO_FEATURES["fields"], {"name": LABEL_COLUMN, "type": "numeric"}]}
    with pytest.raises(SpecError, match=LABEL_COLUMN):
        train(request(demo_csv, features=spec), open_registry(tmp_path / "reg"))


def test_too_few_rows_for_k(tmp_path: Path) -> None:
    path = tmp_path / "tiny.csv"
    write_csv(generate(DemoConfig(rows=6, seed=1, anomaly_share=0.0, card_testing_share=0.0)), path)
    with pytest.raises(DataError, match="k=6"):
        train(request(path), open_registry(tmp_path / "reg"))


def test_a_tuned_hyperparameter_cannot_also_be_set(demo_csv: Path, tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "reg")
    overrides = {"mini_batch_size": "500"}
    with pytest.raises(TuningError, match="mini_batch_size"):
        train(request(demo_csv, tune=True, max_jobs=2, hyperparameters=overrides), registry)
    assert registry.active() is None


def test_no_usable_feature_column_says_why(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    path.write_text("id\n" + "".join(f"tx-{i}\n" for i in range(300)))
    with pytest.raises(SpecError, match=r"no usable feature columns \(id: "):
        train(request(path, features=None, label_column=None), open_registry(tmp_path / "r"))
