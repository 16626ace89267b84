"""The model bundle: what ``training`` hands to ``service`` for one model version.

A bundle is a :class:`Manifest` (``manifest.json``), the centroids (``model.tar.gz``, see
:mod:`training.artifact`), one :class:`~training.thresholds.Thresholds` version
(``thresholds/<n>.json``) and a :class:`CalibrationSample` (``calibration.npz``). Every
parser here raises :class:`BundleError` naming the file it was given.
"""

from __future__ import annotations

import copy
import io
import json
import math
import re
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from training.errors import BundleError, SpecError
from training.features import FeatureSpec
from training.thresholds import Thresholds

SCHEMA_VERSION = 1
# Model versions name folders and S3 prefixes: keep them to safe, portable characters.
MODEL_VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Shares are ratios computed in float64; this only tolerates rounding.
_SHARE_SUM_TOLERANCE = 1e-6


class _InvalidManifest(BundleError):
    """A manifest check failed; ``detail`` lets :meth:`Manifest.from_dict` name its file."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"manifest: {detail}")


@dataclass(frozen=True)
class Manifest:
    """Everything about a model version except its arrays (``manifest.json``).

    Validated on construction: names, types, finiteness, JSON-serialisability, and
    consistency of ``k`` / ``feature_dim`` with ``feature_spec`` and ``cluster_shares``.
    """

    schema_version: int
    model_version: str
    created_at: str
    k: int
    feature_dim: int
    feature_spec: dict[str, Any]
    hyperparameters: dict[str, str]
    metrics: dict[str, float]
    source: dict[str, str]
    data_fingerprint: dict[str, Any]
    cluster_shares: list[float]
    tags: dict[str, str] = field(default_factory=dict)
    label_report: dict[str, Any] | None = None
    tuning: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_manifest(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, keys in field order (the content of ``manifest.json``)."""
        # Deep copies: a caller editing the result must not edit this (frozen) manifest.
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    def to_json(self) -> str:
        """``manifest.json`` text: indented, NaN-free, newline-terminated."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "manifest") -> Manifest:
        """Parse and validate; raises :class:`BundleError` naming ``source``."""
        if not isinstance(data, Mapping):
            raise BundleError(f"{source}: a manifest must be a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"{source}: manifest schema version {version!r} is not supported "
                f"(this fraudscore reads version {SCHEMA_VERSION})"
            )
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise BundleError(f"{source}: unknown manifest key(s) {', '.join(unknown)}")
        optional = {"tags", "label_report", "tuning"}
        missing = [n for n in names if n not in data and n not in optional]
        if missing:
            raise BundleError(f"{source}: missing manifest key(s) {', '.join(missing)}")
        try:
            return cls(**{n: data[n] for n in names if n in data})
        except _InvalidManifest as exc:
            raise BundleError(f"{source}: {exc.detail}") from None

    @classmethod
    def from_json(cls, text: bytes | str, *, source: str = "manifest") -> Manifest:
        """Parse ``manifest.json`` content; raises :class:`BundleError` naming ``source``."""
        return cls.from_dict(load_json(text, source=source), source=source)


def load_json(text: bytes | str, *, source: str) -> Any:
    """Decode JSON, turning decoding errors into a :class:`BundleError` naming ``source``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(
            f"{source}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except ValueError as exc:  # undecodable bytes
        raise BundleError(f"{source}: not valid JSON ({exc})") from None
    except RecursionError:
        raise BundleError(f"{source}: not valid JSON (nested too deeply)") from None


def _check_manifest(m: Manifest) -> None:
    """Raise :class:`_InvalidManifest` on the first problem found."""
    if type(m.schema_version) is not int or m.schema_version != SCHEMA_VERSION:
        raise _InvalidManifest(
            f"schema version {m.schema_version!r} is not supported "
            f"(this fraudscore reads version {SCHEMA_VERSION})"
        )
    if not isinstance(m.model_version, str) or not MODEL_VERSION_PATTERN.fullmatch(m.model_version):
        raise _InvalidManifest(
            f"model_version {m.model_version!r} must be 1-128 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    if not isinstance(m.created_at, str):
        raise _InvalidManifest("created_at must be a string")
    for name in ("k", "feature_dim"):
        value = getattr(m, name)
        if type(value) is not int or value < 1:
            raise _InvalidManifest(f"'{name}' must be an integer >= 1, got {value!r}")
    for name in ("hyperparameters", "source", "tags"):
        _check_str_map(name, getattr(m, name))
    _check_metrics(m.metrics)
    for name in ("feature_spec", "data_fingerprint"):
        if not isinstance(getattr(m, name), dict):
            raise _InvalidManifest(f"'{name}' must be an object")
    for name in ("label_report", "tuning"):
        value = getattr(m, name)
        if value is not None and not isinstance(value, dict):
            raise _InvalidManifest(f"'{name}' must be an object or null")
    rows = m.data_fingerprint.get("rows")
    if rows is not None and (type(rows) is not int or rows < 0):
        raise _InvalidManifest(f"data_fingerprint 'rows' must be an integer >= 0, got {rows!r}")
    _check_shares(m.cluster_shares, m.k)
    _check_spec_dim(m.feature_spec, m.feature_dim)
    for name in ("feature_spec", "data_fingerprint", "label_report", "tuning"):
        try:
            json.dumps(getattr(m, name), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _InvalidManifest(f"'{name}' is not JSON-serialisable: {exc}") from None


def _check_str_map(name: str, value: Any) -> None:
    """A dict of strings to strings."""
    if not isinstance(value, dict):
        raise _InvalidManifest(f"'{name}' must be an object of strings")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise _InvalidManifest(f"'{name}' entry {key!r} must map a string to a string")


def _check_metrics(metrics: Any) -> None:
    """A dict of metric names to finite numbers."""
    if not isinstance(metrics, dict):
        raise _InvalidManifest("'metrics' must be an object of numbers")
    for key, value in metrics.items():
        if (
            not isinstance(key, str)
            or isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise _InvalidManifest(f"metric {key!r} must be a finite number, got {value!r}")


def _check_shares(shares: Any, k: int) -> None:
    """k finite shares in [0, 1] summing to 1."""
    if not isinstance(shares, list):
        raise _InvalidManifest("'cluster_shares' must be a list of numbers")
    if len(shares) != k:
        raise _InvalidManifest(f"'cluster_shares' has {len(shares)} entries for k={k}")
    for i, share in enumerate(shares):
        if (
            isinstance(share, bool)
            or not isinstance(share, int | float)
            or not 0.0 <= share <= 1.0  # also false for NaN
        ):
            raise _InvalidManifest(f"cluster_shares[{i}] must be a number in [0, 1], got {share!r}")
    total = math.fsum(shares)
    if abs(total - 1.0) > _SHARE_SUM_TOLERANCE:
        raise _InvalidManifest(f"'cluster_shares' sum to {total!r}, not 1")


def _check_spec_dim(spec: dict[str, Any], feature_dim: int) -> None:
    """The feature spec parses and produces ``feature_dim`` columns."""
    try:
        parsed = FeatureSpec.from_dict(spec)
    except (SpecError, BundleError) as exc:
        raise _InvalidManifest(f"invalid feature_spec: {exc}") from None
    if not parsed.fitted:
        raise _InvalidManifest("the feature spec is not fitted")
    dim = parsed.feature_dim
    if dim != feature_dim:
        raise _InvalidManifest(
            f"feature_dim is {feature_dim} but the feature spec produces {dim} columns"
        )


@dataclass(frozen=True, eq=False)
class CalibrationSample:
    """The rows thresholds are fitted on, kept for re-thresholding without the data.

    ``clusters``, ``distances`` and ``labels`` are the held-out rows (labels when training
    had a label column). ``training_clusters`` and ``training_distances`` are a uniform
    sample of the training rows with their leave-one-out distances (see
    :func:`training.calibration.leave_one_out`); both or neither, and neither in bundles
    made before they were kept. Thresholds are fitted on both parts
    (:meth:`calibration_rows`); label reports use the held-out rows only.
    """

    clusters: npt.NDArray[np.int32]
    distances: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int8] | None = None
    training_clusters: npt.NDArray[np.int32] | None = None
    training_distances: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        problem = _sample_problem(self._arrays())
        if problem is not None:
            raise BundleError(f"calibration sample: {problem}")

    @property
    def n(self) -> int:
        """Number of held-out rows."""
        return int(self.clusters.shape[0])

    @property
    def training_rows(self) -> int:
        """Number of training rows kept (0 in bundles made before they were)."""
        return 0 if self.training_clusters is None else int(self.training_clusters.shape[0])

    def calibration_rows(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """(cluster, distance) of every row thresholds are fitted on: held-out, then training."""
        clusters = [self.clusters.astype(np.int64)]
        distances = [self.distances.astype(np.float64)]
        if self.training_clusters is not None and self.training_distances is not None:
            clusters.append(self.training_clusters.astype(np.int64))
            distances.append(self.training_distances.astype(np.float64))
        return np.concatenate(clusters), np.concatenate(distances)

    def max_cluster(self) -> int:
        """The largest cluster id in either part; -1 when there are no rows."""
        ids = [a for a in (self.clusters, self.training_clusters) if a is not None and a.size]
        return max((int(a.max()) for a in ids), default=-1)

    def _arrays(self) -> dict[str, npt.NDArray[Any] | None]:
        return {name: getattr(self, name) for name in _SAMPLE_DTYPES}

    def to_npz_bytes(self) -> bytes:
        """``calibration.npz`` content; deterministic for equal arrays."""
        arrays = {name: arr for name, arr in self._arrays().items() if arr is not None}
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, arr in arrays.items():
                member = io.BytesIO()
                np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
                # A fixed timestamp keeps the bytes reproducible (np.savez stamps "now").
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, member.getvalue())
        return buf.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes, *, source: str = "calibration.npz") -> CalibrationSample:
        """Parse ``calibration.npz`` content; raises :class:`BundleError` naming ``source``."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                names = set(npz.files)
                missing = {"clusters", "distances"} - names
                if missing:
                    raise BundleError(f"{source}: missing array(s) {', '.join(sorted(missing))}")
                arrays = {name: npz[name] if name in names else None for name in _SAMPLE_DTYPES}
        except BundleError:
            raise
        except (
            OSError,
            EOFError,
            ValueError,
            KeyError,
            RuntimeError,  # zipfile: encrypted member, "zip file version", unknown compression
            zipfile.BadZipFile,
            zlib.error,
        ) as exc:
            raise BundleError(f"{source}: corrupt or truncated npz file ({exc})") from None
        problem = _sample_problem(arrays)
        if problem is not None:
            raise BundleError(f"{source}: {problem}")
        return cls(**arrays)  # type: ignore[arg-type]


# calibration.npz's arrays (CalibrationSample's fields, by name) and their dtypes.
_SAMPLE_DTYPES: dict[str, type[np.generic]] = {
    "clusters": np.int32,
    "distances": np.float32,
    "labels": np.int8,
    "training_clusters": np.int32,
    "training_distances": np.float32,
}


def _sample_problem(arrays: Mapping[str, npt.NDArray[Any] | None]) -> str | None:
    """What is wrong with calibration arrays (name -> array or None), or None."""
    for name, arr in arrays.items():
        if arr is None:
            continue
        dtype = _SAMPLE_DTYPES[name]
        if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != 1:
            shape = getattr(arr, "shape", "?")
            got = getattr(arr, "dtype", type(arr).__name__)
            return f"'{name}' must be a 1-d {np.dtype(dtype).name} array, got {got} {shape}"
    if (arrays["training_clusters"] is None) != (arrays["training_distances"] is None):
        return "'training_clusters' and 'training_distances' come together: one is missing"
    parts = (("clusters", ("distances", "labels")), ("training_clusters", ("training_distances",)))
    for ids, others in parts:
        clusters, distances = arrays[ids], arrays[others[0]]
        if clusters is None or distances is None:
            continue
        n = clusters.shape[0]
        for name in others:
            arr = arrays[name]
            if arr is not None and arr.shape[0] != n:
                return f"'{name}' has {arr.shape[0]} rows, '{ids}' has {n}"
        if n and int(clusters.min()) < 0:
            return f"'{ids}' has negative cluster ids"
        if not np.all(np.isfinite(distances)) or (n and float(distances.min()) < 0):
            return f"'{others[0]}' must be finite and >= 0"
    labels_arr = arrays["labels"]
    if labels_arr is not None and not np.all((labels_arr == 0) | (labels_arr == 1)):
        return "'labels' must be 0 or 1"
    return None


@dataclass(frozen=True, eq=False)
class Bundle:
    """One servable model version: manifest, centroids, one thresholds version, sample.

    Checked on construction (see :meth:`validate`).
    """

    manifest: Manifest
    centroids: npt.NDArray[np.float32]
    thresholds: Thresholds
    calibration: CalibrationSample

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, *, source: str | None = None) -> None:
        """Check the parts agree; raises :class:`BundleError` naming ``source`` (or the model)."""
        m = self.manifest
        where = source or f"model {m.model_version}"
        c = self.centroids
        if not isinstance(c, np.ndarray) or c.dtype != np.float32:
            raise BundleError(f"{where}: centroids must be a float32 array")
        if c.shape != (m.k, m.feature_dim):
            raise BundleError(
                f"{where}: centroids have shape {c.shape}, the manifest says "
                f"k={m.k}, feature_dim={m.feature_dim}"
            )
        if not np.all(np.isfinite(c)):
            raise BundleError(f"{where}: centroids contain NaN or infinite values")
        t = self.thresholds
        if t.model_version != m.model_version:
            raise BundleError(
                f"{where}: thresholds version {t.version} belongs to model {t.model_version!r}"
            )
        if t.k != m.k:
            raise BundleError(
                f"{where}: thresholds version {t.version} has {t.k} clusters, the model has {m.k}"
            )
        cal = self.calibration
        if cal.max_cluster() >= m.k:
            raise BundleError(
                f"{where}: calibration sample has cluster id {cal.max_cluster()} but k={m.k}"
            )
