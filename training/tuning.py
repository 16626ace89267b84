"""Local hyperparameter tuning that behaves like a SageMaker tuning job for kmeans:1.

Same inputs as ``create_hyper_parameter_tuning_job`` (static hyperparameters, ``ParameterRanges``,
``MaxNumberOfTrainingJobs``, ``MaxParallelTrainingJobs``, ``Bayesian`` or ``Random``), same
objective (minimise ``test:msd``), and the winner reported in ``DescribeHyperParameterTuningJob``'s
``BestTrainingJob`` shape (reference §6.2, §6.3). Trials run in worker processes so a crashing or
memory-hungry fit cannot take the caller down, and so several can run at once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import multiprocessing
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
from tqdm import tqdm

from training.errors import TuningError
from training.hyperparameters import parse_hyperparameters
from training.kmeans import array_batches, fit_kmeans
from training.parameter_ranges import (
    DEFAULT_PARAMETER_RANGES,
    OBJECTIVE_METRIC,
    ParameterRange,
    parse_parameter_ranges,
)

Strategy = Literal["Bayesian", "Random"]
# Runs one trial in a worker: (train .npy path, test .npy path, hyperparameters, seed) -> metrics.
TrialFunction = Callable[[str, str, dict[str, str], int], Mapping[str, float]]
# Progress of a search: (trials done, trials in all, best test:msd so far or None).
TrialReport = Callable[[int, int, float | None], None]

OBJECTIVE_TYPE = "Minimize"

_JOB_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}")


@dataclass
class TuningConfig:
    """What a tuning job searches and how many trials it may run, as in SageMaker."""

    static_hyperparameters: dict[str, str]
    parameter_ranges: dict[str, Any] = field(
        default_factory=lambda: copy.deepcopy(DEFAULT_PARAMETER_RANGES)
    )
    max_jobs: int = 10
    max_parallel: int = 2
    strategy: Strategy = "Bayesian"
    seed: int = 0
    # Tuning job name (SageMaker rules: 1-32 letters, digits, hyphens); None = fraudscore-<time>.
    name: str | None = None


@dataclass(frozen=True)
class TuningResult:
    """The outcome of a tuning run.

    ``best_training_job`` has the keys of ``DescribeHyperParameterTuningJob``'s
    ``BestTrainingJob`` (no ARN: the jobs are local). ``best_hyperparameters`` is the winner's
    full map (static + tuned) for :func:`parse_hyperparameters`. ``trials`` holds one dict per
    trial in order: ``TrainingJobName``, ``hyperparameters`` (the tuned values), ``status``
    (``Completed`` or ``Failed``), ``test:msd`` (None when failed), ``metrics``, ``error`` (only
    when failed), ``CreationTime``, ``TrainingStartTime``, ``TrainingEndTime``.
    """

    best_training_job: dict[str, Any]
    best_hyperparameters: dict[str, str]
    trials: list[dict[str, Any]]


@dataclass(frozen=True)
class _Outcome:
    """What a worker reports back for one trial."""

    started: datetime
    ended: datetime
    metrics: dict[str, float] | None
    error: str | None


def tune(
    train: Path,
    test: Path,
    config: TuningConfig,
    *,
    show_progress: bool = True,
    trial_function: TrialFunction | None = None,
    on_trial: TrialReport | None = None,
) -> TuningResult:
    """Search hyperparameters minimising test:msd, like a SageMaker tuning job, on this machine.

    ``train`` and ``test`` are 2-d float64 ``.npy`` files; workers memory-map them. Exactly
    ``config.max_jobs`` trials run, at most ``config.max_parallel`` at a time, each fitted with
    ``config.seed``. With ``max_parallel=1`` the run is deterministic for a seed; with more,
    the order in which trials finish steers the sampler. A failed trial is recorded, not
    fatal (a worker killed outright, e.g. for memory, also fails the trials running beside
    it); TuningError if all fail. ``trial_function`` replaces the K-Means fit (tests); it must
    be a module-level function so worker processes can unpickle it. ``on_trial`` is called
    after each finished trial with (trials done, trials in all, best test:msd so far or None).
    """
    ranges = parse_parameter_ranges(config.parameter_ranges, config.static_hyperparameters)
    _check_config(config, ranges)
    _check_arrays(train, test, config.static_hyperparameters)
    job_name = config.name or f"fraudscore-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    verbosity = optuna.logging.get_verbosity()
    # optuna logs every trial at INFO; the progress bar is this run's only chatter.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        trials = _run_trials(
            _Run(
                train=str(train),
                test=str(test),
                config=config,
                ranges=ranges,
                job_name=job_name,
                function=trial_function or _run_trial,
            ),
            show_progress=show_progress,
            on_trial=on_trial,
        )
    finally:
        optuna.logging.set_verbosity(verbosity)
    return _result(trials, config, job_name)


def _run_trial(
    train_path: str, test_path: str, hyperparameters: dict[str, str], seed: int
) -> dict[str, float]:
    """Fit K-Means for one trial in a worker process and return its metrics."""
    train = np.load(train_path, mmap_mode="r")
    test = np.load(test_path, mmap_mode="r")
    result = fit_kmeans(
        array_batches(train),
        parse_hyperparameters(hyperparameters),
        seed=seed,
        test=array_batches(test),
    )
    return dict(result.metrics)


def _execute(
    function: TrialFunction,
    train_path: str,
    test_path: str,
    hyperparameters: dict[str, str],
    seed: int,
) -> _Outcome:
    """Worker entry point: time one trial and turn any exception into a recorded error."""
    started = datetime.now(UTC)
    try:
        metrics = {
            str(k): float(v)
            for k, v in function(train_path, test_path, hyperparameters, seed).items()
        }
        if OBJECTIVE_METRIC not in metrics:
            raise TuningError(f"the trial reported no {OBJECTIVE_METRIC}")
        if not math.isfinite(metrics[OBJECTIVE_METRIC]):
            raise TuningError(f"{OBJECTIVE_METRIC} is {metrics[OBJECTIVE_METRIC]}")
    except Exception as exc:
        # Like a failed SageMaker training job: the tuning job records it and carries on.
        return _Outcome(started, datetime.now(UTC), None, f"{type(exc).__name__}: {exc}")
    return _Outcome(started, datetime.now(UTC), metrics, None)


@dataclass(frozen=True)
class _Run:
    """Everything the trial loop needs."""

    train: str
    test: str
    config: TuningConfig
    ranges: list[ParameterRange]
    job_name: str
    function: TrialFunction


@dataclass
class _Trial:
    """A trial asked from the sampler and handed to a worker."""

    number: int
    ask: optuna.trial.Trial
    job_name: str
    tuned: dict[str, str]
    created: datetime


def _run_trials(
    run: _Run, *, show_progress: bool, on_trial: TrialReport | None = None
) -> list[dict[str, Any]]:
    """Ask, run and tell max_jobs trials, keeping at most max_parallel in flight."""
    config = run.config
    study = optuna.create_study(direction="minimize", sampler=_sampler(config))
    workers = min(config.max_parallel, config.max_jobs)
    finished: list[tuple[int, dict[str, Any]]] = []
    in_flight: dict[Future[_Outcome], tuple[_Trial, ProcessPoolExecutor]] = {}
    best, failed = math.inf, 0
    bar = tqdm(
        total=config.max_jobs,
        desc="tuning",
        unit="trial",
        file=sys.stderr,
        disable=not show_progress,
    )
    pool = _pool(workers)
    try:
        asked = 0
        while asked < config.max_jobs or in_flight:
            while asked < config.max_jobs and len(in_flight) < workers:
                asked += 1
                trial = _ask(study, run, asked)
                try:
                    future = _submit(pool, run, trial)
                except BrokenProcessPool:
                    # A worker died since the last wait; the trials it broke are recorded
                    # below. This one goes to a fresh pool.
                    pool = _replace(pool, workers)
                    future = _submit(pool, run, trial)
                in_flight[future] = (trial, pool)
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: in_flight[f][0].number):
                trial, owner = in_flight.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool as exc:
                    # The worker was killed (out of memory) or crashed in native code: the
                    # trial failed, and its pool cannot run the remaining ones.
                    now = datetime.now(UTC)
                    outcome = _Outcome(trial.created, now, None, f"worker process died: {exc}")
                    if owner is pool:
                        pool = _replace(pool, workers)
                except Exception as exc:
                    # The trial never ran, e.g. a trial_function that cannot be pickled.
                    now = datetime.now(UTC)
                    outcome = _Outcome(trial.created, now, None, f"{type(exc).__name__}: {exc}")
                finished.append((trial.number, _record(trial, outcome)))
                if outcome.metrics is None:
                    failed += 1
                    study.tell(trial.ask, state=optuna.trial.TrialState.FAIL)
                else:
                    best = min(best, outcome.metrics[OBJECTIVE_METRIC])
                    study.tell(trial.ask, outcome.metrics[OBJECTIVE_METRIC])
                bar.set_postfix_str(
                    f"best {OBJECTIVE_METRIC}={best:.6g}, failed={failed}", refresh=False
                )
                bar.update(1)
                if on_trial is not None:
                    on_trial(len(finished), config.max_jobs, None if math.isinf(best) else best)
    except BaseException:
        # Interrupted (Ctrl-C reaches the workers too): do not wait for running fits.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown(wait=True)
    return [record for _, record in sorted(finished, key=lambda item: item[0])]


def _replace(pool: ProcessPoolExecutor, workers: int) -> ProcessPoolExecutor:
    """Shut a broken pool down and start a new one."""
    pool.shutdown(wait=True)
    return _pool(workers)


def _pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers start fresh ("spawn"): safe even if the caller has threads."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _sampler(config: TuningConfig) -> optuna.samplers.BaseSampler:
    """TPE (seeded) for Bayesian, uniform random (seeded) for Random."""
    if config.strategy == "Random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    # TPE starts with 10 random trials by default, which would make the PoC's 10-trial run
    # purely random; a third of the budget (2 to 10 trials) leaves room for the model.
    startup = min(10, max(2, config.max_jobs // 3))
    return optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=startup)


def _ask(study: optuna.Study, run: _Run, number: int) -> _Trial:
    """Ask the sampler for the next trial's tuned hyperparameters (strings)."""
    ask = study.ask()
    tuned: dict[str, str] = {}
    for r in run.ranges:
        if r.values:
            tuned[r.name] = str(ask.suggest_categorical(r.name, r.values))
        else:
            tuned[r.name] = str(ask.suggest_int(r.name, int(r.low), int(r.high), log=r.log))
    # SageMaker names child jobs <tuning job>-<number>-<8 hex>; the hex here is a digest of
    # the tuned values, so equal settings get equal suffixes.
    digest = hashlib.sha256(json.dumps(tuned, sort_keys=True).encode()).hexdigest()[:8]
    return _Trial(number, ask, f"{run.job_name}-{number:03d}-{digest}", tuned, datetime.now(UTC))


def _submit(pool: ProcessPoolExecutor, run: _Run, trial: _Trial) -> Future[_Outcome]:
    """Hand one trial to the pool."""
    hyperparameters = {**run.config.static_hyperparameters, **trial.tuned}
    return pool.submit(
        _execute, run.function, run.train, run.test, hyperparameters, run.config.seed
    )


def _record(trial: _Trial, outcome: _Outcome) -> dict[str, Any]:
    """The trials-list entry for a finished trial."""
    record: dict[str, Any] = {
        "TrainingJobName": trial.job_name,
        "hyperparameters": dict(trial.tuned),
        "status": "Completed" if outcome.metrics is not None else "Failed",
        OBJECTIVE_METRIC: None if outcome.metrics is None else outcome.metrics[OBJECTIVE_METRIC],
        "metrics": dict(outcome.metrics or {}),
        "CreationTime": trial.created,
        "TrainingStartTime": outcome.started,
        "TrainingEndTime": outcome.ended,
    }
    if outcome.error is not None:
        record["error"] = outcome.error
    return record


def _result(trials: list[dict[str, Any]], config: TuningConfig, job_name: str) -> TuningResult:
    """Pick the best completed trial (earliest on ties) and shape the result."""
    completed = [t for t in trials if t["status"] == "Completed"]
    if not completed:
        first = trials[0]
        raise TuningError(
            f"all {len(trials)} trials failed; first error ({first['TrainingJobName']}): "
            f"{first['error']}"
        )
    best = min(completed, key=lambda t: float(t[OBJECTIVE_METRIC]))
    best_training_job = {
        "TrainingJobName": best["TrainingJobName"],
        "TuningJobName": job_name,
        "CreationTime": best["CreationTime"],
        "TrainingStartTime": best["TrainingStartTime"],
        "TrainingEndTime": best["TrainingEndTime"],
        "TrainingJobStatus": "Completed",
        "TunedHyperParameters": dict(best["hyperparameters"]),
        "FinalHyperParameterTuningJobObjectiveMetric": {
            "Type": OBJECTIVE_TYPE,
            "MetricName": OBJECTIVE_METRIC,
            "Value": float(best[OBJECTIVE_METRIC]),
        },
        "ObjectiveStatus": "Succeeded",
    }
    return TuningResult(
        best_training_job=best_training_job,
        best_hyperparameters={**config.static_hyperparameters, **best["hyperparameters"]},
        trials=trials,
    )


def _check_config(config: TuningConfig, ranges: Sequence[ParameterRange]) -> None:
    """Resource limits, strategy and name, as create_hyper_parameter_tuning_job checks them."""
    for name, value in (("max_jobs", config.max_jobs), ("max_parallel", config.max_parallel)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TuningError(f"{name} must be an integer >= 1, got {value!r}")
    if config.strategy not in ("Bayesian", "Random"):
        raise TuningError(
            f"strategy {config.strategy!r} is not supported locally: use 'Bayesian' or 'Random'"
        )
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or config.seed < 0:
        raise TuningError(f"seed must be an integer >= 0, got {config.seed!r}")
    if config.name is not None and not _JOB_NAME.fullmatch(config.name):
        raise TuningError(
            f"tuning job name {config.name!r} must be 1-32 letters, digits or inner hyphens"
        )
    combinations = math.prod(r.size for r in ranges)
    if combinations < config.max_jobs:
        # SageMaker rejects such a job too: it would have to repeat settings.
        raise TuningError(
            f"the parameter ranges allow only {combinations} combinations, "
            f"fewer than max_jobs={config.max_jobs}"
        )


def _check_arrays(train: Path, test: Path, static: Mapping[str, str]) -> None:
    """Both splits must be readable 2-d arrays with feature_dim columns and at least one row."""
    feature_dim = parse_hyperparameters(static).feature_dim
    for role, path in (("train", train), ("test", test)):
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise TuningError(f"{role} split {path}: cannot read the .npy file ({exc})") from None
        # np.load gives an NpzFile for an .npz archive: no shape, no dtype.
        shape: tuple[int, ...] = tuple(getattr(array, "shape", ()))
        dtype = getattr(array, "dtype", None)
        if len(shape) != 2 or shape[0] == 0 or shape[1] != feature_dim or dtype != np.float64:
            raise TuningError(
                f"{role} split {path}: expected a float64 array of rows with "
                f"feature_dim={feature_dim} columns, got shape {shape}, dtype {dtype}"
            )
