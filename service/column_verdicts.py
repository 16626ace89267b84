"""Verdicts for blocks of parsed columns, equal bit for bit to ``score_columns``' ones.

:class:`ColumnScorer` computes a block's cluster, distance, score, anomalous flag and top
reason, and nothing else: no reasons as objects, no shares. Every number that reaches the
output comes from the same floating-point operations, in the same order, as
``FeatureSpec.transform``, ``NearestCentroids.assign``, ``judge`` and
``ScoredBatch.top_reason`` (where an operation's result may depend on its arrays' layout,
on arrays of the same layout), so it is the same value; the work is done a cache-sized
block of rows at a time in arrays each thread reuses.

The top reason needs each field's part of the squared distance, ``(x_j - c_j)²`` summed over
the field's columns. A numeric field has one column, so its part is that square exactly (the
grouping product only adds zeros to it). A categorical field's part depends only on the
row's cluster and category, so it is computed once per model, by the reference's own
grouping product on one row per (cluster, category), and looked up; so is whether that
field may be named. The top reason is then the first field with the largest part among
those that may be named, as ``argmax`` picks it.

Each row's numbers depend on that row alone (the products are summed in column order, as
:func:`training.kmeans.row_products` sums them, not by BLAS), so blocks may start and end
anywhere.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from service.scoring import ScoringModel
from training.features import MAX_SCALED
from training.kmeans import row_products
from training.thresholds import judge

# Rows scored at a time: few enough that their arrays stay in the CPU's caches, many enough
# that each numpy call (and the hand-over of the GIL to another thread around it) does a
# good amount of work. Measured on 1M rows with two scoring threads: 16384 over 8192.
BLOCK_ROWS = 16_384
# np.take's positions here are always in range (clusters, category codes + 1): mode="clip"
# never clips, and spares the bounds check's buffered copy of ``out`` that the default makes.
_TAKE: Final = "clip"


@dataclass(frozen=True)
class BlockVerdicts:
    """A block's verdicts; ``reason`` is a field position, ``len(fields)`` for none."""

    cluster: npt.NDArray[np.int64]
    distance: npt.NDArray[np.float64]
    score: npt.NDArray[np.float64]
    anomalous: npt.NDArray[np.bool_]
    reason: npt.NDArray[np.intp]


@dataclass(frozen=True)
class _Term:
    """One term of the assignment's product, for a block laid out (cluster, row).

    A numeric column: its row in the scaled numbers, its weights per cluster as (k, 1). A
    categorical field: its row in the codes, its weights per cluster and category as
    (k, 1 + categories), column 0 for an unseen category (zeros: it adds nothing).
    """

    source: int
    weights: npt.NDArray[np.float64]
    categorical: bool


class OutOfRange(Exception):
    """A scaled value beyond ``MAX_SCALED``, which ``FeatureSpec.transform`` refuses."""

    def __init__(self, index: int, field: int) -> None:
        super().__init__(index, field)
        self.index = index  # row in the block
        self.field = field  # position in the feature plan's numeric fields


class _Workspace:
    """One thread's arrays for a block of up to BLOCK_ROWS rows, reused from block to block."""

    def __init__(self, fp: Any, k: int, n_fields: int) -> None:
        rows, p = BLOCK_ROWS, len(fp.numeric)
        self.logged = np.empty((rows, p), dtype=np.float64)  # the reference's layout
        self.scaled = np.empty((p, rows), dtype=np.float64)
        self.sign = np.empty(rows, dtype=np.float64)
        self.x = np.empty((rows, fp.dim), dtype=np.float64)
        self.where = np.empty((len(fp.categorical), rows), dtype=np.intp)
        self.product = np.empty((k, rows), dtype=np.float64)  # (cluster, row): see _assign
        self.term = np.empty((k, rows), dtype=np.float64)
        self.labels = np.empty(rows, dtype=np.intp)
        self.at = np.empty(rows, dtype=np.intp)
        self.norms = np.empty(rows, dtype=np.float64)
        self.centre = np.empty((p, rows), dtype=np.float64)
        self.part = np.empty(rows, dtype=np.float64)
        self.zero = np.empty(rows, dtype=np.bool_)
        self.best = np.empty(rows, dtype=np.float64)
        self.better = np.empty(rows, dtype=np.bool_)
        # Field positions in the smallest unsigned type that holds "none" (len(fields)).
        self.reason = np.empty(rows, dtype=np.min_scalar_type(n_fields))
        self.step = np.empty(rows, dtype=self.reason.dtype)


class ColumnScorer:
    """Scores blocks of checked columns for one model; safe to call from several threads."""

    def __init__(self, model: ScoringModel) -> None:
        self.model = model
        fp = model.spec._plan
        plan = model._plan
        self._fp = fp
        self.n_fields = len(plan.fields)
        # The assignment's operands, from the very arrays NearestCentroids.assign uses.
        self._centroid_norms = np.ascontiguousarray(plan.nearest._norms[:, None])
        self._terms = _product_terms(fp, plan.nearest._minus_two_t)
        self._row_x = np.arange(0, BLOCK_ROWS * fp.dim, fp.dim)
        self._category_start = np.array(fp.category_start, dtype=np.intp)[:, None]
        self._spread = np.asarray(fp.spread, dtype=np.float64)[:, None]  # per row of scaled
        self._local = threading.local()
        centroids = np.asarray(model.centroids, dtype=np.float64)
        # Each cluster's centre in the numeric fields' columns, (p, k).
        self._numeric_centres = np.ascontiguousarray(centroids[:, fp.numeric_at].T)
        self._reasons: list[tuple[int, int, int, npt.NDArray[np.float64] | None]] = []
        parts = _categorical_parts(model)
        for f, name in enumerate(plan.fields):
            if plan.numeric[f]:
                self._reasons.append((f, fp.numeric.index(name), 0, None))
                continue
            i = fp.categorical.index(name)
            part = parts[i]
            codes = np.arange(-1, part.shape[1] - 1)
            # ScoredBatch.eligible: a positive part and a category other than the cluster's
            # usual one; always an unseen category (code -1, column 0).
            eligible = part > 0.0
            usual = plan.usual_column[plan.categorical_fields.index(f)]
            if usual.size:
                eligible &= codes[None, :] != (usual - fp.category_start[i])[:, None]
            eligible[:, 0] = True
            ranked = np.where(eligible, part, -1.0).reshape(-1)
            self._reasons.append((f, i, part.shape[1], ranked))

    def score(
        self, numbers: list[npt.NDArray[np.float64]], codes: npt.NDArray[np.intp], n: int
    ) -> BlockVerdicts:
        """Verdicts for ``n`` rows: finite numbers in the feature plan's order, category codes.

        ``codes`` is (categorical fields, n), -1 for a category not seen in training. Raises
        OutOfRange for the first value (by row) that ``FeatureSpec.transform`` would refuse.
        """
        work: _Workspace | None = getattr(self._local, "work", None)
        if work is None:
            work = self._local.work = _Workspace(self._fp, self.model.k, self.n_fields)
        cluster = np.empty(n, dtype=np.int64)
        distance = np.empty(n, dtype=np.float64)
        reason = np.empty(n, dtype=np.intp)
        for lo in range(0, n, BLOCK_ROWS):
            hi = min(lo + BLOCK_ROWS, n)
            rows = [values[lo:hi] for values in numbers]
            row_codes = codes[:, lo:hi]
            try:
                scaled, x = self._vectors(work, rows, row_codes, hi - lo)
            except OutOfRange as bad:
                raise OutOfRange(lo + bad.index, bad.field) from None
            labels = self._assign(work, x, scaled, row_codes, distance[lo:hi])
            self._top_reason(work, scaled, row_codes, labels, reason[lo:hi])
            cluster[lo:hi] = labels
        verdict = judge(self.model.thresholds, cluster, distance)
        return BlockVerdicts(cluster, distance, verdict.score, verdict.anomalous, reason)

    def _vectors(
        self,
        work: _Workspace,
        numbers: list[npt.NDArray[np.float64]],
        codes: npt.NDArray[np.intp],
        m: int,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """``FeatureSpec.transform`` of ``m`` rows: (scaled numbers, (p, m); vectors)."""
        fp = self._fp
        x = work.x[:m]
        x.fill(0.0)
        scaled = work.scaled[:, :m]
        if fp.n_logged:
            # training.features._signed_log1p: sign(x) * log1p(|x|). log1p, whose result
            # may depend on the layout, runs on the same strided view as there; sign, abs,
            # the product and the scaling are exact whatever the layout, so they run on
            # contiguous columns.
            logged = work.logged[:m, : fp.n_logged]
            for j in range(fp.n_logged):
                np.abs(numbers[j], out=logged[:, j])
            np.log1p(logged, out=logged)
            sign = work.sign[:m]
            for j in range(fp.n_logged):
                np.sign(numbers[j], out=sign)
                np.multiply(logged[:, j], sign, out=scaled[j])
        with np.errstate(over="ignore", invalid="ignore"):  # refused just below
            for j, values in enumerate(numbers):  # (raw - center) / spread
                np.subtract(values if j >= fp.n_logged else scaled[j], fp.center[j], out=scaled[j])
            scaled /= self._spread
        inside = not numbers or (scaled.max() <= MAX_SCALED and -scaled.min() <= MAX_SCALED)
        if not inside:  # NaN is not inside either
            bad = ~(np.abs(scaled) <= MAX_SCALED)
            index = int(bad.any(axis=0).argmax())
            raise OutOfRange(index, int(bad[:, index].argmax()))
        for j, column in enumerate(fp.numeric_at):
            x[:, column] = scaled[j]
        if codes.size:  # one-hot: flat positions, as fancy 2-d indexing is slower
            where = work.where[:, :m]
            np.add(codes, self._category_start, out=where)
            where += self._row_x[:m]
            x.reshape(-1)[where.reshape(-1) if codes.min() >= 0 else where[codes >= 0]] = 1.0
        return scaled, x

    def _assign(
        self,
        work: _Workspace,
        x: npt.NDArray[np.float64],
        scaled: npt.NDArray[np.float64],
        codes: npt.NDArray[np.intp],
        distance: npt.NDArray[np.float64],
    ) -> npt.NDArray[np.intp]:
        """``NearestCentroids.assign``'s batch formula: clusters; distances into ``distance``.

        The product ``x @ -2Cᵀ`` is summed as :func:`training.kmeans.row_products` sums it:
        term by term in column order, each a product then a sum. A one-hot column adds
        ``1 * w``, exactly ``w``, or a zero, which leaves the sum as it is (but for the sign
        of a zero sum, which adding ``||c||² >= 0`` erases); so a categorical field is one
        term, its row of ``-2Cᵀ`` looked up by category, and its zeros are skipped. The
        terms are laid out (cluster, row), each one contiguous pass over the block: 0.6 ms
        against einsum's 1.7 ms for 16 384 rows of 13 columns and k = 10.
        """
        m = len(x)
        product = work.product[:, :m]
        term = work.term[:, :m]
        for n, t in enumerate(self._terms):
            into = term if n else product
            if t.categorical:
                at = np.add(codes[t.source], 1, out=work.at[:m])
                np.take(t.weights, at, axis=1, out=into, mode=_TAKE)
            else:
                np.multiply(t.weights, scaled[t.source], out=into)
            if n:
                product += term
        product += self._centroid_norms
        labels = product.argmin(axis=0, out=work.labels[:m])
        squared = np.min(product, axis=0, out=distance)  # the value argmin picks, exactly
        # ||x||² as NearestCentroids computes it: this einsum's own summation order, which
        # is not column order; so the vectors ``x`` are still built, for this alone.
        squared += np.einsum("ij,ij->i", x, x, out=work.norms[:m])
        np.maximum(squared, 0.0, out=squared)
        np.sqrt(squared, out=squared)
        return labels

    def _top_reason(
        self,
        work: _Workspace,
        scaled: npt.NDArray[np.float64],
        codes: npt.NDArray[np.intp],
        labels: npt.NDArray[np.intp],
        reason: npt.NDArray[np.intp],
    ) -> None:
        """``ScoredBatch.top_reason`` as field positions, into ``reason``."""
        m = len(labels)
        # The numeric fields' parts, (scaled - centre)², all at once.
        parts = np.take(self._numeric_centres, labels, axis=1, out=work.centre[:, :m], mode=_TAKE)
        np.subtract(scaled, parts, out=parts)
        np.multiply(parts, parts, out=parts)
        best = work.best[:m]
        best.fill(-1.0)  # below every part that may be named
        top = work.reason[:m]
        top.fill(self.n_fields)
        better = work.better[:m]
        step = work.step[:m]
        for f, column, width, ranked in self._reasons:
            if ranked is None:
                part = parts[column]
                # Named only if positive: a zero part ranks as -1.0, as never named.
                part -= np.equal(part, 0.0, out=work.zero[:m])
            else:
                at = np.multiply(labels, width, out=work.at[:m])
                at += codes[column]
                at += 1
                part = np.take(ranked, at, out=work.part[:m], mode=_TAKE)
            np.greater(part, best, out=better)  # strictly: the first largest wins, as argmax
            np.maximum(best, part, out=best)
            # top = f where better: top += better * (f - top), in unsigned (modular)
            # arithmetic, branch-free where a masked copy is not.
            np.subtract(top.dtype.type(f), top, out=step)
            step *= better.view(np.uint8)
            top += step
        reason[:] = top


def _product_terms(fp: Any, minus_two_t: npt.NDArray[np.float64]) -> list[_Term]:
    """The terms of ``x @ minus_two_t`` in column order, for :meth:`ColumnScorer._assign`.

    A categorical field is one term, at its first column (its columns are adjacent).
    """
    terms: list[tuple[int, _Term]] = []
    for j, column in enumerate(fp.numeric_at):
        weights = np.ascontiguousarray(minus_two_t[column, :, None])
        terms.append((int(column), _Term(j, weights, categorical=False)))
    for i, (start, index) in enumerate(zip(fp.category_start, fp.category_index, strict=True)):
        weights = np.zeros((minus_two_t.shape[1], len(index) + 1), dtype=np.float64)
        weights[:, 1:] = minus_two_t[start : start + len(index)].T
        terms.append((int(start), _Term(i, weights, categorical=True)))
    return [term for _, term in sorted(terms, key=lambda t: t[0])]


def _categorical_parts(model: ScoringModel) -> list[npt.NDArray[np.float64]]:
    """Per categorical field, its part of the squared distance, (k, categories + 1).

    Column 0 is an unseen category (all its columns 0), column c + 1 category c. Computed
    as ``score_columns`` computes it, ``row_products(diff * diff, group)``, on rows that
    differ from their cluster's centre in that field's columns only.
    """
    fp = model.spec._plan
    plan = model._plan
    centroids = np.asarray(model.centroids, dtype=np.float64)
    k = len(centroids)
    parts = []
    for i, name in enumerate(fp.categorical):
        f = plan.fields.index(name)
        start = fp.category_start[i]
        width = int(plan.group[:, f].sum()) + 1
        centre = np.repeat(centroids, width, axis=0)
        x = centre.copy()
        x[:, start : start + width - 1] = np.tile(np.eye(width, width - 1, -1), (k, 1))
        diff = x - centre
        grouped = row_products(diff * diff, plan.group)
        parts.append(np.ascontiguousarray(grouped[:, f].reshape(k, width)))
    return parts
