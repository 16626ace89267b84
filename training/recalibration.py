"""Re-threshold the active model without retraining: a new thresholds version and its report.

The sample is the model's stored calibration sample (held-out cluster and distance, with
labels when training had them, and the training rows' leave-one-out distances) or a CSV file
scored with the model's own feature spec and centroids. The report compares the thresholds in
force with the new ones on that sample (on the stored sample's held-out rows):
per cluster the count, old and new threshold and alert rate; overall alert rates; with
labels, precision, recall and PR-AUC before and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from training.calibration import average_precision, calibrate
from training.data import check_binary_labels, iter_chunks
from training.errors import DataError, RegistryError
from training.features import FeatureSpec
from training.kmeans import NearestCentroids
from training.registry import ActivePointer, Registry
from training.thresholds import ThresholdPolicy, Thresholds, judge


@dataclass(frozen=True)
class Sample:
    """(cluster, distance[, label]) rows to calibrate and compare on."""

    clusters: npt.NDArray[np.int64]
    distances: npt.NDArray[np.float64]
    labels: npt.NDArray[np.bool_] | None
    source: str


@dataclass(frozen=True)
class Recalibration:
    """The outcome: the new thresholds (stored unless a dry run) and the report."""

    thresholds: Thresholds
    report: dict[str, Any]
    activated: ActivePointer | None


def policy_in_force(registry: Registry) -> ThresholdPolicy | None:
    """The policy of the active thresholds; None when no model is active."""
    pointer = registry.active()
    if pointer is None:
        return None
    return registry.load_thresholds(pointer.model_version, pointer.thresholds_version).policy


def recalibrate(
    registry: Registry,
    policy: ThresholdPolicy,
    *,
    data: Path | None = None,
    label_column: str | None = None,
    dry_run: bool = False,
    by: str | None = None,
    chunk_rows: int = 65_536,
) -> Recalibration:
    """New thresholds for the active model under ``policy``; stored and activated unless dry.

    RegistryError when no model is active; DataError for a bad ``data`` file or label column.
    """
    pointer = registry.active()
    if pointer is None:
        raise RegistryError("no active model to recalibrate")
    bundle = registry.load_bundle(pointer.model_version, pointer.thresholds_version)
    manifest = bundle.manifest
    if data is not None:
        sample = score_file(data, manifest.feature_spec, bundle.centroids, label_column, chunk_rows)
        fit_on = (sample.clusters, sample.distances)
    else:
        if label_column is not None:
            raise DataError(
                "label_column needs a data file: the stored calibration sample keeps the "
                "labels training had, if any"
            )
        stored = bundle.calibration
        sample = Sample(
            clusters=stored.clusters.astype(np.int64),
            distances=stored.distances.astype(np.float64),
            labels=None if stored.labels is None else stored.labels.astype(bool),
            source="stored calibration sample",
        )
        # Fitted on the held-out and the training rows, as training fitted them; the report
        # compares on the held-out rows, the ones labels are kept for.
        fit_on = stored.calibration_rows()
    if sample.clusters.size == 0:
        raise DataError(f"the {sample.source} has no rows to calibrate on")
    old = bundle.thresholds
    new = calibrate(
        *fit_on,
        cluster_shares=manifest.cluster_shares,
        centroids=bundle.centroids,
        policy=policy,
        model_version=manifest.model_version,
        parent=old.version,
    )
    activated = None
    if not dry_run:
        new = registry.save_thresholds(new)
        activated = registry.activate(
            manifest.model_version, new.version, action="recalibrate", by=by
        )
    report = compare(old, new, sample, dry_run=dry_run)
    return Recalibration(new, report, activated)


def score_file(
    path: Path,
    feature_spec: dict[str, Any],
    centroids: npt.NDArray[np.float32],
    label_column: str | None,
    chunk_rows: int,
) -> Sample:
    """Cluster and distance of every row of a CSV file under a model's spec and centroids."""
    spec = FeatureSpec.from_dict(feature_spec)
    nearest = NearestCentroids(centroids)
    extra = (label_column,) if label_column is not None else ()
    clusters, distances, labels = [], [], []
    for chunk in iter_chunks(path, spec.csv_schema(), chunk_rows=chunk_rows, extra_numeric=extra):
        if label_column is not None:
            labels.append(check_binary_labels(chunk, label_column, file=str(path)))
        c, d = nearest.assign(spec.transform(chunk.columns).X)
        clusters.append(c)
        distances.append(d)
    if not clusters:
        raise DataError("no data rows", file=str(path))
    return Sample(
        clusters=np.concatenate(clusters),
        distances=np.concatenate(distances),
        labels=np.concatenate(labels) if labels else None,
        source=f"file {path.name}",
    )


def compare(old: Thresholds, new: Thresholds, sample: Sample, *, dry_run: bool) -> dict[str, Any]:
    """The report: both thresholds versions judged on the same sample."""
    before = judge(old, sample.clusters, sample.distances)
    after = judge(new, sample.clusters, sample.distances)
    k = new.k
    counts = np.bincount(sample.clusters, minlength=k)
    clusters = []
    for c in range(k):
        member = sample.clusters == c
        n = int(counts[c])
        clusters.append(
            {
                "cluster": c,
                "count": n,
                "rare_pattern": bool(new.rare[c]),
                "old_threshold": float(old.values[c]),
                "new_threshold": float(new.values[c]),
                "old_alert_rate": float(before.anomalous[member].mean()) if n else 0.0,
                "new_alert_rate": float(after.anomalous[member].mean()) if n else 0.0,
            }
        )
    overall: dict[str, Any] = {
        "rows": int(sample.clusters.size),
        "old_alert_rate": float(before.anomalous.mean()),
        "new_alert_rate": float(after.anomalous.mean()),
    }
    if sample.labels is not None:
        overall["old"] = _label_metrics(before.anomalous, before.score, sample.labels)
        overall["new"] = _label_metrics(after.anomalous, after.score, sample.labels)
    return {
        "model_version": new.model_version,
        "old_thresholds_version": old.version,
        "new_thresholds_version": None if dry_run else new.version,
        "dry_run": dry_run,
        "policy": new.policy.to_dict(),
        "sample": sample.source,
        "overall": overall,
        "clusters": clusters,
    }


def _label_metrics(
    alerts: npt.NDArray[np.bool_], scores: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_]
) -> dict[str, float | None]:
    """Precision and recall of the alerts, PR-AUC of the score; None where undefined."""
    tp = int((alerts & labels).sum())
    flagged, positives = int(alerts.sum()), int(labels.sum())
    pr_auc = average_precision(scores, labels) if positives and positives < labels.size else None
    return {
        "precision": tp / flagged if flagged else None,
        "recall": tp / positives if positives else None,
        "pr_auc": None if pr_auc is None or not np.isfinite(pr_auc) else float(pr_auc),
    }
