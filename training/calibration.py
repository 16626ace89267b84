"""Fitting per-cluster thresholds on a calibration sample, and judging them against labels.

The calibration sample is every held-out row plus a uniform sample of the training rows with
their leave-one-out distances (:func:`leave_one_out`; see "Which rows" below).

Two policies (see :class:`training.thresholds.ThresholdPolicy`):

``quantile``: each cluster's threshold is that quantile of its own calibration distances, so
every cluster alerts at about the same rate (``1 - quantile``), rare-pattern clusters on top.
The quantile is read as new rows will exceed it (see :func:`_per_cluster_quantiles`): read
linearly, the 0.99 quantile of a cluster with under a hundred held-out rows sits between its
largest rows, and the benchmark's sets flagged 1.1 to 2.9 times the asked rate (34 of 120 runs
within ±30 %, seeds 0-19, held-out rows only); read this way, 70 of 120 (114 of 120 at 0.95,
from 96).

``target_alert_rate`` (the default): every cluster gets its own threshold of the form::

    threshold[c] = (cut * spread[c] ** spread_weight * (k * share[c]) ** share_weight
                    * exp(-outlying_weight * outlying[c]))

``spread[c]`` is the 0.9 quantile of cluster ``c``'s calibration distances (how far its outer
shell lies), ``share[c]`` its share of the training rows, ``outlying[c]`` how far its centre
lies from the centre of all the data in units of the data's overall spread (see
:func:`_outlyingness`: it needs only the centroids, the shares and the calibration distances),
and ``cut`` one number chosen so that the model's expected alert rate, rare-pattern clusters
included, is the policy's target. The weights are 0.5, 0.5 and, by default, 1
(``ThresholdPolicy.outlying_weight``, which operators may set: 0 turns the factor off).

Why the outlyingness: Isolation Forest's edge over a distance to the nearest centre is that it
sees where a row lies in the whole data, and a K-Means cluster made of anomalies tends to sit
out on the edge of the data with a wide, sparse shell; judged by its own width, its rows looked
ordinary. Scaling each threshold by ``exp(-outlying[c])`` judges such a cluster more strictly
(the score of each row still ranks like its distance within its cluster). On the benchmark
(k=10, tuned on seeds 0-4, checked on seeds 5-19 before it was adopted) the mean margin of the
median ROC-AUC over Isolation Forest's went from -0.005 to +0.009 on seeds 5-19 (at or above it
on 14 of 15 seeds, from 5), and over seeds 0-19 from -0.004 to +0.010 (19 of 20 seeds, from 7),
with the flagged share within ±30 % on 104 of 120 runs (from 105). The share weight fell from 1
to 0.5 with it: a cluster of anomalies is often both small and far out, and both factors at full
weight count that twice (0.25, 0.5 and 1 gave +0.010, +0.010 and +0.003 over seeds 0-19).
Either factor alone is 0.004 below Isolation Forest. What it costs: a normal segment that lies
far out is judged more strictly too. Over seeds 0-19 the median-over-sets PR-AUC rose from
0.490 to 0.505 and recall at the 1 % alert rate from 0.102 to 0.115, but thyroid's recall fell
from 0.16 to 0.12 and satellite's ROC-AUC from 0.77 to 0.73. On the demo data
(``training.demo``, 100k rows, seeds 0-9) ROC-AUC rose on 9 of 10 seeds (about +0.005),
while recall at 1 % fell by 0.014 on average and PR-AUC by 0.03 (by 0.1 on three seeds,
where a far-out cluster of normal rows took the top of the ranking).

The centres' distances are measured in the data's own scale (the root of its total variance),
so the measure is the same in any units. An exponential rather than a power
(``outlying ** -w``) keeps a cluster at the very centre (outlying 0) at a finite weight, and
measured the same (+0.0053 against +0.0060 on seeds 0-4).

Why not a plain per-cluster quantile: a quantile per cluster makes every cluster alert at
the same rate, so a cluster made of anomalies is flagged no more than a normal one. On the
ADBench sets of ``benchmarks/quality.py`` (k=10, seeds 0-4, ``--seeds 5 --explore``) the
median ROC-AUC of per-cluster normalisation (``spread_weight=1, share_weight=0``) is 0.28
below Isolation Forest's, one global distance cut (``0, 0``) 0.15 below, and the
share-weighted rule (``0.5, 1``, no outlyingness) 0.002 below; over seeds 0-19 the same three
are 0.28, 0.15 and 0.004 below, and the defaults 0.010 above (``--seeds 20 --explore``).
Weighting by the training share is the soft counterpart of the rare-pattern rule (a smaller
cluster is judged more strictly, the idea behind CBLOF); the rule itself stays.

Why the 0.9 quantile and not the median as the spread: thresholds live in each cluster's tail,
so the width that matters is where the cluster's outer shell lies, not where its core is. A
median is set by the core alone, and K-Means cores are often degenerate (many near-identical
rows give a median near 0 while the cluster still has an ordinary tail), which made such a
cluster's ordinary tail rows look anomalous. On the same benchmark at k=10 the gap to Isolation
Forest's median ROC-AUC narrowed from 0.011 (median) to 0.004 (0.9 quantile), averaged over
seeds 0-19, and the median ROC-AUC rose on 19 of the 20 seeds; over seeds 0-4 the 0.75 and
0.95 quantiles give 0.006 and 0.004. At k=20 and k=40 the median does slightly better (0.043
vs 0.049 and 0.069 vs 0.078 below): the gain was measured at the product's k=10.

What else was measured and left out, before the outlyingness factor (k=10, seeds 0-19, the
then defaults' median ROC-AUC 0.004 below Isolation Forest's on average and at or above it on
7 of the 20 seeds): other spreads (mean, RMS, median + 2 MAD, the 0.75 and 0.95 quantiles),
spread weights from -1 to 1, share weights from 0.5 to 2, capping ``k * share``, CBLOF-like
tiers of large and small clusters, a core-to-shell ratio, a Gaussian log-density score,
rare-pattern rows ranked just above the boundary rather than on top, and robust or log1p
feature scaling. None moved the margin by more than its seed-to-seed error without losing as
much elsewhere, and the best of 150 random weightings chosen on seeds 0-9 was still 0.001
below Isolation Forest on seeds 10-19. The outlyingness factor also carries to other k: the
mean margin is -0.009 at k=5, +0.017 at k=8, +0.010 at k=10, +0.003 at k=15 and -0.002 at
k=20 (from -0.018, +0.013, -0.004, -0.020 and -0.043; ``benchmarks/quality.py --seeds 20
--explore``). How far per-cluster thresholds could go at all: chosen with the labels (ten
numbers per set, fitted to each set's own ROC-AUC, so an upper bound, not a rule), they give a
median ROC-AUC of 0.984 at k=10 on seed 0, against 0.942 here and Isolation Forest's 0.941.

Before the training rows joined the sample, the flagged share's spread over seeds was what a
cut resting on a handful of held-out rows allows (3.7 rows on cardio at 1 %): no weighting
kept more than 107 of the 120 runs within ±30 % (the defaults: 104). Estimating each
cluster's alert rate from the pooled tail of all clusters' normalised distances did worse:
the clusters' tails differ in shape, and it kept 59 of 120 (72 when only shrunk towards the
pooled tail). More rows of each cluster's own tail was the answer.

Which rows: a cluster's distances from its own training rows are biased small (the centre is
their mean, pulled towards each of them), which is why thresholds were once fitted on the
held-out rows alone. For a centre that is the mean of its ``n`` rows the bias is exact and
removable: a row's distance to the mean of the *other* ``n - 1`` rows is its distance to the
centre times ``n / (n - 1)`` (:func:`leave_one_out`). With the training rows' leave-one-out
distances the sample is five times larger, and the alert rate at 1 % rests on five times as
many tail rows. On the benchmark (k=10, seeds 0-19, each row judged by thresholds fitted
without it: ``benchmarks/quality.py``'s cross-fitted share) the flagged share was within
±30 % of 1 % on 106 of 120 runs with held-out rows alone and on 120 of 120 with both (at
k = 5, 8, 15 and 20: 100 %, 100 %, 100 % and 99 % of runs, from 82-89 %); the median ROC-AUC
moved by +0.0005 on average. The per-cluster quantile policy, whose thresholds rest on each
cluster's own tail, went from 71 to 105 of 120. The correction removes the centre's pull
towards its rows, not the partition's fit to them: thresholds fitted on the training rows
alone flag the held-out rows at 1.05 % for a 1 % target (1.09 % from plain in-sample
distances; mean of 120 runs, standard error 0.03 %), a small bias next to the sampling error
the extra rows remove.

How ``cut`` is chosen (post-stratification): the expected alert rate is
``sum_c share[c] * (alert rate of cluster c's calibration rows)``, rare-pattern clusters
counting with their whole share. The training shares are measured on every training row,
while the held-out sample's own cluster mix is noisy for small clusters, and small clusters
are exactly where the share-weighted thresholds spend the alert budget, so a small cluster
over- or under-represented in the held-out rows used to move the alert rate by a third or
more. On the benchmark (k=10, seeds 0-19, 120 runs) the runs whose flagged share missed the
1 % target by more than 30 % fell from 30 to 18 with this alone (15 with the 0.9-quantile
spread); measured with held-out rows alone, before the training rows joined them. When the
sample's mix equals the training mix this is the plain alert rate on the sample.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from training.errors import DataError
from training.thresholds import ThresholdPolicy, Thresholds, judge

# Defaults chosen on the ADBench benchmark (benchmarks/quality.py): see the module docstring.
SPREAD_WEIGHT = 0.5
SHARE_WEIGHT = 0.5
# A cluster's spread is this quantile of its calibration distances: see the module docstring.
SPREAD_QUANTILE = 0.9
# k * share is clipped here so that an empty training cluster still gets a threshold > 0.
_SHARE_RATIO_FLOOR = 1e-3
# Thresholds never go below this fraction of the pooled median distance (or of 1.0 when
# every distance is 0), nor below an absolute floor: a zero or subnormal threshold would
# make every later row of that cluster an alert with an infinite score.
_FLOOR_FRACTION = 1e-6
_FLOOR_ABSOLUTE = 1e-12
# exp(-x) is taken no further than this: a cluster far out (a tiny one, with the rare-pattern
# rule off) keeps a weight > 0, so the cut's normalised distances stay finite.
_MAX_EXPONENT = 30.0


def calibrate(
    clusters: npt.ArrayLike,
    distances: npt.ArrayLike,
    *,
    cluster_shares: npt.ArrayLike,
    centroids: npt.ArrayLike,
    policy: ThresholdPolicy,
    model_version: str,
    version: int = 1,
    parent: int | None = None,
    spread_weight: float = SPREAD_WEIGHT,
    share_weight: float = SHARE_WEIGHT,
    spread_quantile: float = SPREAD_QUANTILE,
) -> Thresholds:
    """Per-cluster thresholds from a calibration (cluster, distance) sample: held-out rows and
    training rows' leave-one-out distances (see :func:`leave_one_out`), or new rows.

    Clusters whose training share is below ``policy.rare_share`` are rare patterns (all
    their rows alert); the remaining alert budget goes to the other clusters. Under
    ``target_alert_rate`` the budget is an expected rate over the training cluster mix: each
    cluster's alert rate on the sample weighted by its training share (see the module
    docstring). Clusters with fewer than ``policy.min_points`` rows in the sample are marked
    ``fallback``: their spread is shrunk towards the pooled one (all the way for an empty
    cluster).
    """
    shares = _as_shares(cluster_shares)
    k = shares.shape[0]
    cl, dist = _as_sample(clusters, distances, k)
    centres = _as_centroids(centroids, k)
    for name, weight in (("spread_weight", spread_weight), ("share_weight", share_weight)):
        if not (math.isfinite(weight) and weight >= 0.0):
            raise DataError(f"{name} must be a finite number >= 0, got {weight!r}")
    if not (0.0 < spread_quantile < 1.0):
        raise DataError(f"spread_quantile must be in (0, 1), got {spread_quantile!r}")
    n = dist.shape[0]
    rare = shares < policy.rare_share
    counts = np.bincount(cl, minlength=k).astype(np.int64)
    rare_row = rare[cl]
    normal = ~rare_row

    pooled = _scale(dist[normal] if normal.any() else dist, spread_quantile, default=1.0)
    spread, fallback = _spreads(cl, dist, counts, policy.min_points, pooled, spread_quantile)
    ratio = np.maximum(k * shares, _SHARE_RATIO_FLOOR)
    mass = _cluster_mass(shares, counts)
    outlying = _outlyingness(centres, mass, dist)
    weight = (
        spread**spread_weight
        * ratio**share_weight
        * np.exp(-np.minimum(policy.outlying_weight * outlying, _MAX_EXPONENT))
    )

    rate = policy.expected_alert_rate
    rare_mass = float(mass[rare].sum())
    floor = max(_FLOOR_FRACTION * pooled, _FLOOR_ABSOLUTE)
    if policy.kind == "quantile":
        values = _per_cluster_quantiles(
            cl, dist, np.maximum(spread, floor), fallback, normal, policy.value
        )
        method, cut, need = "per_cluster_quantile", math.nan, 0.0
    else:
        need = rate - rare_mass
        row_weight = _row_weights(mass, counts, rare)
        cut = _cut(dist[normal] / weight[cl[normal]], row_weight[cl[normal]], need)
        values = cut * weight
        method = "share_weighted"
    values = np.maximum(values, floor)

    # The same decision as thresholds.judge, so recorded rates are what serving will do.
    alerts = (dist > values[cl]) | rare_row
    per_cluster = np.bincount(cl, weights=alerts.astype(np.float64), minlength=k)
    alert_rates = np.divide(
        per_cluster, counts, out=np.zeros(k, dtype=np.float64), where=counts > 0
    )
    realised = float(alerts.mean())
    extra: dict[str, Any] = {
        "method": method,
        "spread_weight": float(spread_weight),
        "share_weight": float(share_weight),
        "spread_quantile": float(spread_quantile),
        "cut": None if math.isnan(cut) else float(cut),
        "spreads": [float(s) for s in spread],
        "outlyingness": [float(o) for o in outlying],
        "calibration_rows": n,
        "target_alert_rate": float(rate),
        # What judge flags on the sample's rows as they are...
        "realised_alert_rate": realised,
        # ...and over the training cluster mix (what the cut is chosen on).
        "expected_alert_rate": _expected_rate(mass, counts, rare, alert_rates),
        "rare_alert_rate": rare_mass,
        # Rare-pattern clusters alone use up the budget: no distance alerts were left to spend.
        "budget_exhausted": bool(rare.any()) and need <= 0.0,
    }
    return Thresholds(
        version=version,
        model_version=model_version,
        policy=policy,
        values=values.astype(np.float64),
        rare=rare,
        counts=counts,
        alert_rates=alert_rates,
        fallback=fallback,
        parent=parent,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        extra=extra,
    )


def leave_one_out(
    clusters: npt.ArrayLike, distances: npt.ArrayLike, counts: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Training rows' distances to their cluster's centre with the row itself left out.

    ``counts[c]`` is the number of training rows of cluster ``c``, whose centre is their
    mean: the mean of the other ``n - 1`` rows lies ``n / (n - 1)`` times as far from the row
    as the centre does. Rows of a cluster with fewer than two training rows have no such
    distance and are left out of the result.
    """
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or not np.all(np.isfinite(n)) or np.any(n < 0):
        raise DataError("counts must be a 1-d array of finite numbers >= 0")
    cl, dist = _as_sample(clusters, distances, n.shape[0], allow_empty=True)
    own = n[cl]
    keep = own >= 2.0
    return cl[keep], dist[keep] * (own[keep] / (own[keep] - 1.0))


def label_report(
    clusters: npt.ArrayLike,
    distances: npt.ArrayLike,
    labels: npt.ArrayLike,
    thresholds: Thresholds,
) -> dict[str, Any]:
    """How the thresholds do on labelled held-out rows, overall and per cluster.

    JSON-ready: a rate that is undefined (no alerts, no positives, one class only) is
    ``None``, never NaN.
    """
    cl, dist = _as_sample(clusters, distances, thresholds.k)
    y = _as_labels(labels, dist.shape[0])
    verdict = judge(thresholds, cl, dist)
    alerts = verdict.anomalous
    rows = []
    for c in range(thresholds.k):
        member = cl == c
        rows.append(
            {"cluster": c, "rare_pattern": bool(thresholds.rare[c])}
            | _counts(alerts[member], y[member])
        )
    overall = _counts(alerts, y)
    overall["roc_auc"] = _or_none(roc_auc(verdict.score, y))
    overall["pr_auc"] = _or_none(average_precision(verdict.score, y))
    return {
        "thresholds_version": thresholds.version,
        "policy": thresholds.policy.to_dict(),
        "overall": overall,
        "clusters": rows,
    }


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve (ties count half, as in scikit-learn); NaN for one class."""
    s, y = _as_scored(scores, labels)
    n_pos = int(np.count_nonzero(y))
    n_neg = int(y.shape[0]) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(s)
    # Mann-Whitney U: the positives' rank sum less its minimum, over all pairs.
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def average_precision(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Average precision (area under the step PR curve, as scikit-learn); NaN without positives."""
    s, y = _as_scored(scores, labels)
    if not y.any():
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    hits = np.cumsum(y[order])
    # One point per distinct score: tied rows enter the curve together.
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.shape[0] - 1]
    tp = hits[last].astype(np.float64)
    precision = tp / (last + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _spreads(
    clusters: npt.NDArray[np.int64],
    distances: npt.NDArray[np.float64],
    counts: npt.NDArray[np.int64],
    min_points: int,
    pooled: float,
    quantile: float,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Each cluster's spread (see :func:`_scale`) and whether it fell back on the pooled one."""
    k = counts.shape[0]
    spread = np.full(k, pooled, dtype=np.float64)
    fallback = counts < min_points
    for c, group in enumerate(_by_cluster(clusters, distances, counts)):
        if group.size == 0:
            continue
        own = _scale(group, quantile, default=pooled)
        if fallback[c]:
            # Few points: trust the cluster's own spread in proportion to how many it has,
            # so one stray held-out row cannot set a cluster's threshold on its own.
            trust = group.size / min_points
            own = pooled ** (1.0 - trust) * own**trust
        spread[c] = own
    return spread, fallback


def _per_cluster_quantiles(
    clusters: npt.NDArray[np.int64],
    distances: npt.NDArray[np.float64],
    spread: npt.NDArray[np.float64],
    fallback: npt.NDArray[np.bool_],
    normal: npt.NDArray[np.bool_],
    quantile: float,
) -> npt.NDArray[np.float64]:
    """Each cluster's own distance quantile, as new rows will exceed it; too-small clusters
    borrow the pooled one.

    Quantiles are read at plotting positions ``i / (n + 1)`` (numpy's ``weibull``): a new row
    exceeds the i-th smallest of n held-out distances with probability ``(n + 1 - i) / (n + 1)``
    on average, so a cluster alerts new rows at ``1 - quantile``. (The default linear reading
    puts the 0.99 quantile of 50 rows between the two largest, which new rows exceed about
    3 % of the time.) A cluster's own rows reach no further than ``n / (n + 1)``, its largest
    row; beyond that its tail is taken to fall like the pooled tail, scaled to pass through
    its largest row, so the threshold still rises with the quantile.

    The pooled tail is made of distances normalised by their cluster's spread; a cluster
    marked ``fallback`` gets its quantile scaled back by its (shrunk) spread, so it keeps the
    cluster's width. ``spread`` must already be floored above zero (a subnormal spread would
    overflow).
    """
    z = (
        distances[normal] / spread[clusters[normal]]
        if normal.any()
        else distances / spread[clusters]
    )

    def pooled(q: float) -> float:
        return float(np.quantile(z, q, method="weibull")) if z.size else 1.0

    values = pooled(quantile) * spread
    counts = np.bincount(clusters, minlength=spread.shape[0])
    for c, group in enumerate(_by_cluster(clusters, distances, counts)):
        if fallback[c] or not group.size:
            continue
        reach = group.size / (group.size + 1.0)
        if quantile <= reach:
            values[c] = float(np.quantile(group, quantile, method="weibull"))
        else:
            base = pooled(reach)
            values[c] = float(group.max()) * (pooled(quantile) / base if base > 0.0 else 1.0)
    return values


def _by_cluster(
    clusters: npt.NDArray[np.int64],
    distances: npt.NDArray[np.float64],
    counts: npt.NDArray[np.int64],
) -> list[npt.NDArray[np.float64]]:
    """The distances of each cluster 0..k-1 (``counts`` = bincount of ``clusters``)."""
    order = np.argsort(clusters, kind="stable")
    return np.split(distances[order], np.cumsum(counts)[:-1])


def _scale(values: npt.NDArray[np.float64], quantile: float, *, default: float) -> float:
    """The ``quantile`` of ``values``, else their mean (when that quantile is 0), else
    ``default``: always > 0."""
    if values.size:
        q = float(np.quantile(values, quantile))
        if q > 0.0:
            return q
        mean = float(values.mean())
        if mean > 0.0:
            return mean
    return default


def _cluster_mass(
    shares: npt.NDArray[np.float64], counts: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """Each cluster's share of the data the alert rate is about: its training share
    (normalised), or its held-out share when the training shares are all 0."""
    total = float(shares.sum())
    if total > 0.0:
        return shares / total
    return counts / float(counts.sum())


def _row_weights(
    mass: npt.NDArray[np.float64], counts: npt.NDArray[np.int64], rare: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    """What one held-out row of each cluster counts for in the expected alert rate.

    A non-rare cluster's rows share its mass; the mass of non-rare clusters without held-out
    rows is spread over the others (their alert rate is taken to be the average). Rare
    clusters weigh 0 here: they count with their whole mass, outside the distance budget.
    """
    live = ~rare & (counts > 0)
    left = max(1.0 - float(mass[rare].sum()), 0.0)
    live_mass = float(mass[live].sum())
    if live_mass > 0.0:
        per_row = mass / np.maximum(counts, 1) * (left / live_mass)
    else:
        per_row = np.full(mass.shape, left / max(int(counts[live].sum()), 1))
    return np.where(live, per_row, 0.0)


def _expected_rate(
    mass: npt.NDArray[np.float64],
    counts: npt.NDArray[np.int64],
    rare: npt.NDArray[np.bool_],
    alert_rates: npt.NDArray[np.float64],
) -> float:
    """Rare clusters' mass plus every other cluster's held-out alert rate, share-weighted."""
    row_weight = _row_weights(mass, counts, rare)
    return float(mass[rare].sum() + np.sum(row_weight * counts * alert_rates))


def _cut(z: npt.NDArray[np.float64], weights: npt.NDArray[np.float64], need: float) -> float:
    """A cut on normalised distances whose exceeding rows weigh as close to ``need`` as the
    rows allow (barring ties): midway between the last row kept and the first row flagged."""
    if z.size == 0:
        return 1.0
    order = np.argsort(-z, kind="stable")
    zs = z[order]
    m = zs.shape[0]
    # Flagging the top j rows (j = 0..m) spends reached[j]; take the j closest to the need.
    reached = np.r_[0.0, np.cumsum(weights[order])]
    j = int(np.argmin(np.abs(reached - need))) if need > 0.0 else 0
    if j == 0:
        # Just above the largest: cut * weight must stay above that row's distance after rounding.
        return float(zs[0]) * (1.0 + 1e-9)
    if j == m:
        return float(zs[-1]) / 2.0
    return float(zs[j - 1] + zs[j]) / 2.0


def _counts(alerts: npt.NDArray[np.bool_], y: npt.NDArray[np.bool_]) -> dict[str, Any]:
    """Count, alert rate, precision and recall of one group of rows."""
    n = int(alerts.shape[0])
    flagged = int(np.count_nonzero(alerts))
    positives = int(np.count_nonzero(y))
    hits = int(np.count_nonzero(alerts & y))
    return {
        "count": n,
        "positives": positives,
        "alerts": flagged,
        "alert_rate": flagged / n if n else None,
        "precision": hits / flagged if flagged else None,
        "recall": hits / positives if positives else None,
    }


def _average_ranks(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1-based ranks, tied values sharing their average rank."""
    n = values.shape[0]
    order = np.argsort(values, kind="mergesort")
    starts = np.r_[0, np.flatnonzero(np.diff(values[order])) + 1]
    ends = np.r_[starts[1:], n]
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _or_none(value: float) -> float | None:
    """``None`` for NaN, so reports stay valid JSON."""
    return None if math.isnan(value) else value


def _as_shares(cluster_shares: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Training shares as a validated 1-d float array."""
    shares = np.asarray(cluster_shares, dtype=np.float64)
    if shares.ndim != 1 or shares.shape[0] < 1:
        raise DataError(f"cluster_shares must be a 1-d array of k >= 1 values, got {shares.shape}")
    if not np.all(np.isfinite(shares)) or np.any(shares < 0):
        raise DataError("cluster_shares must be finite and >= 0")
    return shares


def _as_centroids(centroids: npt.ArrayLike, k: int) -> npt.NDArray[np.float64]:
    """The model's centroids as a validated (k, dim) float array."""
    centres = np.asarray(centroids, dtype=np.float64)
    if centres.ndim != 2 or centres.shape[0] != k or centres.shape[1] < 1:
        raise DataError(
            f"centroids must be a (k, feature_dim) array with k = {k} rows (one per "
            f"cluster share), got shape {centres.shape}"
        )
    if not np.all(np.isfinite(centres)):
        raise DataError("centroids must be finite")
    return centres


def _outlyingness(
    centres: npt.NDArray[np.float64],
    mass: npt.NDArray[np.float64],
    distances: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """How far each cluster's centre lies from the centre of all the data, in units of the
    data's overall spread: ``|centre[c] - mean| / sqrt(total variance)``.

    The mean is the mass-weighted mean of the centres (K-Means centres are their rows'
    means), and the total variance is the spread of the centres around it plus the mean
    squared held-out distance (the spread of rows around their centres), so the measure
    needs nothing but the model and the calibration sample, and does not change with the
    features' units. 0 for every cluster when all the data is one point.
    """
    mean = mass @ centres
    between: npt.NDArray[np.float64] = np.sum((centres - mean) ** 2, axis=1)
    total = float(mass @ between) + float(np.mean(distances**2))
    if not (total > 0.0 and math.isfinite(total)):
        return np.zeros(centres.shape[0], dtype=np.float64)
    outlying: npt.NDArray[np.float64] = np.sqrt(between / total)
    return outlying


def _as_sample(
    clusters: npt.ArrayLike, distances: npt.ArrayLike, k: int, *, allow_empty: bool = False
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """A validated (cluster, distance) sample for a k-cluster model, non-empty unless
    ``allow_empty``."""
    cl = np.asarray(clusters)
    dist = np.asarray(distances, dtype=np.float64)
    if cl.ndim != 1 or dist.ndim != 1 or cl.shape != dist.shape:
        raise DataError(
            f"calibration sample: clusters {cl.shape} and distances {dist.shape} must be "
            "1-d arrays of the same length"
        )
    if cl.shape[0] == 0 and not allow_empty:
        raise DataError("calibration sample is empty: no held-out rows to calibrate on")
    integral = np.issubdtype(cl.dtype, np.integer) or (
        np.issubdtype(cl.dtype, np.floating) and bool(np.all(cl == np.round(cl)))
    )
    if not integral:
        raise DataError("calibration sample: cluster ids must be integers")
    cl = cl.astype(np.int64)
    outside = cl[(cl < 0) | (cl >= k)]
    if outside.size:
        raise DataError(f"calibration sample: cluster id {int(outside[0])} is outside 0..{k - 1}")
    if not np.all(np.isfinite(dist)) or np.any(dist < 0):
        raise DataError("calibration sample: distances must be finite and >= 0")
    return cl, dist


def _as_labels(labels: npt.ArrayLike, n: int) -> npt.NDArray[np.bool_]:
    """0/1 labels as a bool array of length ``n``."""
    y = np.asarray(labels)
    if y.shape != (n,):
        raise DataError(f"labels have shape {y.shape}, expected ({n},)")
    if not np.all((y == 0) | (y == 1)):
        raise DataError("labels must be 0 or 1")
    return y.astype(np.bool_)


def _as_scored(
    scores: npt.ArrayLike, labels: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Finite scores and 0/1 labels of the same length."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise DataError(f"scores must be 1-d, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise DataError("scores must be finite")
    return s, _as_labels(labels, s.shape[0])
