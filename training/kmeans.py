"""SageMaker kmeans:1 compatible K-Means: streaming training, Lloyd shrink, assignment and metrics.

The container's algorithm (reference §2.4): seed K = k x extra_center_factor centres from the first
mini-batch, move them with count-weighted running means over streamed mini-batches for ``epochs``
passes, then shrink the K weighted centres to k with the best of num_trials weighted Lloyd runs.
``train:msd`` is that shrink loss, as in the container.

Refinement (``refine_passes`` > 0, default :data:`REFINE_PASSES`; 0 = the container's algorithm
only): the shrink sees only the K summaries, and its best partition often sits in a worse basin of
the data's loss (on the benchmark's overlapping blobs up to 4 % above scikit-learn's best of 10
Lloyd runs, depending on the seed). So the best shrink results and num_trials greedy k-means++
seedings of a uniform row sample (reservoir-sampled while streaming; fit_arrays takes the head
of its first shuffle) compete in Lloyd rounds on the sample, the winner converges on the sample,
then ``refine_passes`` full Lloyd passes over the training data polish it. Outputs keep the
container's shape: float32 (k, d) centroids and the same metric lines.

Memory is bounded by the mini-batch size, the chunk size and the sample size (max(16,384,
64 k) rows), never by the data size: training data is read through a :data:`BatchSource`, called
once per pass.
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

from training.errors import DataError, HyperparameterError
from training.hyperparameters import (
    AUTO_EXTRA_CENTER_FACTOR,
    EVAL_METRICS,
    KMeansHyperparameters,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BatchSource = Callable[[], Iterable[FloatArray]]
"""Called once per pass over the data; yields 2-d float arrays of shape (n_i, feature_dim)."""

# A handler with these reproduces the container's lines: `[11/28/2026 00:40:07 INFO 1400...] ...`.
CONTAINER_LOG_FORMAT = "[%(asctime)s %(levelname)s %(thread)d] %(message)s"
CONTAINER_DATE_FORMAT = "%m/%d/%Y %H:%M:%S"
HOST = "algo-1"
REFINE_PASSES = 1
"""Default full-data Lloyd passes after the shrink (see the module docstring and benchmarks)."""

ASSIGN_CHUNK_ROWS = 16_384
"""Rows per chunk in full passes and in ``NearestCentroids.assign``: keeps the (rows x
centres) distance block in cache-sized buffers."""
# Refinement (see _best_on_sample): uniform sample size (rows, at least so many per centre),
# shrink results kept as candidates, Lloyd rounds on 1/_SELECT_DIVISOR of the sample before they
# are compared, and finalists given _FINAL_ROUNDS on the whole sample. Chosen on the benchmark's
# blobs over 20 seeds: fewer seedings or rounds let more seeds end 1-2 % worse; a larger sample
# did not help (the gaps between basins are about that size) and costs time.
_SAMPLE_ROWS = 16_384
_SAMPLE_ROWS_PER_CENTRE = 64
_SHRINK_CANDIDATES = 3
_SELECT_ROUNDS = 5
_SELECT_DIVISOR = 4
_FINALISTS = 3
_FINAL_ROUNDS = 10
# Largest m·n·k that OpenBLAS multiplies on the calling thread (SMP_THRESHOLD_MIN x
# GEMM_MULTITHREAD_THRESHOLD in its interface/gemm.c).
_SINGLE_THREAD_PRODUCT = 4 * 65_536
# Up to this many centres, scanning centre by centre beats argmin over rows and a one-hot matmul
# sums rows per centre faster than a flat bincount.
_FEW_CENTRES = 16
# Rows per product when summing rows per centre through a one-hot matrix.
_SUM_ROWS = 4_096

logger = logging.getLogger("training.kmeans")


@dataclass(frozen=True)
class KMeansResult:
    """A trained model: float32 centroids (k, d), SageMaker metrics and rows per centroid.

    ``train_msd`` is the container's shrink loss (not on the test MSD scale); ``cluster_weights``
    counts the training rows nearest each centroid in the last refinement pass or, without
    refinement, the shrink's masses scaled to one epoch's rows.
    """

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

    ``train`` is called once per epoch and once per refinement pass; the test source once.
    ``progress`` is called after every mini-batch and refinement chunk with the rows processed
    so far, all passes counted: it ends at rows x (epochs + refinement passes run).
    """
    done = 0

    def advance(rows: int) -> None:
        nonlocal done
        done += rows
        if progress is not None:
            progress(done)

    def minibatches() -> Iterator[FloatArray]:
        return _rebatch(_checked(train(), hp.feature_dim, "training"), hp.mini_batch_size)

    def chunks() -> Iterator[FloatArray]:
        return _split(_checked(train(), hp.feature_dim, "training"), ASSIGN_CHUNK_ROWS)

    return _fit(minibatches, chunks, hp, seed, test, advance, refine_passes, None)


def array_batches(array: npt.ArrayLike, rows: int = 65_536) -> BatchSource:
    """A :data:`BatchSource` over an array (memory-mapped ``.npy`` files included), in order.

    Slices are copied one at a time, so a memory-mapped file is streamed, never loaded whole.
    The local pipeline and every tuning trial train through this same source, so the final
    model of a tuning run is exactly its best trial's.
    """
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    data = np.asarray(array) if not isinstance(array, np.ndarray) else array

    def source() -> Iterator[FloatArray]:
        for start in range(0, data.shape[0], rows):
            yield np.asarray(data[start : start + rows], dtype=np.float64)

    return source


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
    size = min(hp.mini_batch_size, len(data))
    # The first epoch's order is drawn now: its head is also the refinement's uniform sample,
    # one gather instead of a reservoir fed by every mini-batch.
    orders = [shuffle.permutation(len(data))]
    sample = data[np.sort(orders[0][: _sample_rows(hp)])]

    def minibatches() -> Iterator[FloatArray]:
        order = orders.pop() if orders else shuffle.permutation(len(data))
        buffer = np.empty((size, data.shape[1]))
        for start in range(0, len(data), size):
            rows = order[start : start + size]
            batch = buffer[: len(rows)]
            np.take(data, rows, axis=0, out=batch)
            yield batch

    def chunks() -> Iterator[FloatArray]:
        return _split([data], ASSIGN_CHUNK_ROWS)

    test_source = None
    if test is not None:
        test_source = _array_source(_checked_array(test, hp.feature_dim, "test"))
    return _fit(minibatches, chunks, hp, seed, test_source, None, refine_passes, sample)


def row_products(rows: FloatArray, matrix: FloatArray, out: FloatArray | None = None) -> FloatArray:
    """``rows @ matrix``, each row's result a function of that row alone.

    Every entry is summed in column order, one product after the other (einsum's loop, not
    BLAS), so a row gets the same bits whatever the rows around it and their number. BLAS
    does not promise that: its kernels take the rows in tiles, and a row left over at a
    tile's edge is summed by another kernel, in another order. Measured with OpenBLAS's AVX2
    kernels: the last row of any product of an odd number of rows; with other builds, a
    product of one row. Serving relies on it: a row's distance is the same in a batch of any size
    and in ``fraudscore score-file``. It costs a few times a BLAS product of these shapes
    (tens of columns), still well under a microsecond a row.
    """
    return np.einsum("ij,jk->ik", rows, matrix, out=out)


class NearestCentroids:
    """Assigns rows to fixed centroids; ||c||² and -2·Cᵀ are computed once, not per call.

    Each row's cluster and distance depend on that row alone (:func:`row_products`): the
    same in a batch of any size as on its own.
    """

    def __init__(self, centroids: npt.ArrayLike) -> None:
        centres = np.asarray(centroids, dtype=np.float64)
        if centres.ndim != 2 or centres.shape[0] < 1:
            raise DataError(f"centroids must be a non-empty 2-d array, got shape {centres.shape}")
        self.centroids = centres
        # -2·Cᵀ is exact (a power of two), so the product yields -2x·c with no extra pass.
        self._minus_two_t = np.ascontiguousarray(centres.T) * -2.0
        self._norms = np.einsum("ij,ij->i", centres, centres)

    def assign(self, X: npt.ArrayLike) -> tuple[IntArray, FloatArray]:
        """Each row's nearest centroid (ties -> lowest index) and its Euclidean distance.

        Uses ||x||² - 2x·c + ||c||² (clipped at 0) in float64, like the container's
        predictor; a 1-d ``X`` is one row.
        """
        rows = np.asarray(X, dtype=np.float64)
        if rows.ndim == 1:
            rows = rows.reshape(1, -1)
        if rows.ndim != 2 or rows.shape[1] != self.centroids.shape[1]:
            raise DataError(
                f"cannot assign rows of shape {rows.shape} to centroids of shape "
                f"{self.centroids.shape}"
            )
        if len(rows) == 1:
            return self._assign_one(rows)
        if len(rows) <= ASSIGN_CHUNK_ROWS:
            clusters, squared = self._nearest(rows)
        else:
            clusters = np.empty(len(rows), dtype=np.int64)
            squared = np.empty(len(rows), dtype=np.float64)
            for start in range(0, len(rows), ASSIGN_CHUNK_ROWS):
                stop = start + ASSIGN_CHUNK_ROWS
                clusters[start:stop], squared[start:stop] = self._nearest(rows[start:stop])
        np.maximum(squared, 0.0, out=squared)
        return clusters, np.sqrt(squared, out=squared)

    def _assign_one(self, row: FloatArray) -> tuple[IntArray, FloatArray]:
        # One row (the API's common case): Python min/index over k floats beats numpy
        # reductions. The same operations as the batch path, so the same bits.
        values = (row_products(row, self._minus_two_t) + self._norms)[0].tolist()
        lowest = min(values)
        squared = lowest + float(np.einsum("ij,ij->i", row, row)[0])
        return (
            np.array([values.index(lowest)], dtype=np.int64),
            np.array([math.sqrt(max(squared, 0.0))]),
        )

    def _nearest(self, rows: FloatArray) -> tuple[IntArray, FloatArray]:
        """Nearest centre per row and ||x||² - 2x·c + ||c||² to it (not yet clipped)."""
        block = row_products(rows, self._minus_two_t)
        block += self._norms
        labels = block.argmin(axis=1)
        squared = block[np.arange(len(rows)), labels]
        squared += np.einsum("ij,ij->i", rows, rows)
        return labels.astype(np.int64, copy=False), squared


def assign(
    X: npt.ArrayLike, centroids: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Return each row's nearest centroid (ties -> lowest index) and its Euclidean distance.

    One-off form of :class:`NearestCentroids`; keep one of those to assign repeatedly.
    """
    return NearestCentroids(centroids).assign(X)


def evaluate(
    test: BatchSource,
    centroids: npt.ArrayLike,
    eval_metrics: Sequence[str] = ("msd",),
) -> dict[str, float]:
    """Return ``test:msd`` (mean squared distance to the nearest centroid) and/or ``test:ssd``."""
    for name in eval_metrics:
        if name not in EVAL_METRICS:
            raise HyperparameterError("eval_metrics", f"{name!r} is not one of msd, ssd")
    centres = np.asarray(centroids, dtype=np.float64)
    search = _Search(centres)
    total, rows = 0.0, 0
    for chunk in _split(_checked(test(), centres.shape[1], "test"), ASSIGN_CHUNK_ROWS):
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
    sample: FloatArray | None,
) -> KMeansResult:
    """Stream, shrink, optionally refine, then evaluate; logs the container's lines.

    ``sample`` is the refinement's uniform row sample; None reservoir-samples the first epoch.
    """
    rng = np.random.default_rng(seed)
    if hp.extra_center_factor is None:
        logger.info(
            "'extra_center_factor' was set to 'auto', evaluated to %d.", AUTO_EXTRA_CENTER_FACTOR
        )
    if sample is None:
        reservoir = _Reservoir(_sample_rows(hp), hp.feature_dim, rng)
        centres, weights, rows = _stream(minibatches, hp, rng, progress, reservoir)
        sample = reservoir.sample()
    else:
        centres, weights, rows = _stream(minibatches, hp, rng, progress, None)
    trials = _shrink(centres, weights, hp, rng)
    final, train_msd, labels = trials[0]
    if refine_passes > 0:
        start = _best_on_sample(sample, [trial[0] for trial in trials], hp, rng)
        final, cluster_weights = _refine(chunks, start, refine_passes, hp.local_lloyd_tol, progress)
    else:
        # Rows represented by each final centre: the shrink's masses rescaled to one epoch's
        # rows (epochs and half-life decay change the raw masses' total).
        mass = np.bincount(labels, weights=weights, minlength=hp.k)
        cluster_weights = mass * (rows / mass.sum())
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
    reservoir: _Reservoir | None,
) -> tuple[FloatArray, FloatArray, int]:
    """Mini-batch phase: K centres, their masses and rows per epoch; feeds the reservoir."""
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
            if epoch == 0 and reservoir is not None:
                reservoir.add(batch)
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


def _sample_rows(hp: KMeansHyperparameters) -> int:
    return max(_SAMPLE_ROWS, _SAMPLE_ROWS_PER_CENTRE * hp.k)


class _Reservoir:
    """A uniform sample of at most ``size`` streamed rows (vectorised reservoir sampling)."""

    def __init__(self, size: int, dim: int, rng: np.random.Generator) -> None:
        self._rows = np.empty((size, dim))
        self._seen = 0
        self._rng = rng

    def add(self, batch: FloatArray) -> None:
        """Offer every row of ``batch`` to the sample."""
        size = len(self._rows)
        fill = max(0, min(size - self._seen, len(batch)))
        self._rows[self._seen : self._seen + fill] = batch[:fill]
        rest = batch[fill:]
        if len(rest):
            # Row number j (0-based) replaces slot r ~ U{0..j} when r < size (Algorithm R);
            # for repeated slots NumPy keeps the last assignment, as the sequential loop would.
            seen = self._seen + fill + np.arange(1, len(rest) + 1)
            slots = (self._rng.random(len(rest)) * seen).astype(np.int64)
            keep = slots < size
            self._rows[slots[keep]] = rest[keep]
        self._seen += len(batch)

    def sample(self) -> FloatArray:
        """The sampled rows (all rows when fewer than ``size`` were offered)."""
        return self._rows[: min(self._seen, len(self._rows))]


def _read_head(
    batches: Iterator[FloatArray], hp: KMeansHyperparameters
) -> tuple[FloatArray, Iterable[FloatArray]]:
    """Read the first mini-batch (more if it holds fewer than K rows) and chain it back in front."""
    wanted = hp.k * hp.center_factor
    # Batches may share one reused buffer, so keep copies and replay those.
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
        """Move the centres that received rows of ``batch`` to their running means."""
        counts = np.zeros(len(self.centres))
        sums = np.zeros_like(self.centres)
        # Chunks bound the distance block when mini_batch_size is large; same centres throughout.
        for chunk in _split([batch], ASSIGN_CHUNK_ROWS):
            chunk_counts, chunk_sums = self._search.sums(chunk)
            counts += chunk_counts
            sums += chunk_sums
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
    """Nearest-centre search against fixed centres: BLAS distance trick, reused buffers.

    Three layouts of ||c||² - 2x·c, by shape: many centres (the mini-batch phase's K) put ||c||²
    into the matmul; few centres scan a (centres, rows) block centre by centre, which beats
    argmin over short rows twice over; otherwise a (rows, centres) block and argmin.
    """

    def __init__(self, centres: FloatArray) -> None:
        self._k, self._dim = centres.shape
        # Adding ||c||² to every (row, centre) entry costs more than the matmul when centres
        # outnumber columns; a ones column on the rows and a ||c||² row on the centres lets BLAS
        # add it, for the price of copying the narrower rows.
        self._augmented = self._k > self._dim + 1
        self._by_centre = not self._augmented and self._k <= _FEW_CENTRES
        # Scratch buffers reused across calls: fresh multi-megabyte arrays cost page faults on
        # every batch, which at mini-batch sizes costs more than the arithmetic.
        self._distances = np.empty(0)
        self._extended = np.ones((0, self._dim + 1))
        self._best = np.empty(0)
        self._closer = np.empty(0, dtype=bool)
        self._one_hot = np.empty(0)
        self._flat_index = np.empty(0, dtype=np.int64)
        self.set_centres(centres)

    def set_centres(self, centres: FloatArray) -> None:
        """Replace the centres (same count)."""
        # -2·c is exact (a power of two), so the matmul yields -2x·c with no extra pass.
        minus_two = centres * -2.0
        self._norms = np.einsum("ij,ij->i", centres, centres)
        if self._augmented:
            self._product = np.vstack([minus_two.T, self._norms[None, :]])
        elif self._by_centre:
            self._product = minus_two
        else:
            self._product = np.ascontiguousarray(minus_two.T)

    def labels(self, rows: FloatArray) -> IntArray:
        """Nearest centre per row (ties -> lowest index)."""
        return self._scan(rows, values=False)[0]

    def partial(self, rows: FloatArray) -> tuple[IntArray, FloatArray]:
        """Nearest centre per row and ||c||² - 2x·c to it (add ||x||² for the distance)."""
        return self._scan(rows, values=True)

    def nearest(
        self, rows: FloatArray, row_norms: FloatArray | None = None
    ) -> tuple[IntArray, FloatArray]:
        """Nearest centre per row and the squared distance to it, clipped at 0.

        ``row_norms`` (||x||² per row) spares recomputing them when the same rows are scanned
        again (Lloyd rounds).
        """
        labels, partial = self._scan(rows, values=True)
        partial += _row_norms(rows) if row_norms is None else row_norms
        np.maximum(partial, 0.0, out=partial)
        return labels, partial

    def _scan(self, rows: FloatArray, *, values: bool) -> tuple[IntArray, FloatArray]:
        """Labels and (if ``values``) min ||c||² - 2x·c per row; fresh arrays, not buffers."""
        if self._by_centre:
            return self._scan_by_centre(rows)
        block = self._augmented_block(rows) if self._augmented else self._plain_block(rows)
        labels = block.argmin(axis=1).astype(np.int64, copy=False)
        partial = block[np.arange(len(rows)), labels] if values else np.empty(0)
        return labels, partial

    def _scan_by_centre(self, rows: FloatArray) -> tuple[IntArray, FloatArray]:
        count = len(rows)
        if self._best.size < count:
            self._distances = np.empty(count * self._k)
            self._best = np.empty(count)
            self._closer = np.empty(count, dtype=bool)
        block = self._distances[: count * self._k].reshape(self._k, count)
        np.matmul(self._product, rows.T, out=block)
        block += self._norms[:, None]
        best, hit = self._best[:count], self._closer[:count]
        np.minimum.reduce(block, axis=0, out=best)
        # Descending, so where several centres tie for the minimum the lowest index is kept.
        labels = np.full(count, self._k - 1, dtype=np.int64)
        for centre in range(self._k - 2, -1, -1):
            np.equal(block[centre], best, out=hit)
            np.putmask(labels, hit, centre)
        return labels, best.copy()

    def _plain_block(self, rows: FloatArray) -> FloatArray:
        if self._distances.size < len(rows) * self._k:
            self._distances = np.empty(len(rows) * self._k)
        block = self._distances[: len(rows) * self._k].reshape(len(rows), self._k)
        np.matmul(rows, self._product, out=block)
        block += self._norms
        return block

    def _augmented_block(self, rows: FloatArray) -> FloatArray:
        # Stacked matmuls of `tile` rows each: every BLAS call stays under OpenBLAS's threading
        # threshold, so the mini-batch loop never has to wake BLAS worker threads. On a busy
        # 2-core machine that wake-up cost more than the product: epochs ran 1.5-2x slower and
        # far noisier. Padding rows past len(rows) hold stale values and are sliced off.
        width = self._dim + 1
        tile = max(1, min(_SINGLE_THREAD_PRODUCT // (width * self._k), len(rows)))
        padded = -(-len(rows) // tile) * tile
        if len(self._extended) < padded:
            self._extended = np.ones((padded, width))
            self._distances = np.empty(padded * self._k)
        self._extended[: len(rows), : self._dim] = rows
        tiles = self._distances[: padded * self._k].reshape(-1, tile, self._k)
        np.matmul(self._extended[:padded].reshape(-1, tile, width), self._product, out=tiles)
        return tiles.reshape(padded, self._k)[: len(rows)]

    def sums(self, rows: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Rows per nearest centre and the per-centre sums of those rows."""
        return self.sums_for(rows, self.labels(rows))

    def sums_for(
        self, rows: FloatArray, labels: IntArray, weights: FloatArray | None = None
    ) -> tuple[FloatArray, FloatArray]:
        """(Weighted) rows per label and per-label sums, without np.add.at."""
        k, dim = self._k, rows.shape[1]
        counts = np.bincount(labels, weights=weights, minlength=k).astype(np.float64)
        if k <= _FEW_CENTRES:
            if self._one_hot.size < k * len(rows):
                self._one_hot = np.empty(k * len(rows))
            one_hot = self._one_hot[: k * len(rows)].reshape(k, len(rows))
            np.equal(labels[None, :], np.arange(k)[:, None], out=one_hot, casting="unsafe")
            if weights is not None:
                one_hot *= weights
            if len(rows) <= _SUM_ROWS:
                return counts, one_hot @ rows
            # In pieces: one (k, n) @ (n, d) product with n in the tens of thousands ran at
            # half the speed of the same work in pieces of a few thousand rows.
            sums = np.zeros((k, dim))
            for start in range(0, len(rows), _SUM_ROWS):
                stop = start + _SUM_ROWS
                sums += one_hot[:, start:stop] @ rows[start:stop]
            return counts, sums
        if weights is None and k <= np.iinfo(np.int16).max:
            # Rows grouped by label (a radix sort on int16 labels) and summed per group.
            order = np.argsort(labels.astype(np.int16), kind="stable")
            grouped = np.take(rows, order, axis=0)
            filled = np.flatnonzero(counts)
            starts = np.cumsum(counts)[filled] - counts[filled]
            sums = np.zeros((k, dim))
            sums[filled] = np.add.reduceat(grouped, starts.astype(np.int64), axis=0)
            return counts, sums
        if self._flat_index.size < len(rows) * dim:
            self._flat_index = np.empty(len(rows) * dim, dtype=np.int64)
        index = self._flat_index[: len(rows) * dim].reshape(len(rows), dim)
        np.multiply(labels[:, None], dim, out=index)
        index += np.arange(dim)
        values = rows if weights is None else rows * weights[:, None]
        flat = np.bincount(index.ravel(), weights=values.ravel(), minlength=k * dim)
        return counts, flat.reshape(k, dim).astype(np.float64, copy=False)


def _kmeans_plus_plus(
    points: FloatArray, weights: FloatArray, count: int, rng: np.random.Generator
) -> IntArray:
    """Indices of ``count`` distinct points by greedy weighted k-means++.

    Each step draws 2 + ln(count) candidates with P ∝ w·D² and keeps the one that lowers the
    weighted potential most (Arthur & Vassilvitskii's greedy variant, scikit-learn's default): plain
    D² sampling often leaves two centres in one blob, which Lloyd cannot undo.
    """
    tries = 2 + int(math.log(count))
    norms = _row_norms(points)
    # Points as columns: candidates' distances come out as contiguous rows, and the product
    # runs several times faster than against few columns.
    columns = np.ascontiguousarray(points.T)
    chosen = np.empty(count, dtype=np.int64)
    taken = np.zeros(len(points), dtype=bool)
    chosen[0] = _draw(weights, taken, 1, rng)[0]
    taken[chosen[0]] = True
    nearest = _squared_to(points, columns, norms, chosen[:1])[0]
    for i in range(1, count):
        mass = weights * nearest
        mass[chosen[:i]] = 0.0  # the trick leaves ~1e-16 at chosen points: never re-draw them
        candidates = _draw(mass, taken, tries, rng)
        squared = _squared_to(points, columns, norms, candidates)
        np.minimum(squared, nearest, out=squared)
        best = int((squared @ weights).argmin())
        chosen[i] = candidates[best]
        taken[chosen[i]] = True
        nearest = squared[best]
    return chosen


def _row_norms(rows: FloatArray) -> FloatArray:
    """||x||² per row."""
    norms: FloatArray = np.einsum("ij,ij->i", rows, rows)
    return norms


def _squared_to(
    points: FloatArray, columns: FloatArray, norms: FloatArray, indices: IntArray
) -> FloatArray:
    """Squared distances (len(indices), n) from the indexed points to every point, clipped at 0.

    ``columns`` is ``points.T`` (contiguous) and ``norms`` the points' ||x||².
    """
    # -2·c is exact, so this is (||x||² - 2x·c) + ||c||² without the temporaries.
    squared = (points[indices] * -2.0) @ columns
    squared += norms
    squared += norms[indices][:, None]
    return np.maximum(squared, 0.0, out=squared)


def _draw(
    mass: FloatArray, taken: npt.NDArray[np.bool_], count: int, rng: np.random.Generator
) -> IntArray:
    """``count`` indices drawn with replacement, P ∝ mass; uniform over untaken if mass is zero."""
    cumulative = np.cumsum(mass)
    total = cumulative[-1]
    if total > 0.0 and math.isfinite(total):
        indices: IntArray = np.searchsorted(
            cumulative, rng.random(count) * total, side="right"
        ).astype(np.int64)
        # rng.random() * total can round up to total (index len(mass)): step back to the last
        # point with mass. Any other index lands where the cumulative sum rises: mass > 0.
        if indices.max() >= len(mass):
            np.minimum(indices, int(np.flatnonzero(mass)[-1]), out=indices)
        return indices
    # Coincident points (all D² = 0) or zero weights: any untaken point will do.
    untaken = np.flatnonzero(~taken)
    return untaken[rng.integers(len(untaken), size=count)].astype(np.int64)


def _shrink(
    points: FloatArray, weights: FloatArray, hp: KMeansHyperparameters, rng: np.random.Generator
) -> list[tuple[FloatArray, float, IntArray]]:
    """Reduce K weighted centres to k with num_trials weighted Lloyd runs, best (lowest) first."""
    logger.info("shrinking %d centers into %d", len(points), hp.k)
    trials: list[tuple[FloatArray, float, IntArray]] = []
    for trial in range(hp.num_trials):
        if hp.local_lloyd_init_method == "kmeans++":
            start = points[_kmeans_plus_plus(points, weights, hp.k, rng)]
        else:
            start = points[_weighted_sample(weights, hp.k, rng)]
        result = _lloyd(points, weights, start, hp.local_lloyd_max_iter, hp.local_lloyd_tol)
        logger.info("local kmeans attempt #%d. Current mean square distance %.6f", trial, result[1])
        trials.append(result)
    # Stable sort: the first of equal-loss trials stays first, like a strict "<" scan.
    return sorted(trials, key=lambda trial: trial[1])


def _best_on_sample(
    sample: FloatArray,
    shrunk: list[FloatArray],
    hp: KMeansHyperparameters,
    rng: np.random.Generator,
) -> FloatArray:
    """Refinement start: the best candidate after Lloyd on a uniform sample of the training rows.

    Candidates are the best shrink results plus num_trials greedy k-means++ seedings of the
    sample. The shrink only sees the K summaries, whose best partition can sit in a worse basin
    of the data's loss (a few % of test MSD); sample-seeded candidates escape it. All get a few
    Lloyd rounds on a quarter of the sample, the best three more on all of it, and the best of
    those runs to convergence. Comparing on the quarter alone picked a basin 2 % worse for one
    seed in ten on the benchmark's blobs: its sampling noise is as large as the gaps between
    basins.
    """
    candidates = shrunk[:_SHRINK_CANDIDATES]
    # Candidates compete on a random quarter. Not the first rows: reservoir slots keep stream
    # order until replaced, so on sorted input the first slots would favour early rows.
    subset = sample[
        rng.choice(len(sample), size=max(len(sample) // _SELECT_DIVISOR, hp.k), replace=False)
    ]
    ones = np.ones(len(subset))
    candidates += [subset[_kmeans_plus_plus(subset, ones, hp.k, rng)] for _ in range(hp.num_trials)]
    tol = hp.local_lloyd_tol
    polished = [_lloyd(subset, None, start, _SELECT_ROUNDS, tol) for start in candidates]
    polished.sort(key=lambda result: result[1])
    finalists = [result[0] for result in polished[:_FINALISTS]]
    finals = [_lloyd(sample, None, start, _FINAL_ROUNDS, tol) for start in finalists]
    winner = min(finals, key=lambda result: result[1])[0]
    centres, loss, _ = _lloyd(sample, None, winner, hp.local_lloyd_max_iter, tol)
    logger.info(
        "refinement: best of %d candidates on a sample of %d rows. Mean square distance %.6f",
        len(candidates),
        len(sample),
        loss,
    )
    return centres


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
    points: FloatArray,
    weights: FloatArray | None,
    centres: FloatArray,
    max_iter: int,
    tol: float,
) -> tuple[FloatArray, float, IntArray]:
    """(Weighted) Lloyd until the relative loss drop is <= tol; an empty cluster keeps its centre.

    Returns the centres, their loss (weighted mean squared distance) and the points' labels.
    """
    total = float(weights.sum()) if weights is not None else float(len(points))
    search = _Search(centres)

    def loss_of(squared: FloatArray) -> float:
        return float((squared if weights is None else weights * squared).sum() / total)

    row_norms = _row_norms(points)
    labels, squared = search.nearest(points, row_norms)
    loss = loss_of(squared)
    for _ in range(max_iter):
        mass, sums = search.sums_for(points, labels, weights)
        filled = mass > 0
        centres = centres.copy()
        centres[filled] = sums[filled] / mass[filled, None]
        search.set_centres(centres)
        labels, squared = search.nearest(points, row_norms)
        previous, loss = loss, loss_of(squared)
        if previous - loss <= tol * previous:
            break
    return centres, loss, labels


def _refine(
    chunks: Callable[[], Iterator[FloatArray]],
    centres: FloatArray,
    passes: int,
    tol: float,
    progress: Callable[[int], None] | None,
) -> tuple[FloatArray, FloatArray]:
    """Full-data Lloyd passes; returns the centres and the rows per centre of the last pass."""
    search = _Search(centres)
    previous = math.inf
    counts = np.zeros(len(centres))
    for number in range(passes):
        counts = np.zeros(len(centres))
        sums = np.zeros_like(centres)
        total = 0.0
        for chunk in chunks():
            # Only the total is needed: Σ||x||² in one BLAS dot, not per row (nor clipped: a
            # rounding below 0 is far under the logged precision).
            labels, partial = search.partial(chunk)
            chunk_counts, chunk_sums = search.sums_for(chunk, labels)
            counts += chunk_counts
            sums += chunk_sums
            total += float(partial.sum()) + float(np.vdot(chunk, chunk))
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
    for start in range(0, len(array), ASSIGN_CHUNK_ROWS):
        _check_batch(array[start : start + ASSIGN_CHUNK_ROWS], dim, what, start + 1)
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

    Full mini-batches inside a batch are views; rows spanning batches are copied and joined.
    """
    pending: list[FloatArray] = []
    held = 0
    for batch in batches:
        start = 0
        if held:
            start = min(size - held, len(batch))
            pending.append(batch[:start].copy())
            held += start
            if held < size:
                continue
            yield np.concatenate(pending)
            pending, held = [], 0
        while len(batch) - start >= size:
            yield batch[start : start + size]
            start += size
        if start < len(batch):
            pending, held = [batch[start:].copy()], len(batch) - start
    if held:
        yield np.concatenate(pending)


def _split(batches: Iterable[FloatArray], size: int) -> Iterator[FloatArray]:
    """Views of each batch in chunks of at most ``size`` rows."""
    for batch in batches:
        for start in range(0, len(batch), size):
            yield batch[start : start + size]
