"""Per-row cost of the pure scoring core (score_columns + verdicts), one row and in batches.

Baselines measured in the same run: scikit-learn ``KMeans.predict`` (assignment only) and a
bare numpy nearest-centroid computation on already-transformed vectors. Our path does more
(raw columns -> transform -> assign -> judge -> reasons as Python objects), so the ratio to
the bare numpy line is the price of everything around the distance computation.

    .venv/bin/python benchmarks/scoring.py [--quick]
"""

from __future__ import annotations

import os

# One thread for every library, set before numpy and scikit-learn load: our path is
# single-threaded, and on a busy machine sklearn's OpenMP threads made its batch predict
# 50x slower after many single-row calls.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402

from service.scoring import ScoringModel, score_columns, verdicts  # noqa: E402
from training.calibration import calibrate  # noqa: E402
from training.features import CategoricalField, FeatureFitter, FeatureSpec, NumericField  # noqa: E402
from training.hyperparameters import KMeansHyperparameters  # noqa: E402
from training.kmeans import assign, fit_arrays  # noqa: E402
from training.thresholds import ThresholdPolicy  # noqa: E402

K = 10
CODES = np.array([f"T{i:02d}" for i in range(12)], dtype=object)
CHANNELS = np.array(["pos", "web", "atm", "moto"], dtype=object)


def synthetic(rng: np.random.Generator, n: int) -> dict[str, Any]:
    """Card-transaction-like raw columns: 6 numeric fields and 2 categorical ones."""
    return {
        "amount": rng.lognormal(3.5, 1.2, n),
        "hour": rng.uniform(0.0, 24.0, n),
        "km_from_home": rng.exponential(10.0, n),
        "merchant_age_days": rng.exponential(400.0, n),
        "txn_last_hour": rng.poisson(1.0, n).astype(np.float64),
        "balance": rng.normal(2_000.0, 800.0, n),
        "tran_code": rng.choice(CODES, n),
        "channel": rng.choice(CHANNELS, n, p=[0.6, 0.3, 0.07, 0.03]),
    }


def build(rng: np.random.Generator, n_train: int) -> tuple[ScoringModel, npt.NDArray[np.float64]]:
    """Fit spec, K-Means (k=10) and thresholds on synthetic data; return the model and its X."""
    numeric = ["hour", "km_from_home", "merchant_age_days", "txn_last_hour", "balance"]
    spec = FeatureSpec(
        (
            NumericField("amount", transform="log1p"),
            *(NumericField(name) for name in numeric),
            CategoricalField("tran_code"),
            CategoricalField("channel"),
        )
    )
    columns = synthetic(rng, n_train)
    fitter = FeatureFitter(spec)
    fitter.update(columns)
    fitted = fitter.finish()
    x = fitted.transform(columns).X
    result = fit_arrays(x, KMeansHyperparameters(k=K, feature_dim=x.shape[1]), seed=0)
    clusters, distances = assign(x, result.centroids)
    shares = result.cluster_weights / result.cluster_weights.sum()
    thresholds = calibrate(
        clusters, distances, cluster_shares=shares, policy=ThresholdPolicy(), model_version="b"
    )
    centroids = result.centroids.astype(np.float64)
    model = ScoringModel(
        model_version="bench",
        thresholds_version=1,
        spec=fitted,
        centroids=centroids,
        thresholds=thresholds,
        typical=tuple(fitted.typical_values(c) for c in centroids),
    )
    return model, x


def per_call_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Best-of-``repeats`` mean time per call, in microseconds (best: least disturbed run)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def rows_of(columns: dict[str, Any], start: int, n: int) -> dict[str, Any]:
    """Rows ``start .. start+n`` of raw columns, as the API would hand them (lists)."""
    return {name: values[start : start + n].tolist() for name, values in columns.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Time our path and the baselines; print µs/row and ratios."""
    parser = argparse.ArgumentParser(description="scoring core cost per row")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args(argv)
    calls, repeats = (500, 3) if args.quick else (5_000, 7)
    rng = np.random.default_rng(0)
    model, x_train = build(rng, 20_000)
    columns = synthetic(rng, 1_000)
    one = {name: values[0] for name, values in rows_of(columns, 0, 1).items()}
    batch = rows_of(columns, 0, 1_000)
    x_one = model.spec.transform(one).X
    x_batch = model.spec.transform(batch).X
    c = model.centroids
    sk = KMeans(n_clusters=K, n_init=1, random_state=0).fit(x_train[:5_000])
    sk.cluster_centers_ = c.copy()  # same centres: only the prediction cost differs

    def bare(x: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        d2 = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
        nearest = d2.argmin(axis=1)
        return nearest, np.sqrt(d2[np.arange(x.shape[0]), nearest])

    batch_calls = max(calls // 100, 5)
    lines = [
        ("ours: score_columns + verdicts", 1, lambda: verdicts(model, score_columns(model, one))),
        ("ours: score_columns only", 1, lambda: score_columns(model, one)),
        ("ours: transform only", 1, lambda: model.spec.transform(one)),
        ("baseline: sklearn KMeans.predict", 1, lambda: sk.predict(x_one)),
        ("baseline: bare numpy nearest centroid", 1, lambda: bare(x_one)),
        (
            "ours: score_columns + verdicts",
            1_000,
            lambda: verdicts(model, score_columns(model, batch)),
        ),
        ("ours: score_columns only", 1_000, lambda: score_columns(model, batch)),
        ("baseline: sklearn KMeans.predict", 1_000, lambda: sk.predict(x_batch)),
        ("baseline: bare numpy nearest centroid", 1_000, lambda: bare(x_batch)),
    ]
    print(
        f"model: k={K}, {len(model.spec.fields)} fields, feature_dim={model.spec.feature_dim}; "
        f"best of {repeats} runs, one thread"
    )
    results: dict[tuple[str, int], float] = {}
    for label, n, fn in lines:
        results[label, n] = per_call_us(fn, calls if n == 1 else batch_calls, repeats) / n
    # Verdicts allocate a few Python objects per row; full collections then walk every object
    # the imports left on the heap. gc.freeze() after start-up (as a server can) hides those.
    gc.freeze()
    frozen = "ours: score_columns + verdicts, after gc.freeze()"
    results[frozen, 1_000] = (
        per_call_us(lambda: verdicts(model, score_columns(model, batch)), batch_calls, repeats)
        / 1_000
    )
    gc.unfreeze()
    lines.insert(6, (frozen, 1_000, lambda: None))
    for n in (1, 1_000):
        ours = results["ours: score_columns + verdicts", n]
        print(f"\nn={n}: µs per row")
        for label, size, _ in lines:
            if size == n:
                us = results[label, n]
                print(f"  {label:<52}{us:>9.2f} µs   ours/this {ours / us:>6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
