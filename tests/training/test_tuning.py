# ruff: noqa: ARG001
from __future__ import annotations

import copy
import logging
import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from training.errors import TuningError
from training.hyperparameters import parse_hyperparameters
from training.kmeans import array_batches, fit_kmeans
from training.parameter_ranges import DEFAULT_PARAMETER_RANGES, validate_parameter_ranges
from training.tuning import TuningConfig, TuningResult, tune

STATIC = {"k": "3", "feature_dim": "2"}
BEST_TRAINING_JOB_KEYS = {
    "TrainingJobName",
    "TuningJobName",
    "CreationTime",
    "TrainingStartTime",
    "TrainingEndTime",
    "TrainingJobStatus",
    "TunedHyperParameters",
    "FinalHyperParameterTuningJobObjectiveMetric",
    "ObjectiveStatus",
}


# Trial functions run in spawned worker processes, so they live at module level (picklable).
# They share the runner's signature (train path, test path, hyperparameters, seed), hence
# the unused arguments (ARG001 is off for this file).


def bowl(train: str, test: str, hyperparameters: dict[str, str], seed: int) -> dict[str, float]:
    """A cheap objective over the default ranges, smallest at factor 7, batch 9000, kmeans++."""
    factor = int(hyperparameters["extra_center_factor"])
    batch = int(hyperparameters["mini_batch_size"])
    penalty = 1.0 if hyperparameters["init_method"] == "random" else 0.0
    return {"test:msd": (factor - 7) ** 2 + abs(batch - 9000) / 6000 + penalty, "train:msd": 0.5}


def slow_bowl(
    train: str, test: str, hyperparameters: dict[str, str], seed: int
) -> dict[str, float]:
    """bowl, slow enough for trials to overlap in time."""
    time.sleep(0.25)
    return bowl(train, test, hyperparameters, seed)


def random_init_fails(
    train: str, test: str, hyperparameters: dict[str, str], seed: int
) -> dict[str, float]:
    """bowl, except that init_method=random raises."""
    if hyperparameters["init_method"] == "random":
        raise ValueError("random init exploded")
    return bowl(train, test, hyperparameters, seed)


def random_init_kills_worker(
    train: str, test: str, hyperparameters: dict[str, str], seed: int
) -> dict[str, float]:
    """bowl, except that init_method=random ends the worker process abruptly."""
    if hyperparameters["init_method"] == "random":
        os._exit(3)
    return bowl(train, test, hyperparameters, seed)


def always_fails(
    train: str, test: str, hyperparameters: dict[str, str], seed: int
) -> dict[str, float]:
    """Every trial raises."""
    raise RuntimeError(f"boom {hyperparameters['mini_batch_size']}")


def no_objective(
    train: str, test: str, hyperparameters: dict[str, str], seed: int
) -> dict[str, float]:
    """Reports metrics without test:msd."""
    return {"train:msd": 1.0}


def epochs_objective(
    train: str, test: str, hyperparameters: dict[str, str], seed: int
) -> dict[str, float]:
    """Objective for ranges that tune epochs and mini_batch_size."""
    return {
        "test:msd": float(hyperparameters["epochs"]) + float(hyperparameters["mini_batch_size"])
    }


def write_blobs(directory: Path, *, feature_dim: int = 2) -> tuple[Path, Path]:
    """Three well-separated blobs, split into train and test .npy files."""
    rng = np.random.default_rng(7)
    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])[:, :feature_dim]
    x = centres[rng.integers(0, 3, 600)] + rng.normal(scale=0.5, size=(600, feature_dim))
    train, test = directory / "train.npy", directory / "test.npy"
    np.save(train, x[:480])
    np.save(test, x[480:])
    return train, test


def ranges(**changes: Any) -> dict[str, Any]:
    """DEFAULT_PARAMETER_RANGES with whole kinds replaced."""
    out = copy.deepcopy(DEFAULT_PARAMETER_RANGES)
    out.update(changes)
    return out


def max_overlap(trials: list[dict[str, Any]]) -> int:
    """Most trials running at the same moment, from the start/end times workers recorded."""
    events = [(t["TrainingStartTime"], 1) for t in trials]
    events += [(t["TrainingEndTime"], -1) for t in trials]
    running = peak = 0
    for _, change in sorted(events):  # at equal times the end (-1) sorts first
        running += change
        peak = max(peak, running)
    return peak


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_blobs(tmp_path_factory.mktemp("splits"))


@pytest.fixture(scope="module")
def parallel_run(splits: tuple[Path, Path]) -> TuningResult:
    """Six slow trials, two at a time, on the default ranges."""
    config = TuningConfig(dict(STATIC), max_jobs=6, max_parallel=2, seed=0, name="parallel-run")
    return tune(*splits, config, show_progress=False, trial_function=slow_bowl)


# --- ParameterRanges validation ---------------------------------------------------------------


def test_default_ranges_are_the_proof_of_concepts_and_valid() -> None:
    integer = {
        r["Name"]: (r["MinValue"], r["MaxValue"])
        for r in DEFAULT_PARAMETER_RANGES["IntegerParameterRanges"]
    }
    assert integer == {"extra_center_factor": ("4", "10"), "mini_batch_size": ("3000", "15000")}
    (categorical,) = DEFAULT_PARAMETER_RANGES["CategoricalParameterRanges"]
    assert categorical == {"Name": "init_method", "Values": ["kmeans++", "random"]}
    validate_parameter_ranges(DEFAULT_PARAMETER_RANGES, {"k": "10", "feature_dim": "30"})


def integer_range(name: str, low: Any, high: Any, scaling: str = "Auto") -> dict[str, Any]:
    return {"Name": name, "MinValue": low, "MaxValue": high, "ScalingType": scaling}


MBS = "IntegerParameterRanges[0] 'mini_batch_size'"
CAT = "CategoricalParameterRanges[0] 'init_method'"
BAD_RANGES = [
    pytest.param(
        ranges(IntegerParameterRanges=[integer_range("mini_batch_siz", "10", "20")]),
        "IntegerParameterRanges[0] 'mini_batch_siz': unknown hyperparameter 'mini_batch_siz'; "
        "did you mean 'mini_batch_size'?",
        id="unknown-name",
    ),
    pytest.param(
        ranges(IntegerParameterRanges=[integer_range("local_lloyd_max_iter", "10", "20")]),
        "'local_lloyd_max_iter' is not tunable in kmeans:1",
        id="not-tunable",
    ),
    pytest.param(
        ranges(IntegerParameterRanges=[integer_range("mini_batch_size", "15000", "3000")]),
        f"{MBS}: MinValue 15000 must be less than MaxValue 3000",
        id="min-above-max",
    ),
    pytest.param(
        ranges(IntegerParameterRanges=[integer_range("mini_batch_size", "3000", "3000")]),
        f"{MBS}: MinValue 3000 must be less than MaxValue 3000",
        id="single-point",
    ),
    pytest.param(
        ranges(IntegerParameterRanges=[integer_range("mini_batch_size", 3000, "15000")]),
        f'{MBS}: MinValue must be a string such as "4"',
        id="bound-not-a-string",
    ),
    pytest.param(
        ranges(IntegerParameterRanges=[integer_range("mini_batch_size", "3000", "lots")]),
        f"{MBS}: MaxValue 'lots' is not an integer",
        id="bound-not-an-integer",
    ),
    pytest.param(
        ranges(IntegerParameterRanges=[integer_range("mini_batch_size", "3000.5", "4000")]),
        f"{MBS}: MinValue '3000.5' is not an integer",
        id="integer-bound-with-fraction",
    ),
    pytest.param(
        ranges(ContinuousParameterRanges=[integer_range("local_lloyd_tol", "nan", "0.1")]),
        "ContinuousParameterRanges[0] 'local_lloyd_tol': MinValue 'nan' is not a finite number",
        id="continuous-bound-nan",
    ),
    pytest.param(
        ranges(CategoricalParameterRanges=[{"Name": "init_method", "Values": []}]),
        f"{CAT}: Values must be a non-empty list of strings",
        id="empty-values",
    ),
    pytest.param(
        ranges(CategoricalParameterRanges=[{"Name": "init_method", "Values": ["random"] * 2}]),
        f"{CAT}: duplicate value 'random'",
        id="duplicate-values",
    ),
    pytest.param(
        ranges(
            CategoricalParameterRanges=[
                {"Name": "init_method", "Values": [str(i) for i in range(31)]}
            ]
        ),
        f"{CAT}: 31 Values, SageMaker allows at most 30",
        id="too-many-values",
    ),
    pytest.param(
        ranges(IntegerParameterRanges=[integer_range("epochs", "1", "2")] * 31),
        "IntegerParameterRanges: 31 ranges, SageMaker allows at most 30",
        id="too-many-ranges",
    ),
    pytest.param(
        ranges(
            IntegerParameterRanges=[integer_range("mini_batch_size", "10", "20", "Exponential")]
        ),
        f"{MBS}: ScalingType 'Exponential' is not one of Auto, Linear, Logarithmic, "
        "ReverseLogarithmic",
        id="bad-scaling-type",
    ),
    pytest.param(
        ranges(IntegerParameterRanges=[integer_range("mini_batch_size", "0", "20", "Logarithmic")]),
        f"{MBS}: Logarithmic scaling needs MinValue > 0, got 0",
        id="logarithmic-from-zero",
    ),
    pytest.param(
        ranges(IntegerParameterRanges=[integer_range("epochs", "1", "5", "ReverseLogarithmic")]),
        "IntegerParameterRanges[0] 'epochs': ReverseLogarithmic scaling is for continuous "
        "ranges only",
        id="reverse-logarithmic-integer",
    ),
    pytest.param(
        ranges(
            ContinuousParameterRanges=[
                integer_range("local_lloyd_tol", "0.5", "2", "ReverseLogarithmic")
            ]
        ),
        "ReverseLogarithmic scaling needs 0 <= MinValue < MaxValue < 1",
        id="reverse-logarithmic-outside-unit",
    ),
    pytest.param(
        ranges(
            IntegerParameterRanges=[],
            ContinuousParameterRanges=[integer_range("mini_batch_size", "10", "20")],
        ),
        "ContinuousParameterRanges[0] 'mini_batch_size': 'mini_batch_size' needs "
        "IntegerParameterRanges, not ContinuousParameterRanges",
        id="continuous-range-for-an-integer",
    ),
    pytest.param(
        ranges(
            IntegerParameterRanges=[integer_range("init_method", "1", "2")],
            CategoricalParameterRanges=[],
        ),
        "'init_method' needs CategoricalParameterRanges, not IntegerParameterRanges",
        id="integer-range-for-a-category",
    ),
    pytest.param(
        ranges(CategoricalParameterRanges=[{"Name": "mini_batch_size", "Values": ["10"]}]),
        "CategoricalParameterRanges[0] 'mini_batch_size': 'mini_batch_size' is already tuned by "
        "IntegerParameterRanges[1] 'mini_batch_size'",
        id="tuned-twice",
    ),
    pytest.param(
        ranges(IntegerParameterRanges=[integer_range("mini_batch_size", "0", "100")]),
        f"{MBS}: value '0' is invalid: '0' is not valid: expected an integer >= 1",
        id="bound-the-container-rejects",
    ),
    pytest.param(
        ranges(CategoricalParameterRanges=[{"Name": "init_method", "Values": ["k-means++"]}]),
        f"{CAT}: value 'k-means++' is invalid",
        id="category-the-container-rejects",
    ),
    pytest.param(
        ranges(IntegerParameterRanges=[{"Name": "epochs", "MinValue": "1"}]),
        "IntegerParameterRanges[0] 'epochs': missing MaxValue",
        id="missing-bound",
    ),
    pytest.param(
        ranges(IntegerParameterRanges=[{**integer_range("epochs", "1", "3"), "Step": "1"}]),
        "IntegerParameterRanges[0] 'epochs': unknown key 'Step'",
        id="unknown-entry-key",
    ),
    pytest.param(
        ranges(IntegerParameterRanges=["epochs"]),
        "IntegerParameterRanges[0]: must be an object with keys Name, MinValue, MaxValue",
        id="entry-not-an-object",
    ),
    pytest.param(
        ranges(IntegerParameterRanges={"Name": "epochs"}),
        "IntegerParameterRanges must be a list of ranges, got dict",
        id="kind-not-a-list",
    ),
    pytest.param(
        {**DEFAULT_PARAMETER_RANGES, "IntegerRanges": []},
        "ParameterRanges: unknown key 'IntegerRanges'",
        id="unknown-kind",
    ),
    pytest.param(
        {"AutoParameters": [{"Name": "epochs", "ValueHint": "1"}]},
        "AutoParameters (Autotune) is not supported locally",
        id="autotune",
    ),
    pytest.param(
        {"IntegerParameterRanges": [], "CategoricalParameterRanges": []},
        "ParameterRanges: no hyperparameter to tune",
        id="nothing-to-tune",
    ),
]


@pytest.mark.parametrize(("bad", "message"), BAD_RANGES)
def test_invalid_ranges_are_named(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(TuningError) as caught:
        validate_parameter_ranges(bad, STATIC)
    assert message in str(caught.value)


def test_a_tuned_name_may_not_be_static() -> None:
    with pytest.raises(TuningError, match=r"\[0\] 'init_method': 'init_method' is also a static"):
        validate_parameter_ranges(DEFAULT_PARAMETER_RANGES, {**STATIC, "init_method": "random"})


@pytest.mark.parametrize(
    ("static", "message"),
    [
        ({"feature_dim": "2"}, "static hyperparameters: hyperparameter 'k': required"),
        ({**STATIC, "epochs": "0"}, "static hyperparameters: hyperparameter 'epochs'"),
        ({**STATIC, "eval_metrics": '["ssd"]'}, 'eval_metrics must include "msd"'),
    ],
)
def test_static_hyperparameters_must_train(static: dict[str, str], message: str) -> None:
    with pytest.raises(TuningError) as caught:
        validate_parameter_ranges(DEFAULT_PARAMETER_RANGES, static)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_jobs": 0}, "max_jobs must be an integer >= 1, got 0"),
        ({"max_parallel": 0}, "max_parallel must be an integer >= 1, got 0"),
        ({"strategy": "Hyperband"}, "strategy 'Hyperband' is not supported locally"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"name": "no_underscores"}, "tuning job name 'no_underscores' must be 1-32"),
        (
            {
                "max_jobs": 5,
                "parameter_ranges": ranges(
                    IntegerParameterRanges=[integer_range("epochs", "1", "2")]
                ),
            },
            "the parameter ranges allow only 4 combinations, fewer than max_jobs=5",
        ),
    ],
)
def test_config_is_checked_before_any_trial(
    splits: tuple[Path, Path], changes: dict[str, Any], message: str
) -> None:
    config = TuningConfig(dict(STATIC), **changes)
    with pytest.raises(TuningError) as caught:
        tune(*splits, config, show_progress=False, trial_function=always_fails)
    assert message in str(caught.value)


def test_splits_must_match_feature_dim(tmp_path: Path, splits: tuple[Path, Path]) -> None:
    train, test = splits
    config = TuningConfig({"k": "3", "feature_dim": "5"})
    with pytest.raises(
        TuningError, match=r"train split .*feature_dim=5 columns, got shape \(480, 2\)"
    ):
        tune(train, test, config, show_progress=False)
    with pytest.raises(TuningError, match=r"test split .*missing\.npy: cannot read"):
        tune(train, tmp_path / "missing.npy", TuningConfig(dict(STATIC)), show_progress=False)


# --- running trials ------------------------------------------------------------------------------


def test_best_training_job_has_the_sagemaker_shape(parallel_run: TuningResult) -> None:
    best = parallel_run.best_training_job
    assert set(best) == BEST_TRAINING_JOB_KEYS
    assert best["TuningJobName"] == "parallel-run"
    assert best["TrainingJobName"].startswith("parallel-run-")
    assert best["TrainingJobStatus"] == "Completed"
    assert best["ObjectiveStatus"] == "Succeeded"
    for key in ("CreationTime", "TrainingStartTime", "TrainingEndTime"):
        assert isinstance(best[key], datetime)
        assert best[key].tzinfo is not None
    assert best["CreationTime"] <= best["TrainingStartTime"] <= best["TrainingEndTime"]
    objective = best["FinalHyperParameterTuningJobObjectiveMetric"]
    assert set(objective) == {"Type", "MetricName", "Value"}
    assert (objective["Type"], objective["MetricName"]) == ("Minimize", "test:msd")
    values = [t["test:msd"] for t in parallel_run.trials]
    assert objective["Value"] == min(values)
    winner = next(t for t in parallel_run.trials if t["TrainingJobName"] == best["TrainingJobName"])
    assert winner["test:msd"] == min(values)
    assert best["TunedHyperParameters"] == winner["hyperparameters"]
    assert parallel_run.best_hyperparameters == {**STATIC, **winner["hyperparameters"]}


def test_max_jobs_and_max_parallel_are_honoured(parallel_run: TuningResult) -> None:
    trials = parallel_run.trials
    assert len(trials) == 6
    assert [t["TrainingJobName"].rsplit("-", 2)[1] for t in trials] == [
        f"{i:03d}" for i in range(1, 7)
    ]
    assert all(t["status"] == "Completed" for t in trials)
    # Two at once, never three: the pool has two workers and only two trials are in flight.
    assert max_overlap(trials) == 2


def test_trial_records_carry_metrics_and_times(parallel_run: TuningResult) -> None:
    for trial in parallel_run.trials:
        assert trial["metrics"] == {"test:msd": trial["test:msd"], "train:msd": 0.5}
        assert "error" not in trial
        assert trial["TrainingEndTime"] - trial["TrainingStartTime"] >= timedelta(milliseconds=250)


def test_tuned_values_stay_inside_the_ranges(splits: tuple[Path, Path]) -> None:
    search = {
        "IntegerParameterRanges": [
            integer_range("epochs", "2", "4", "Linear"),
            integer_range("mini_batch_size", "10", "100000", "Logarithmic"),
        ],
    }
    config = TuningConfig(dict(STATIC), search, max_jobs=12, max_parallel=2, seed=5)
    result = tune(*splits, config, show_progress=False, trial_function=epochs_objective)
    assert len(result.trials) == 12
    batches = []
    for trial in result.trials:
        assert set(trial["hyperparameters"]) == {"epochs", "mini_batch_size"}
        assert 2 <= int(trial["hyperparameters"]["epochs"]) <= 4
        batches.append(int(trial["hyperparameters"]["mini_batch_size"]))
    assert all(10 <= b <= 100_000 for b in batches)
    # Log scaling: small batch sizes are drawn about as often as large ones.
    assert any(b < 1000 for b in batches)


def test_sequential_runs_are_deterministic_for_a_seed(
    splits: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    def run(seed: int) -> TuningResult:
        config = TuningConfig(dict(STATIC), max_jobs=5, max_parallel=1, seed=seed)
        return tune(*splits, config, show_progress=False, trial_function=bowl)

    first, again, other = run(3), run(3), run(4)
    chosen = [t["hyperparameters"] for t in first.trials]
    assert chosen == [t["hyperparameters"] for t in again.trials]
    assert chosen != [t["hyperparameters"] for t in other.trials]
    assert first.best_hyperparameters == again.best_hyperparameters
    assert max_overlap(first.trials) == 1
    assert capsys.readouterr() == ("", "")


def test_failed_trials_are_recorded(splits: tuple[Path, Path]) -> None:
    # Seed 2 draws init_method kmeans++, random, kmeans++, random, kmeans++, kmeans++.
    config = TuningConfig(dict(STATIC), max_jobs=6, max_parallel=2, strategy="Random", seed=2)
    result = tune(*splits, config, show_progress=False, trial_function=random_init_fails)
    failed = [t for t in result.trials if t["status"] == "Failed"]
    completed = [t for t in result.trials if t["status"] == "Completed"]
    assert len(result.trials) == 6
    assert len(failed) == 2
    assert len(completed) == 4
    for trial in failed:
        assert trial["hyperparameters"]["init_method"] == "random"
        assert trial["error"] == "ValueError: random init exploded"
        assert trial["test:msd"] is None
    assert result.best_training_job["TunedHyperParameters"]["init_method"] == "kmeans++"
    value = result.best_training_job["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
    assert value == min(t["test:msd"] for t in completed)


def test_a_dead_worker_fails_its_trial_and_the_run_goes_on(splits: tuple[Path, Path]) -> None:
    # Trials 2 and 4 draw init_method=random and kill their worker; each time a new pool
    # takes over. (With max_parallel > 1 the trials beside a dying worker fail with it.)
    config = TuningConfig(dict(STATIC), max_jobs=5, max_parallel=1, strategy="Random", seed=2)
    result = tune(*splits, config, show_progress=False, trial_function=random_init_kills_worker)
    by_status = {
        status: [t for t in result.trials if t["status"] == status]
        for status in ("Completed", "Failed")
    }
    assert len(result.trials) == 5
    assert [t["TrainingJobName"].rsplit("-", 2)[1] for t in by_status["Failed"]] == ["002", "004"]
    assert len(by_status["Completed"]) == 3
    for trial in by_status["Failed"]:
        assert trial["hyperparameters"]["init_method"] == "random"
        assert trial["error"].startswith("worker process died")


def test_all_trials_failing_is_an_error(splits: tuple[Path, Path]) -> None:
    config = TuningConfig(dict(STATIC), max_jobs=3, max_parallel=2, name="doomed")
    with pytest.raises(
        TuningError,
        match=r"all 3 trials failed; first error \(doomed-001-\w{8}\): RuntimeError: boom \d+",
    ):
        tune(*splits, config, show_progress=False, trial_function=always_fails)


def test_a_trial_without_the_objective_fails(splits: tuple[Path, Path]) -> None:
    config = TuningConfig(dict(STATIC), max_jobs=1, max_parallel=1)
    with pytest.raises(TuningError, match="TuningError: the trial reported no test:msd"):
        tune(*splits, config, show_progress=False, trial_function=no_objective)


def test_real_kmeans_trials_give_parseable_winner(
    splits: tuple[Path, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    static = {**STATIC, "eval_metrics": '["msd","ssd"]', "local_lloyd_num_trials": "2"}
    config = TuningConfig(static, max_jobs=3, max_parallel=2, seed=11)
    verbosity = optuna.logging.get_verbosity()
    result = tune(*splits, config, show_progress=True)

    out, err = capfd.readouterr()
    assert out == ""
    assert "3/3" in err
    assert "best test:msd=" in err
    assert "Trial 0 finished" not in err  # optuna's own logging stays quiet
    assert optuna.logging.get_verbosity() == verbosity
    assert len(result.trials) == 3
    assert all(t["status"] == "Completed" for t in result.trials)
    assert all(set(t["metrics"]) == {"train:msd", "test:msd", "test:ssd"} for t in result.trials)

    hyperparameters = parse_hyperparameters(result.best_hyperparameters)
    assert hyperparameters.k == 3
    tuned = result.best_training_job["TunedHyperParameters"]
    assert hyperparameters.to_strings()["mini_batch_size"] == tuned["mini_batch_size"]
    # The reported objective is reproducible: refitting the winner with the seed gives it back.
    train, test = (np.load(p) for p in splits)
    refit = fit_kmeans(array_batches(train), hyperparameters, seed=11, test=array_batches(test))
    value = result.best_training_job["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
    assert refit.metrics["test:msd"] == pytest.approx(value, rel=1e-12)
    assert value == min(t["test:msd"] for t in result.trials)
    # Three separated blobs: the tuned model is close to the noise level (2 * 0.5**2).
    assert value < 1.0


def test_optuna_logging_is_restored_after_an_error(splits: tuple[Path, Path]) -> None:
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.DEBUG)
    try:
        config = TuningConfig(dict(STATIC), max_jobs=1)
        with pytest.raises(TuningError):
            tune(*splits, config, trial_function=always_fails, show_progress=False)
        assert optuna.logging.get_verbosity() == logging.DEBUG
    finally:
        optuna.logging.set_verbosity(before)


def test_an_unpicklable_trial_function_fails_its_trials(splits: tuple[Path, Path]) -> None:
    config = TuningConfig(dict(STATIC), max_jobs=2, max_parallel=1)
    with pytest.raises(TuningError, match=r"(?i)all 2 trials failed; .*pickle"):
        tune(*splits, config, show_progress=False, trial_function=lambda *_: {"test:msd": 1.0})
