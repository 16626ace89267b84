"""SageMaker kmeans:1 compatible K-Means: streaming training, Lloyd shrink, assignment and metrics.

The container's algorithm (reference §2.4): seed K = k x extra_center_factor centres from the first
mini-batch, move them with count-weighted running means over streamed mini-batches for ``epochs``
passes, then shrink the K weighted centres to k with the best of several weighted Lloyd runs.
After the shrink, ``refine_passes`` full Lloyd passes over the streamed training data (default
:data:`REFINE_PASSES`; 0 = the container's algorithm only) move the k centres to the local optimum
of the training data itself. The shrink only sees the K summaries, so this refinement buys test MSD
for a few cheap passes; the outputs (float32 k x d centroids, the same metric lines) are unchanged.

Memory is bounded by the mini-batch and chunk sizes, never by the data size: training data is
read through a :data:`BatchSource`, called once per pass.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from training.errors import DataError
from training.hyperparameters import AUTO_EXTRA_CENTER_FACTOR, KMeansHyperparameters

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BatchSource = Callable[[], Iterable[FloatArray]]
"""Called once per pass over the data; yields 2-d float arrays of shape (n_i, feature_dim)."""

# A handler with these reproduces the container's lines: `[11/28/2026 00:40:07 INFO 1400...] ...`.
CONTAINER_LOG_FORMAT = "[%(asctime)s %(levelname)s %(thread)d] %(message)s"
CONTAINER_DATE_FORMAT = "%m/%d/%Y %H:%M:%S"
HOST = "algo-1"
REFINE_PASSES = 3
"""Default full-data Lloyd passes after the shrink (see the module docstring and benchmarks)."""

# Rows per chunk in full passes: keeps the (rows x centres) distance block in cache-sized buffers.
_CHUNK_ROWS = 16_384
# Up to this many centres a one-hot matmul sums rows per centre faster than a flat bincount.
_ONE_HOT_MAX_CENTRES = 16

logger = logging.getLogger("training.kmeans")


@dataclass(frozen=True)
class KMeansResult:
    """A trained model: float32 centroids (k, d), SageMaker metrics and rows per centroid."""

    centroids: npt.NDArray[np.float32]
    train_msd: float
    metrics: dict[str, float]
    cluster_weights: FloatArray


def fit_kmeans(
    train: BatchSource,
    hp: KMeansHyperparameters,
    *,
    seed: int,
    test: BatchSource | None = None,
    progress: Callable[[int], None] | None = None,
    refine_passes: int = REFINE_PASSES,
) -> KMeansResult:
    """Train on streamed batches like the kmeans:1 container.

    ``progress`` is called after every mini-batch (and refinement chunk) with its row count.
    """

    def minibatches() -> Iterator[FloatArray]:
        return _rebatch(_checked(train(), hp.feature_dim, "training"), hp.mini_batch_size)

    def chunks() -> Iterator[FloatArray]:
        return _split(_checked(train(), hp.feature_dim, "training"), _CHUNK_ROWS)

    return _fit(minibatches, chunks, hp, seed, test, progress, refine_passes)


def fit_arrays(
    train: npt.ArrayLike,
    hp: KMeansHyperparameters,
    *,
    seed: int,
    test: npt.ArrayLike | None = None,
    refine_passes: int = REFINE_PASSES,
) -> KMeansResult:
    """Train on an in-memory array, in freshly shuffled mini-batches each epoch."""
    data = _checked_array(train, hp.feature_dim, "training")
    # A separate stream for shuffling keeps seeding/shrink draws independent of the epoch count.
    shuffle = np.random.default_rng([seed, 1])
    size = min(hp.mini_batch_size, max(len(data), 1))

    def minibatches() -> Iterator[FloatArray]:
        order = shuffle.permutation(len(data))
        buffer = np.empty((size, data.shape[1]))
        for start in range(0, len(data), size):
            rows = order[start : start + size]
            batch = buffer[: len(rows)]
            np.take(data, rows, axis=0, out=batch)
            yield batch

    def chunks() -> Iterator[FloatArray]:
        return _split([data], _CHUNK_ROWS)

    test_source = None
    if test is not None:
        test_source = _array_source(_checked_array(test, hp.feature_dim, "test"))
    return _fit(minibatches, chunks, hp, seed, test_source, None, refine_passes)


def assign(
    X: npt.ArrayLike, centroids: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Return each row's nearest centroid (ties -> lowest index) and its Euclidean distance.

    Uses ||x||² - 2x·c + ||c||² (clipped at 0) in float64, like the container's predictor; a 1-d
    ``X`` is one row.
    """
    rows = np.asarray(X, dtype=np.float64)
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    centres = np.asarray(centroids, dtype=np.float64)
    if rows.ndim != 2 or centres.ndim != 2 or rows.shape[1] != centres.shape[1]:
        raise DataError(
            f"cannot assign rows of shape {rows.shape} to centroids of shape {centres.shape}"
        )
    clusters = np.empty(len(rows), dtype=np.int64)
    distances = np.empty(len(rows), dtype=np.float64)
    search = _Search(centres)
    for start in range(0, len(rows), _CHUNK_ROWS):
        chunk = rows[start : start + _CHUNK_ROWS]
        stop = start + len(chunk)
        clusters[start:stop], distances[start:stop] = search.nearest(chunk)
    np.sqrt(distances, out=distances)
    return clusters, distances


def evaluate(
    test: BatchSource,
    centroids: npt.ArrayLike,
    eval_metrics: Sequence[str] = ("msd",),
) -> dict[str, float]:
    """Return ``test:msd`` (mean squared distance to the nearest centroid) and/or ``test:ssd``."""
    centres = np.asarray(centroids, dtype=np.float64)
    search = _Search(centres)
    total, rows = 0.0, 0
    for chunk in _split(_checked(test(), centres.shape[1], "test"), _CHUNK_ROWS):
        total += float(search.nearest(chunk)[1].sum())
        rows += len(chunk)
    if rows == 0:
        raise DataError("no test rows")
    values = {"msd": total / rows, "ssd": total}
    return {f"test:{name}": values[name] for name in eval_metrics}


def _fit(
    minibatches: Callable[[], Iterator[FloatArray]],
    chunks: Callable[[], Iterator[FloatArray]],
    hp: KMeansHyperparameters,
    seed: int,
    test: BatchSource | None,
    progress: Callable[[int], None] | None,
    refine_passes: int,
) -> KMeansResult:
    rng = np.random.default_rng(seed)
    if hp.extra_center_factor is None:
        logger.info(
            "'extra_center_factor' was set to 'auto', evaluated to %d.", AUTO_EXTRA_CENTER_FACTOR
        )
    centres, weights, rows = _stream(minibatches, hp, rng, progress)
    final, train_msd, labels = _shrink(centres, weights, hp, rng)
    # Rows represented by each final centre: the shrink's masses rescaled to one epoch's rows
    # (epochs and half-life decay change the raw masses' total).
    mass = np.bincount(labels, weights=weights, minlength=hp.k)
    cluster_weights = mass * (rows / mass.sum())
    if refine_passes > 0:
        final, cluster_weights = _refine(chunks, final, refine_passes, hp.local_lloyd_tol, progress)
    logger.info("#quality_metric: host=%s, train msd <loss>=%r", HOST, train_msd)
    centroids = final.astype(np.float32)
    metrics = {"train:msd": train_msd}
    if test is None:
        logger.info("Test data is not provided.")
    else:
        test_metrics = evaluate(test, centroids, hp.eval_metrics)
        for name, value in test_metrics.items():
            metric = name.split(":")[1]
            logger.info("#quality_metric: host=%s, test %s <loss>=%r", HOST, metric, value)
        metrics.update(test_metrics)
    return KMeansResult(centroids, train_msd, metrics, cluster_weights)


def _stream(
    minibatches: Callable[[], Iterator[FloatArray]],
    hp: KMeansHyperparameters,
    rng: np.random.Generator,
    progress: Callable[[int], None] | None,
) -> tuple[FloatArray, FloatArray, int]:
    """Mini-batch phase: seed K centres, then count-weighted running means; returns counts too."""
    state: _MiniBatchState | None = None
    rows_per_epoch = 0
    for epoch in range(hp.epochs):
        started = time.perf_counter()
        rows = 0
        batches: Iterable[FloatArray] = minibatches()
        if state is None:
            head, batches = _read_head(iter(batches), hp)
            state = _MiniBatchState(_seed_centres(head, hp, rng), hp.half_life_time_size)
        for batch in batches:
            state.update(batch)
            rows += len(batch)
            if progress is not None:
                progress(len(batch))
        rows_per_epoch = rows
        elapsed = max(time.perf_counter() - started, 1e-9)
        logger.info(
            "#progress_metric: host=%s, completed %r %% of epochs",
            HOST,
            100.0 * (epoch + 1) / hp.epochs,
        )
        logger.info(
            "#throughput_metric: host=%s, train throughput=%r records/second", HOST, rows / elapsed
        )
    assert state is not None  # noqa: S101 - epochs >= 1 is validated
    return state.centres, state.counts, rows_per_epoch


def _read_head(
    batches: Iterator[FloatArray], hp: KMeansHyperparameters
) -> tuple[FloatArray, Iterable[FloatArray]]:
    """Read the first mini-batch (more if it holds fewer than K rows) and chain it back in front."""
    wanted = hp.k * hp.center_factor
    # Batches may share one reused buffer, so keep copies and replay slices of them.
    head: list[FloatArray] = []
    held = 0
    for batch in batches:
        head.append(batch.copy())
        held += len(batch)
        if held >= wanted:
            break
    if held == 0:
        raise DataError("no training rows")
    if held < hp.mini_batch_size:
        logger.info(
            "Batch size %d is bigger than the first batch data. "
            "Effective batch size used to initialize is %d",
            hp.mini_batch_size,
            held,
        )
    if held < hp.k:
        raise DataError(f"training data has {held} rows, fewer than k={hp.k}")
    return np.concatenate(head), itertools.chain(head, batches)


def _seed_centres(
    rows: FloatArray, hp: KMeansHyperparameters, rng: np.random.Generator
) -> FloatArray:
    wanted = hp.k * hp.center_factor
    count = min(wanted, len(rows))
    if count < wanted:
        logger.info(
            "Only %d training rows: using %d centers instead of %d", len(rows), count, wanted
        )
    if hp.init_method == "kmeans++":
        return rows[_kmeans_plus_plus(rows, np.ones(len(rows)), count, rng)]
    return rows[rng.choice(len(rows), size=count, replace=False)]


class _MiniBatchState:
    """K centres moved by Sculley's per-centre learning rate 1/count, one mini-batch at a time."""

    def __init__(self, centres: FloatArray, half_life: int) -> None:
        self.centres = np.array(centres, dtype=np.float64)
        self.counts = np.zeros(len(centres))
        self._half_life = half_life
        self._search = _Search(self.centres)

    def update(self, batch: FloatArray) -> None:
        counts, sums = self._search.sums(batch)
        if self._half_life > 0:
            # Old mass halves after half_life further points (reference §2.4, assumed form).
            self.counts *= 0.5 ** (len(batch) / self._half_life)
        hit = counts > 0
        total = self.counts[hit] + counts[hit]
        # (1-p)·c + p·mean with p = n_new / (n_old + n_new), written as one correction term.
        self.centres[hit] += (sums[hit] - counts[hit, None] * self.centres[hit]) / total[:, None]
        self.counts[hit] = total
        self._search.set_centres(self.centres)


class _Search:
    """Nearest-centre search against fixed centres: BLAS distance trick, reused buffers."""

    def __init__(self, centres: FloatArray) -> None:
        self._k = len(centres)
        # Scratch buffers reused across calls: fresh multi-megabyte arrays cost page faults on
        # every batch, which at mini-batch sizes costs more than the arithmetic.
        self._distances = np.empty(0)
        self._one_hot = np.empty(0)
        self._flat_index = np.empty(0, dtype=np.int64)
        self.set_centres(centres)

    def set_centres(self, centres: FloatArray) -> None:
        """Replace the centres (same count)."""
        # -2·cᵀ is exact (a power of two), so the matmul yields -2x·c with no extra pass.
        self._minus_two_t = np.ascontiguousarray(centres.T) * -2.0
        self._norms = np.einsum("ij,ij->i", centres, centres)

    def labels(self, rows: FloatArray) -> tuple[IntArray, FloatArray]:
        """Nearest centre per row and the (rows, K) block of ||c||² - 2x·c it came from."""
        if self._distances.size < len(rows) * self._k:
            self._distances = np.empty(len(rows) * self._k)
        block = self._distances[: len(rows) * self._k].reshape(len(rows), self._k)
        np.matmul(rows, self._minus_two_t, out=block)
        block += self._norms
        return block.argmin(axis=1).astype(np.int64, copy=False), block

    def nearest(self, rows: FloatArray) -> tuple[IntArray, FloatArray]:
        """Nearest centre per row and the squared distance to it, clipped at 0."""
        labels, block = self.labels(rows)
        squared = block.ravel()[labels + np.arange(0, block.size, self._k)]
        squared += np.einsum("ij,ij->i", rows, rows)
        np.maximum(squared, 0.0, out=squared)
        return labels, squared

    def sums(self, rows: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Rows per nearest centre and the per-centre sums of those rows."""
        labels = self.labels(rows)[0]
        return self.sums_for(rows, labels)

    def sums_for(self, rows: FloatArray, labels: IntArray) -> tuple[FloatArray, FloatArray]:
        """Rows per label and per-label sums, without np.add.at."""
        k, dim = self._k, rows.shape[1]
        counts = np.bincount(labels, minlength=k).astype(np.float64)
        if k <= _ONE_HOT_MAX_CENTRES:
            if self._one_hot.size < k * len(rows):
                self._one_hot = np.empty(k * len(rows))
            one_hot = self._one_hot[: k * len(rows)].reshape(k, len(rows))
            np.equal(labels[None, :], np.arange(k)[:, None], out=one_hot, casting="unsafe")
            return counts, one_hot @ rows
        if self._flat_index.size < len(rows) * dim:
            self._flat_index = np.empty(len(rows) * dim, dtype=np.int64)
        index = self._flat_index[: len(rows) * dim].reshape(len(rows), dim)
        np.multiply(labels[:, None], dim, out=index)
        index += np.arange(dim)
        flat = np.bincount(index.ravel(), weights=rows.ravel(), minlength=k * dim)
        return counts, flat.reshape(k, dim).astype(np.float64, copy=False)


def _kmeans_plus_plus(
    points: FloatArray, weights: FloatArray, count: int, rng: np.random.Generator
) -> IntArray:
    """Indices of ``count`` distinct points by weighted D² sampling (P ∝ w·D²)."""
    chosen = np.empty(count, dtype=np.int64)
    norms = np.einsum("ij,ij->i", points, points)
    taken = np.zeros(len(points), dtype=bool)
    nearest = np.full(len(points), np.inf)
    probability = weights.astype(np.float64)
    for i in range(count):
        index = _draw(probability, taken, rng)
        chosen[i] = index
        taken[index] = True
        centre = points[index]
        squared = norms - 2.0 * (points @ centre) + norms[index]
        np.maximum(squared, 0.0, out=squared)
        np.minimum(nearest, squared, out=nearest)
        probability = weights * nearest
        probability[taken] = 0.0
    return chosen


def _draw(probability: FloatArray, taken: npt.NDArray[np.bool_], rng: np.random.Generator) -> int:
    """One index with P ∝ probability; uniform over untaken points when all mass is zero."""
    cumulative = np.cumsum(probability)
    total = cumulative[-1]
    if total > 0.0 and math.isfinite(total):
        index = int(np.searchsorted(cumulative, rng.random() * total, side="right"))
        # rng.random() * total can round up to total: step back to the last point with mass.
        return min(index, int(np.flatnonzero(probability)[-1]))
    # Coincident points (all D² = 0) or zero weights: any distinct untaken point will do.
    return int(rng.choice(np.flatnonzero(~taken)))


def _shrink(
    points: FloatArray, weights: FloatArray, hp: KMeansHyperparameters, rng: np.random.Generator
) -> tuple[FloatArray, float, IntArray]:
    """Reduce K weighted centres to k: best (lowest loss) of num_trials weighted Lloyd runs."""
    logger.info("shrinking %d centers into %d", len(points), hp.k)
    best: tuple[FloatArray, float, IntArray] | None = None
    for trial in range(hp.num_trials):
        if hp.local_lloyd_init_method == "kmeans++":
            start = points[_kmeans_plus_plus(points, weights, hp.k, rng)]
        else:
            start = points[_weighted_sample(weights, hp.k, rng)]
        result = _lloyd(points, weights, start, hp.local_lloyd_max_iter, hp.local_lloyd_tol)
        logger.info("local kmeans attempt #%d. Current mean square distance %.6f", trial, result[1])
        if best is None or result[1] < best[1]:
            best = result
    assert best is not None  # noqa: S101 - num_trials >= 1 is validated
    return best


def _weighted_sample(weights: FloatArray, count: int, rng: np.random.Generator) -> IntArray:
    """``count`` distinct indices drawn with P ∝ weight (zero-weight ones only when needed)."""
    positive = np.flatnonzero(weights > 0)
    if len(positive) >= count:
        p = weights[positive] / weights[positive].sum()
        return positive[rng.choice(len(positive), size=count, replace=False, p=p)]
    rest = np.flatnonzero(weights <= 0)
    extra = rng.choice(rest, size=count - len(positive), replace=False)
    return np.concatenate([positive, extra]).astype(np.int64)


def _lloyd(
    points: FloatArray, weights: FloatArray, centres: FloatArray, max_iter: int, tol: float
) -> tuple[FloatArray, float, IntArray]:
    """Weighted Lloyd until the relative loss drop is <= tol; an empty cluster keeps its centre."""
    total = float(weights.sum())
    centres = centres.copy()

    def assign_points(centres: FloatArray) -> tuple[IntArray, float]:
        # K x k x d is small here: exact differences, no cancellation.
        squared = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        labels = squared.argmin(axis=1)
        loss = float((weights * squared[np.arange(len(points)), labels]).sum() / total)
        return labels, loss

    labels, loss = assign_points(centres)
    for _ in range(max_iter):
        mass = np.bincount(labels, weights=weights, minlength=len(centres))
        sums = np.stack(
            [
                np.bincount(labels, weights=weights * column, minlength=len(centres))
                for column in points.T
            ],
            axis=1,
        )
        filled = mass > 0
        updated = centres.copy()
        updated[filled] = sums[filled] / mass[filled, None]
        new_labels, new_loss = assign_points(updated)
        drop = loss - new_loss
        previous = loss
        centres, labels, loss = updated, new_labels, new_loss
        if drop <= tol * previous:
            break
    return centres, loss, labels


def _refine(
    chunks: Callable[[], Iterator[FloatArray]],
    centres: FloatArray,
    passes: int,
    tol: float,
    progress: Callable[[int], None] | None,
) -> tuple[FloatArray, FloatArray]:
    """Full-data Lloyd passes from the shrink result; returns centres and rows per centre."""
    search = _Search(centres)
    previous = math.inf
    counts = np.zeros(len(centres))
    for number in range(passes):
        counts = np.zeros(len(centres))
        sums = np.zeros_like(centres)
        total = 0.0
        for chunk in chunks():
            labels, squared = search.nearest(chunk)
            chunk_counts, chunk_sums = search.sums_for(chunk, labels)
            counts += chunk_counts
            sums += chunk_sums
            total += float(squared.sum())
            if progress is not None:
                progress(len(chunk))
        msd = total / max(counts.sum(), 1.0)
        logger.info(
            "refinement pass #%d. Mean square distance of the training data %.6f", number, msd
        )
        filled = counts > 0
        centres = centres.copy()
        centres[filled] = sums[filled] / counts[filled, None]
        search.set_centres(centres)
        if math.isfinite(previous) and previous - msd <= tol * previous:
            break
        previous = msd
    return centres, counts


def _checked(batches: Iterable[npt.ArrayLike], dim: int, what: str) -> Iterator[FloatArray]:
    """Yield batches as float64 2-d arrays, failing on a wrong width or a non-finite value."""
    first_row = 1
    for raw in batches:
        batch = np.asarray(raw, dtype=np.float64)
        _check_batch(batch, dim, what, first_row)
        first_row += len(batch)
        yield batch


def _checked_array(data: npt.ArrayLike, dim: int, what: str) -> FloatArray:
    array = np.asarray(data, dtype=np.float64)
    _check_batch(array[:0] if array.ndim else array, dim, what, 1)
    if len(array) == 0:
        raise DataError(f"no {what} rows")
    for start in range(0, len(array), _CHUNK_ROWS):
        _check_batch(array[start : start + _CHUNK_ROWS], dim, what, start + 1)
    return array


def _array_source(array: FloatArray) -> BatchSource:
    def source() -> Iterable[FloatArray]:
        return [array]

    return source


def _check_batch(batch: FloatArray, dim: int, what: str, first_row: int) -> None:
    if batch.ndim != 2:
        raise DataError(f"{what} batch must be 2-d (rows, feature_dim), got shape {batch.shape}")
    if batch.shape[1] != dim:
        raise DataError(f"{what} data has {batch.shape[1]} columns, feature_dim is {dim}")
    # A finite sum proves every value finite without a full-size temporary; only a non-finite
    # sum (a bad value, or an overflow of huge ones) pays for the exact check.
    if math.isfinite(float(batch.sum())):
        return
    finite_rows = np.isfinite(batch).all(axis=1)
    if not finite_rows.all():
        bad_row = int(np.flatnonzero(~finite_rows)[0])
        raise DataError(f"{what} data holds a NaN or infinite value", row=first_row + bad_row)


def _rebatch(batches: Iterable[FloatArray], size: int) -> Iterator[FloatArray]:
    """Regroup arbitrary batches into mini-batches of ``size`` rows (the last may be short).

    Full mini-batches inside a batch are views; rows spanning two batches are gathered in one
    reused buffer, so a yielded mini-batch is only valid until the next one is requested.
    """
    carry: FloatArray | None = None
    held = 0
    for batch in batches:
        start = 0
        if held:
            assert carry is not None  # noqa: S101 - held > 0 implies a carry buffer
            start = min(size - held, len(batch))
            carry[held : held + start] = batch[:start]
            held += start
            if held < size:
                continue
            yield carry
            held = 0
        while len(batch) - start >= size:
            yield batch[start : start + size]
            start += size
        if start < len(batch):
            if carry is None:
                carry = np.empty((size, batch.shape[1]))
            held = len(batch) - start
            carry[:held] = batch[start:]
    if held:
        assert carry is not None  # noqa: S101 - held > 0 implies a carry buffer
        yield carry[:held]


def _split(batches: Iterable[FloatArray], size: int) -> Iterator[FloatArray]:
    """Views of each batch in chunks of at most ``size`` rows."""
    for batch in batches:
        for start in range(0, len(batch), size):
            yield batch[start : start + size]
