"""Train a model end to end on this machine: read, split, fit features, train or tune,
calibrate thresholds, register the bundle and activate it.

Data is streamed twice from the CSV (pass 1 validates, splits and fits the feature spec on
the train split; pass 2 writes the transformed splits to memory-mapped ``.npy`` files), so
memory is bounded by the chunk size, not by the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from training.bundle import SCHEMA_VERSION, CalibrationSample, Manifest
from training.calibration import calibrate, label_report, leave_one_out
from training.data import (
    CsvSchema,
    StratifiedSplitter,
    check_binary_labels,
    infer_schema,
    iter_chunks,
    read_header,
)
from training.errors import DataError, SpecError, TuningError
from training.features import CategoricalField, FeatureFitter, FeatureSpec
from training.hyperparameters import KMeansHyperparameters, parse_hyperparameters
from training.kmeans import REFINE_PASSES, KMeansResult, array_batches, assign, fit_kmeans
from training.parameter_ranges import DEFAULT_PARAMETER_RANGES, RANGE_KINDS
from training.registry import Registry
from training.s3_upload import DEFAULT_PART_SIZE
from training.sagemaker_deploy import deploy
from training.sagemaker_requests import SageMakerConfig
from training.sagemaker_training import (
    SageMakerModel,
    csv_size,
    train_on_sagemaker,
    training_plan,
)
from training.sagemaker_tuning import TuningProgress
from training.thresholds import ThresholdPolicy, Thresholds
from training.tuning import TuningConfig, TuningResult, tune

log = logging.getLogger(__name__)

# Rows per array slice handed to the trainer and to assignment; independent of the CSV chunk.
ARRAY_BATCH_ROWS = 65_536
# At most this many training rows join the calibration sample (a uniform, seeded sample):
# enough for the 1 % tail to rest on thousands of rows, and a bundle a few MB at most.
CALIBRATION_TRAINING_ROWS = 250_000

# Told of each step of a run: (step name, details such as trials done / total / best msd).
ProgressHook = Callable[[str, Mapping[str, Any]], None]


@dataclass(frozen=True)
class TrainRequest:
    """What to train on and how. Defaults are the original proof of concept's."""

    data: Path
    label_column: str | None = None
    features: Mapping[str, Any] | None = None
    k: int = 10
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    tune: bool = False
    max_jobs: int = 10
    max_parallel: int = 2
    strategy: str = "Bayesian"
    parameter_ranges: Mapping[str, Any] = field(default_factory=lambda: DEFAULT_PARAMETER_RANGES)
    policy: ThresholdPolicy = field(default_factory=ThresholdPolicy)
    seed: int = 0
    test_fraction: float = 0.2
    stratify: str | None = None
    chunk_rows: int = 65_536
    tags: Mapping[str, str] = field(default_factory=dict)
    activate: bool = True
    # Train (tune) on SageMaker instead of in process, and optionally deploy there.
    sagemaker: SageMakerTarget | None = None
    # Called at each step and after each tuning trial (admin jobs record it as progress).
    on_progress: ProgressHook | None = None


@dataclass(frozen=True)
class SageMakerTarget:
    """Where and how to train on SageMaker: boto3 clients, settings, optional endpoint."""

    sagemaker: Any  # a boto3 "sagemaker" client
    s3: Any  # a boto3 "s3" client
    config: SageMakerConfig
    endpoint_name: str | None = None  # deploy the winner there before registering it
    poll_s: float = 60.0
    part_size: int = DEFAULT_PART_SIZE  # of the splits' upload; S3 needs >= 5 MiB


@dataclass(frozen=True)
class TrainOutcome:
    """What training produced and registered."""

    manifest: Manifest
    thresholds: Thresholds
    skipped_columns: Mapping[str, str]
    train_rows: int
    test_rows: int
    activated: bool
    tuning: TuningResult | None = None


@dataclass
class _Split:
    """Pass-1 result: the fitted spec and split sizes."""

    spec: FeatureSpec
    train_rows: int
    test_rows: int


def train(request: TrainRequest, registry: Registry, *, progress: bool = False) -> TrainOutcome:
    """Train, calibrate and register a model from a CSV file; activate it if asked."""
    path = request.data
    step = request.on_progress or _no_progress
    step("reading data", {})
    spec, skipped, stratify, schema = _prepare(request)
    split = _pass_one(request, schema, spec, stratify, progress=progress)
    fitted = split.spec
    if split.train_rows < request.k:
        raise DataError(
            f"only {split.train_rows} training rows for k={request.k} clusters", file=str(path)
        )
    if split.test_rows == 0:
        raise DataError("too few rows to hold out a test split", file=str(path))

    with tempfile.TemporaryDirectory(prefix="fraudscore-train-") as tmp:
        train_path, test_path = Path(tmp, "train.npy"), Path(tmp, "test.npy")
        labels = _pass_two(
            request, schema, fitted, stratify, split, train_path, test_path, progress=progress
        )
        x_train = np.load(train_path, mmap_mode="r")
        x_test = np.load(test_path, mmap_mode="r")
        hyperparameters = parse_hyperparameters(
            {
                "k": str(request.k),
                "feature_dim": str(fitted.feature_dim),
                "eval_metrics": '["msd","ssd"]',
                **request.hyperparameters,
            }
        )
        tuning: TuningResult | None = None
        source: dict[str, str] = {"kind": "local"}
        step("tuning" if request.tune or request.sagemaker is not None else "training", {})
        if request.sagemaker is not None:
            remote = _on_sagemaker(request, request.sagemaker, x_train, x_test)
            hyperparameters = parse_hyperparameters(
                {**hyperparameters.to_strings(), **remote.best.hyperparameters}
            )
            centroids = remote.centroids
            train_clusters, _ = _assign_all(x_train, centroids)
            weights = np.bincount(train_clusters, minlength=request.k).astype(np.float64)
            source = remote.source()
            clusters, distances = _assign_all(x_test, centroids)
            # The container's own definitions: mean and sum of squared test distances.
            metrics = {
                "test:msd": float(np.mean(distances**2)),
                "test:ssd": float(np.sum(distances**2)),
            }
        else:
            if request.tune:
                tuning = _tune(request, hyperparameters, train_path, test_path, progress=progress)
                hyperparameters = parse_hyperparameters(tuning.best_hyperparameters)
            result = _fit(x_train, x_test, hyperparameters, request.seed, progress=progress)
            centroids, weights = result.centroids, result.cluster_weights
            clusters, distances = _assign_all(x_test, centroids)
            metrics = {name: float(value) for name, value in result.metrics.items()}
        step("calibrating", {})
        training_clusters, training_distances = _training_sample(
            x_train, centroids, weights, request.seed
        )
        del x_train, x_test

    version = registry.new_model_version()
    shares = weights / max(float(weights.sum()), 1.0)
    sample = CalibrationSample(
        clusters=clusters.astype(np.int32),
        distances=distances.astype(np.float32),
        labels=None if labels is None else labels.astype(np.int8),
        training_clusters=training_clusters.astype(np.int32),
        training_distances=training_distances.astype(np.float32),
    )
    thresholds = calibrate(
        *sample.calibration_rows(),
        cluster_shares=shares,
        centroids=centroids,
        policy=request.policy,
        model_version=version,
    )
    report = label_report(clusters, distances, labels, thresholds) if labels is not None else None
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        model_version=version,
        created_at=_now(),
        k=request.k,
        feature_dim=fitted.feature_dim,
        feature_spec=fitted.to_dict(),
        hyperparameters=hyperparameters.to_strings(),
        metrics=metrics,
        source=source,
        data_fingerprint={
            "file": path.name,
            "rows": split.train_rows + split.test_rows,
            "train_rows": split.train_rows,
            "test_rows": split.test_rows,
            "sha256": _sha256(path),
        },
        cluster_shares=[float(s) for s in shares],
        tags=dict(request.tags),
        label_report=report,
        tuning=_tuning_summary(tuning),
    )
    if request.sagemaker is not None and request.sagemaker.endpoint_name:
        # Deployed before it is registered: a failed deployment registers nothing.
        deployment = deploy(
            request.sagemaker.sagemaker,
            request.sagemaker.config,
            model_data_url=source["model_data_url"],
            endpoint_name=request.sagemaker.endpoint_name,
            when=datetime.now(UTC),
            poll_s=request.sagemaker.poll_s,
        )
        source.update(
            endpoint=deployment.endpoint_name,
            endpoint_config=deployment.endpoint_config_name,
            model=deployment.model_name,
        )
        manifest = dataclasses.replace(manifest, source=source)
    step("registering", {"model_version": version})
    registry.save_model(manifest, centroids, sample)
    stored = registry.save_thresholds(thresholds)
    if request.activate:
        registry.activate(version, stored.version)
    return TrainOutcome(
        manifest=manifest,
        thresholds=stored,
        skipped_columns=skipped,
        train_rows=split.train_rows,
        test_rows=split.test_rows,
        activated=request.activate,
        tuning=tuning,
    )


def sagemaker_plan(
    request: TrainRequest,
    config: SageMakerConfig,
    *,
    endpoint_name: str | None = None,
    progress: bool = False,
    part_size: int = DEFAULT_PART_SIZE,
) -> list[dict[str, Any]]:
    """The requests a SageMaker run of ``request`` would send, in order, without AWS.

    Reads the data twice, as a real run does: pass one checks it and fits the feature spec
    (which fixes ``feature_dim``); the second measures the transformed splits as CSV, which
    decides between one PutObject and a multipart upload for each. Nothing is stored.
    """
    spec, _, stratify, schema = _prepare(request)
    split = _pass_one(request, schema, spec, stratify, progress=progress)
    return training_plan(
        config,
        k=request.k,
        feature_dim=split.spec.feature_dim,
        rows={"train": split.train_rows, "test": split.test_rows},
        sizes=_csv_sizes(request, schema, split.spec, stratify, progress=progress),
        when=datetime.now(UTC),
        parameter_ranges=request.parameter_ranges,
        max_jobs=request.max_jobs,
        max_parallel=request.max_parallel,
        strategy=request.strategy,
        endpoint_name=endpoint_name,
        part_size=part_size,
    )


def _csv_sizes(
    request: TrainRequest,
    schema: CsvSchema,
    spec: FeatureSpec,
    stratify: str | None,
    *,
    progress: bool,
) -> dict[str, int]:
    """Bytes of each transformed split as CSV, the split as in pass two, nothing kept.

    Row order (pass two shuffles the train rows in each chunk) does not change the size.
    """
    splitter = StratifiedSplitter(request.test_fraction, seed=request.seed)
    sizes = {"train": 0, "test": 0}
    with tqdm(desc="measure splits", unit=" rows", disable=not progress, leave=False) as bar:
        for columns, _ in _chunks(request, schema):
            n = len(next(iter(columns.values())))
            test = splitter.assign(columns[stratify] if stratify else None, n)
            x = np.asarray(spec.transform(columns).X, dtype=np.float64)
            sizes["train"] += csv_size(x[~test])
            sizes["test"] += csv_size(x[test])
            bar.update(n)
    return sizes


def _prepare(request: TrainRequest) -> tuple[FeatureSpec, dict[str, str], str | None, CsvSchema]:
    """Checks that need no data pass, then the spec, skipped columns, stratum and schema."""
    path = request.data
    header = read_header(path)
    label = request.label_column
    if label is not None and label not in header:
        raise DataError(f"label column '{label}' is not in the header", file=str(path))
    # Validate hyperparameter overrides before reading any data: a typo should cost nothing.
    parse_hyperparameters({"k": str(request.k), "feature_dim": "1", **request.hyperparameters})
    if request.tune:
        _tuned_names(request)
    spec, skipped = _initial_spec(request, header)
    stratify = _stratify_column(request, spec)
    schema = spec.csv_schema()
    if stratify is not None and stratify not in schema.columns:
        raise SpecError(f"stratify column '{stratify}' must be a feature of the spec")
    return spec, skipped, stratify, schema


def _initial_spec(request: TrainRequest, header: list[str]) -> tuple[FeatureSpec, dict[str, str]]:
    """The unfitted spec: the user's, or one inferred from the data."""
    if request.features is not None:
        spec = FeatureSpec.from_config(request.features)
        skipped: dict[str, str] = {}
    else:
        inferred = infer_schema(request.data, label_column=request.label_column)
        spec = FeatureSpec.default_for(inferred.schema)
        skipped = dict(inferred.skipped)
    if request.label_column is not None and request.label_column in spec.field_names:
        raise SpecError(f"label column '{request.label_column}' cannot also be a feature")
    missing = [name for name in spec.field_names if name not in header]
    if missing:
        raise DataError(
            f"feature column(s) {', '.join(repr(m) for m in missing)} not in the header",
            file=str(request.data),
        )
    if not spec.fields:
        why = "; ".join(f"{column}: {reason}" for column, reason in skipped.items())
        raise SpecError("no usable feature columns" + (f" ({why})" if why else ""))
    return spec, skipped


def _stratify_column(request: TrainRequest, spec: FeatureSpec) -> str | None:
    """The split's strata: the requested column, else the first categorical feature."""
    if request.stratify is not None:
        return request.stratify
    for f in spec.fields:
        if isinstance(f, CategoricalField):
            return f.name
    return None


def _chunks(
    request: TrainRequest, schema: CsvSchema
) -> Iterator[tuple[Mapping[str, npt.NDArray[Any]], int]]:
    """CSV chunks with the label column validated; yields (columns, first data row)."""
    label = request.label_column
    extra = (label,) if label is not None else ()
    for chunk in iter_chunks(
        request.data, schema, chunk_rows=request.chunk_rows, extra_numeric=extra
    ):
        if label is not None:
            check_binary_labels(chunk, label, file=str(request.data))
        yield chunk.columns, chunk.first_row


def _pass_one(
    request: TrainRequest,
    schema: CsvSchema,
    spec: FeatureSpec,
    stratify: str | None,
    *,
    progress: bool,
) -> _Split:
    """Validate every row, split, and fit the feature spec on the train split only."""
    splitter = StratifiedSplitter(request.test_fraction, seed=request.seed)
    fitter = FeatureFitter(spec, seed=request.seed)
    n_train = n_test = 0
    with tqdm(desc="read and fit features", unit=" rows", disable=not progress, leave=False) as bar:
        for columns, _ in _chunks(request, schema):
            n = len(next(iter(columns.values())))
            test = splitter.assign(columns[stratify] if stratify else None, n)
            fitter.update({name: col[~test] for name, col in columns.items()})
            n_test += int(test.sum())
            n_train += n - int(test.sum())
            bar.update(n)
    if n_train == 0:
        raise DataError("no data rows", file=str(request.data))
    return _Split(spec=fitter.finish(), train_rows=n_train, test_rows=n_test)


def _pass_two(
    request: TrainRequest,
    schema: CsvSchema,
    spec: FeatureSpec,
    stratify: str | None,
    split: _Split,
    train_path: Path,
    test_path: Path,
    *,
    progress: bool,
) -> npt.NDArray[np.int8] | None:
    """Transform both splits into .npy files; return the test split's labels, if any."""
    d = spec.feature_dim
    x_train = np.lib.format.open_memmap(
        train_path, mode="w+", dtype=np.float64, shape=(split.train_rows, d)
    )
    x_test = np.lib.format.open_memmap(
        test_path, mode="w+", dtype=np.float64, shape=(split.test_rows, d)
    )
    labels = np.empty(split.test_rows, dtype=np.int8) if request.label_column else None
    # Same seed and chunking as pass one, so every row lands on the same side.
    splitter = StratifiedSplitter(request.test_fraction, seed=request.seed)
    # Mini-batches are read in file order; shuffling rows inside each chunk keeps a batch
    # from being one slice of time or one merchant (files are often sorted that way).
    shuffle = np.random.default_rng([request.seed, 2])
    i_train = i_test = 0
    with tqdm(
        total=split.train_rows + split.test_rows,
        desc="transform",
        unit=" rows",
        disable=not progress,
        leave=False,
    ) as bar:
        for columns, _ in _chunks(request, schema):
            n = len(next(iter(columns.values())))
            test = splitter.assign(columns[stratify] if stratify else None, n)
            x = spec.transform(columns).X
            n_test = int(test.sum())
            x_train[i_train : i_train + n - n_test] = shuffle.permutation(x[~test])
            x_test[i_test : i_test + n_test] = x[test]
            if labels is not None and request.label_column is not None:
                labels[i_test : i_test + n_test] = columns[request.label_column][test]
            i_train += n - n_test
            i_test += n_test
            bar.update(n)
    x_train.flush()
    x_test.flush()
    del x_train, x_test
    return labels


def _fit(
    x_train: npt.NDArray[np.float64],
    x_test: npt.NDArray[np.float64],
    hyperparameters: KMeansHyperparameters,
    seed: int,
    *,
    progress: bool,
) -> KMeansResult:
    """Train K-Means on the train split and evaluate on the test split, with a progress bar."""
    total = x_train.shape[0] * (hyperparameters.epochs + REFINE_PASSES)
    with tqdm(total=total, desc="train k-means", unit=" rows", disable=not progress) as bar:
        seen = 0

        def report(rows: int) -> None:
            nonlocal seen
            bar.update(max(rows - seen, 0))
            seen = max(seen, rows)

        return fit_kmeans(
            array_batches(x_train, ARRAY_BATCH_ROWS),
            hyperparameters,
            seed=seed,
            test=array_batches(x_test, ARRAY_BATCH_ROWS),
            progress=report,
        )


def _tune(
    request: TrainRequest,
    hyperparameters: KMeansHyperparameters,
    train_path: Path,
    test_path: Path,
    *,
    progress: bool,
) -> TuningResult:
    """Run the local Bayesian search; tuned names are removed from the static map."""
    tuned = _tuned_names(request)
    static = {k: v for k, v in hyperparameters.to_strings().items() if k not in tuned}
    config = TuningConfig(
        static_hyperparameters=static,
        parameter_ranges=dict(request.parameter_ranges),
        max_jobs=request.max_jobs,
        max_parallel=request.max_parallel,
        strategy=request.strategy,  # type: ignore[arg-type]
        seed=request.seed,
    )
    hook = request.on_progress

    def on_trial(done: int, total: int, best: float | None) -> None:
        if hook is not None:
            hook("tuning", {"trials_done": done, "trials_total": total, "best_test_msd": best})

    return tune(train_path, test_path, config, show_progress=progress, on_trial=on_trial)


def _tuned_names(request: TrainRequest) -> set[str]:
    """Hyperparameters the request tunes; an explicitly set one may not be among them."""
    tuned = {
        str(r["Name"])
        for kind in RANGE_KINDS
        for r in request.parameter_ranges.get(kind, [])
        if isinstance(r, Mapping) and "Name" in r
    }
    both = sorted(tuned & set(request.hyperparameters))
    if both:
        # Dropping the user's value for the tuned one would be a silent guess.
        raise TuningError(
            f"hyperparameter '{both[0]}' is set explicitly and also tuned; "
            "set it or tune it, not both"
        )
    return tuned


def _on_sagemaker(
    request: TrainRequest,
    target: SageMakerTarget,
    x_train: npt.NDArray[np.float64],
    x_test: npt.NDArray[np.float64],
) -> SageMakerModel:
    """Tune on SageMaker (the request's ranges and limits) and fetch the winner."""

    def report(p: TuningProgress) -> None:
        best = "-" if p.best_msd is None else f"{p.best_msd:.6g}"
        log.info("tuning %s: %d/%d trials done, best test:msd %s", p.status, p.done, p.total, best)
        if request.on_progress is not None:
            request.on_progress(
                "tuning",
                {
                    "trials_done": p.done,
                    "trials_total": p.total,
                    "best_test_msd": p.best_msd,
                    "tuning_job_name": p.job_name,
                },
            )

    return train_on_sagemaker(
        target.sagemaker,
        target.s3,
        target.config,
        x_train,
        x_test,
        k=request.k,
        when=datetime.now(UTC),
        parameter_ranges=request.parameter_ranges,
        max_jobs=request.max_jobs,
        max_parallel=request.max_parallel,
        strategy=request.strategy,
        poll_s=target.poll_s,
        progress=report,
        part_size=target.part_size,
    )


def _assign_all(
    x: npt.NDArray[np.float64],
    centroids: npt.NDArray[np.float32],
    rows: npt.NDArray[np.int64] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Closest cluster and distance for every row (or the given rows, in order), in slices."""
    n = x.shape[0] if rows is None else rows.shape[0]
    clusters = np.empty(n, dtype=np.int64)
    distances = np.empty(n, dtype=np.float64)
    for start in range(0, n, ARRAY_BATCH_ROWS):
        stop = min(start + ARRAY_BATCH_ROWS, n)
        batch = x[start:stop] if rows is None else x[rows[start:stop]]
        c, dist = assign(np.asarray(batch), centroids)
        clusters[start:stop] = c
        distances[start:stop] = dist
    return clusters, distances


def _training_sample(
    x_train: npt.NDArray[np.float64],
    centroids: npt.NDArray[np.float32],
    counts: npt.NDArray[np.float64],
    seed: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Leave-one-out (cluster, distance) of the training rows, or of a seeded uniform sample
    of :data:`CALIBRATION_TRAINING_ROWS` of them (``counts``: training rows per cluster)."""
    n = x_train.shape[0]
    rows = None
    if n > CALIBRATION_TRAINING_ROWS:
        # Sorted, so the slices read the memory-mapped rows front to back.
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n, size=CALIBRATION_TRAINING_ROWS, replace=False))
    clusters, distances = _assign_all(x_train, centroids, rows)
    return leave_one_out(clusters, distances, counts)


def _tuning_summary(result: TuningResult | None) -> dict[str, Any] | None:
    """JSON-ready summary of a tuning run for the manifest."""
    if result is None:
        return None
    best = {
        key: (value.isoformat() if isinstance(value, datetime) else value)
        for key, value in result.best_training_job.items()
    }
    return {
        "best_training_job": best,
        "trials": len(result.trials),
        "failed_trials": sum(1 for t in result.trials if t.get("status") != "Completed"),
    }


def _sha256(path: Path) -> str:
    """Hex digest of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _no_progress(_step: str, _details: Mapping[str, Any]) -> None:
    """The default progress hook: nothing to tell."""
