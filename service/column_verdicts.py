"""Verdicts for blocks of parsed columns, equal bit for bit to ``score_columns``' ones.

:class:`ColumnScorer` computes a block's cluster, distance, score, anomalous flag and top
reason, and nothing else: no reasons as objects, no shares. Every number that reaches the
output comes from the same floating-point operations, in the same order, as
``FeatureSpec.transform``, ``NearestCentroids.assign``, ``judge`` and
``ScoredBatch.top_reason`` (where an operation's result may depend on its arrays' layout,
on arrays of the same layout), so it is the same value; the work is done a cache-sized
block of rows at a time in arrays each thread reuses.

The row-by-row work is done by the C kernels ``magnitudes``, ``scale_rows`` and
``nearest`` (:mod:`service.kernels`): plain IEEE operations, each rounded on its own, give
the same values as numpy's elementwise ones. The two steps whose results may depend on the
layout stay numpy's own calls: ``log1p``, on a view laid out as the reference's, and
``||x||²``, by the same einsum.

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
from typing import Any

import numpy as np
import numpy.typing as npt

from service import kernels
from service.scoring import ScoringModel
from training.features import MAX_SCALED
from training.kmeans import row_products
from training.thresholds import judge

# Rows scored at a time: few enough that their arrays stay in the CPU's caches, many enough
# that each call (and the hand-over of the GIL to another thread around it) does a good
# amount of work.
BLOCK_ROWS = 16_384


@dataclass(frozen=True)
class BlockVerdicts:
    """A block's verdicts; ``reason`` is a field position, ``len(fields)`` for none."""

    cluster: npt.NDArray[np.int64]
    distance: npt.NDArray[np.float64]
    score: npt.NDArray[np.float64]
    anomalous: npt.NDArray[np.bool_]
    reason: npt.NDArray[np.int64]


class OutOfRange(Exception):
    """A scaled value beyond ``MAX_SCALED``, which ``FeatureSpec.transform`` refuses."""

    def __init__(self, index: int, field: int) -> None:
        super().__init__(index, field)
        self.index = index  # row in the block
        self.field = field  # position in the feature plan's numeric fields


class _Workspace:
    """One thread's arrays for a block of up to BLOCK_ROWS rows, reused from block to block."""

    def __init__(self, fp: Any) -> None:
        rows, p = BLOCK_ROWS, len(fp.numeric)
        self.logged = np.empty((rows, p), dtype=np.float64)  # the reference's layout
        self.scaled = np.empty((p, rows), dtype=np.float64)
        self.x = np.empty((rows, fp.dim), dtype=np.float64)
        self.norms = np.empty(rows, dtype=np.float64)


class ColumnScorer:
    """Scores blocks of checked columns for one model; safe to call from several threads."""

    def __init__(self, model: ScoringModel) -> None:
        self.model = model
        fp = model.spec._plan
        plan = model._plan
        self._fp = fp
        self.n_fields = len(plan.fields)
        self._local = threading.local()
        self._center = np.asarray(fp.center, dtype=np.float64)
        self._spread = np.asarray(fp.spread, dtype=np.float64)
        self._numeric_at = np.asarray(fp.numeric_at, dtype=np.int64)
        self._category_start = np.asarray(fp.category_start, dtype=np.int64)
        # The assignment's operands, from the very arrays NearestCentroids.assign uses.
        self._centroid_norms = np.ascontiguousarray(plan.nearest._norms)
        terms = _product_terms(fp, plan.nearest._minus_two_t)
        self._kinds = np.array([kind for kind, _, _ in terms], dtype=np.int64)
        self._sources = np.array([source for _, source, _ in terms], dtype=np.int64)
        widest = max((len(weights) for _, _, weights in terms), default=1)
        # (term, column, cluster): a column's weights for all clusters lie side by side.
        self._weights = np.zeros((len(terms), widest, model.k), dtype=np.float64)
        for t, (_, _, weights) in enumerate(terms):
            self._weights[t, : len(weights)] = weights
        centroids = np.asarray(model.centroids, dtype=np.float64)
        # Each cluster's centre in the numeric fields' columns, (p, k).
        self._numeric_centres = np.ascontiguousarray(centroids[:, fp.numeric_at].T)
        # One reason per field, in field order: (kind, source, width), and its ranked parts.
        reasons: list[tuple[int, int, int]] = []
        ranked_parts: list[npt.NDArray[np.float64]] = []
        parts = _categorical_parts(model)
        for f, name in enumerate(plan.fields):
            if plan.numeric[f]:
                reasons.append((kernels.TERM_NUMERIC, fp.numeric.index(name), 0))
                ranked_parts.append(np.zeros(0))
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
            reasons.append((kernels.TERM_CATEGORICAL, i, part.shape[1]))
            ranked_parts.append(np.where(eligible, part, -1.0).reshape(-1))
        self._reasons = np.array(reasons, dtype=np.int64).reshape(-1, 3)
        longest = max((len(part) for part in ranked_parts), default=0)
        self._ranked = np.zeros((len(reasons), max(longest, 1)), dtype=np.float64)
        for e, part in enumerate(ranked_parts):
            self._ranked[e, : len(part)] = part

    def score(
        self, numbers: npt.NDArray[np.float64], codes: npt.NDArray[np.int64], n: int
    ) -> BlockVerdicts:
        """Verdicts for ``n`` rows: finite numbers in the feature plan's order, category codes.

        ``numbers`` is (numeric fields, n), ``codes`` (categorical fields, n), -1 for a
        category not seen in training. Raises OutOfRange for the first value (by row) that
        ``FeatureSpec.transform`` would refuse.
        """
        work: _Workspace | None = getattr(self._local, "work", None)
        if work is None:
            work = self._local.work = _Workspace(self._fp)
        numbers = np.ascontiguousarray(numbers, dtype=np.float64)
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        p, n_logged, k = len(self._fp.numeric), self._fp.n_logged, self.model.k
        cluster = np.empty(n, dtype=np.int64)
        distance = np.empty(n, dtype=np.float64)
        reason = np.empty(n, dtype=np.int64)
        for lo in range(0, n, BLOCK_ROWS):
            hi = min(lo + BLOCK_ROWS, n)
            m = hi - lo
            if n_logged:
                # training.features._signed_log1p's log1p, whose result may depend on the
                # layout: on the same strided view as there (the kernel applies the sign).
                kernels.magnitudes(numbers, p, n, lo, m, n_logged, work.logged)
                logged = work.logged[:m, :n_logged]
                np.log1p(logged, out=logged)
            x = work.x[:m]
            bad = kernels.scale_rows(
                *(numbers, p, n, lo, m),
                *(work.logged, n_logged),
                *(self._center, self._spread, MAX_SCALED, self._numeric_at),
                *(codes, len(codes), self._category_start),
                *(work.scaled, BLOCK_ROWS, x, x.shape[1]),
            )
            if bad >= 0:
                raise OutOfRange(lo + bad // p, bad % p)
            # ||x||² as NearestCentroids computes it: this einsum's own summation order,
            # which is not column order; so the vectors ``x`` are built, for this alone.
            norms = np.einsum("ij,ij->i", x, x, out=work.norms[:m])
            kernels.nearest(
                *(work.scaled, BLOCK_ROWS, codes, n, lo, m),
                *(norms, len(self._kinds), self._kinds, self._sources),
                *(self._weights, self._weights.shape[1], k),
                *(self._centroid_norms, self._numeric_centres),
                *(self._reasons, self._ranked, self._ranked.shape[1]),
                self.n_fields,
                *(cluster[lo:hi], distance[lo:hi], reason[lo:hi]),
            )
        verdict = judge(self.model.thresholds, cluster, distance)
        return BlockVerdicts(cluster, distance, verdict.score, verdict.anomalous, reason)


def _product_terms(
    fp: Any, minus_two_t: npt.NDArray[np.float64]
) -> list[tuple[int, int, npt.NDArray[np.float64]]]:
    """The terms of ``x @ minus_two_t`` in column order: (kind, source, weights).

    A numeric column: its row in the scaled numbers, its weights per cluster as (1, k). A
    categorical field, one term at its first column (its columns are adjacent): its row in
    the codes, its weights per category and cluster as (1 + categories, k), row 0 for an
    unseen category (zeros: it adds nothing).
    """
    terms: list[tuple[int, tuple[int, int, npt.NDArray[np.float64]]]] = []
    for j, column in enumerate(fp.numeric_at):
        weights = minus_two_t[column][None, :]
        terms.append((int(column), (kernels.TERM_NUMERIC, j, weights)))
    for i, (start, index) in enumerate(zip(fp.category_start, fp.category_index, strict=True)):
        weights = np.zeros((len(index) + 1, minus_two_t.shape[1]), dtype=np.float64)
        weights[1:] = minus_two_t[start : start + len(index)]
        terms.append((int(start), (kernels.TERM_CATEGORICAL, i, weights)))
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
