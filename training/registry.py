"""The model registry: versioned bundles and the ``ACTIVE`` pointer, over a small storage port.

Layout (the same for a local directory and an S3 prefix)::

    models/<model_version>/manifest.json       written last: its presence makes a version exist
    models/<model_version>/model.tar.gz        SageMaker K-Means artifact (training.artifact)
    models/<model_version>/calibration.npz     held-out (cluster, distance[, label]) sample
    models/<model_version>/thresholds/<n>.json thresholds versions 1, 2, ...
    ACTIVE                                     {"model_version": ..., "thresholds_version": ...,
                                                "activation": n}
    activations/<n>.json                       every change of ACTIVE (training.activations)
    jobs/<job_id>.json                         admin job records (training.jobs)

Every reader raises :class:`BundleError` (bad content) or :class:`RegistryError` (missing
version, bad pointer, storage failure) naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from botocore.exceptions import BotoCoreError

from training.activations import Activation, load_activation, record_activation
from training.artifact import read_model_tar, write_model_tar
from training.bundle import (
    MODEL_VERSION_PATTERN,
    Bundle,
    CalibrationSample,
    Manifest,
    load_json,
)
from training.errors import ArtifactError, BundleError, RegistryError
from training.s3_storage import S3Storage
from training.storage import LocalStorage, MissingKeyError, Storage, validate_key
from training.thresholds import Thresholds

ACTIVE_KEY = "ACTIVE"
MODELS_PREFIX = "models/"
JOBS_PREFIX = "jobs/"
_THRESHOLDS_FILE = re.compile(r"([1-9][0-9]*)\.json")
# How many existing versions an "unknown version" message lists.
_LISTED_VERSIONS = 10
# Attempts at taking the next thresholds number when another writer keeps winning the race.
_CREATE_ATTEMPTS = 20


@dataclass(frozen=True)
class ActivePointer:
    """The model and thresholds versions the service scores with."""

    model_version: str
    thresholds_version: int
    # The activation record that set this pointer (None for pointers older than the history).
    # Not part of equality: what is served depends only on the two versions.
    activation: int | None = dataclasses.field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``ACTIVE``."""
        out: dict[str, Any] = {
            "model_version": self.model_version,
            "thresholds_version": self.thresholds_version,
        }
        if self.activation is not None:
            out["activation"] = self.activation
        return out


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Registry:
    """Versioned model bundles over a :class:`Storage`."""

    active_key = ACTIVE_KEY
    models_prefix = MODELS_PREFIX
    jobs_prefix = JOBS_PREFIX

    def __init__(
        self,
        storage: Storage,
        *,
        location: str = "",
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.storage = storage
        self.location = location
        self._clock = clock

    def __repr__(self) -> str:
        return f"Registry({self.location or self.storage!r})"

    # -- keys -----------------------------------------------------------------------------

    def _where(self, key: str) -> str:
        """A file's name for messages: the location joined with the key."""
        return f"{self.location.rstrip('/')}/{key}" if self.location else key

    def _model_key(self, model_version: str, name: str) -> str:
        if not isinstance(model_version, str) or not MODEL_VERSION_PATTERN.fullmatch(model_version):
            raise RegistryError(f"invalid model version {model_version!r}")
        return f"{MODELS_PREFIX}{model_version}/{name}"

    def _thresholds_key(self, model_version: str, version: int) -> str:
        return self._model_key(model_version, f"thresholds/{version}.json")

    # -- writing --------------------------------------------------------------------------

    def new_model_version(self) -> str:
        """A fresh, time-sortable version name such as ``20261128T004040Z-1a2b3c``."""
        return f"{self._clock().astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"

    def save_model(
        self,
        manifest: Manifest,
        centroids: npt.NDArray[np.floating[Any]],
        calibration: CalibrationSample,
    ) -> None:
        """Store a new model version: artifact, calibration sample, then the manifest.

        The manifest is written last, so a save that fails half-way leaves no listed version
        (a retry with the same version overwrites the leftovers).
        """
        v = manifest.model_version
        manifest_key = self._model_key(v, "manifest.json")
        if self.storage.exists(manifest_key):
            raise RegistryError(f"model version {v} already exists in {self._name()}")
        c = np.asarray(centroids)
        if c.shape != (manifest.k, manifest.feature_dim):
            raise BundleError(
                f"model {v}: centroids have shape {c.shape}, the manifest says "
                f"k={manifest.k}, feature_dim={manifest.feature_dim}"
            )
        try:
            model_tar = write_model_tar(c)
        except ArtifactError as exc:
            raise BundleError(f"model {v}: {exc}") from None
        if calibration.max_cluster() >= manifest.k:
            raise BundleError(
                f"model {v}: calibration sample has cluster id "
                f"{calibration.max_cluster()} but k={manifest.k}"
            )
        manifest_json = manifest.to_json().encode()
        self.storage.write(self._model_key(v, "model.tar.gz"), model_tar)
        self.storage.write(self._model_key(v, "calibration.npz"), calibration.to_npz_bytes())
        self.storage.write(manifest_key, manifest_json)

    def save_thresholds(self, thresholds: Thresholds) -> Thresholds:
        """Store thresholds as the model's next version ``n`` and return the stored object.

        ``version`` is assigned here (the given one is ignored); ``created_at`` is set to now
        when empty. The file is created exclusively, so two processes saving at the same
        moment get two different numbers.
        """
        v = thresholds.model_version
        manifest = self.load_manifest(v)
        if thresholds.k != manifest.k:
            raise BundleError(
                f"thresholds have {thresholds.k} clusters, model {v} has {manifest.k}"
            )
        existing = self.list_thresholds(v)
        if thresholds.parent is not None and thresholds.parent not in existing:
            raise RegistryError(
                f"thresholds parent version {thresholds.parent} does not exist for model {v}"
            )
        created_at = thresholds.created_at or self._clock().isoformat(timespec="seconds")
        for _ in range(_CREATE_ATTEMPTS):
            version = (existing[-1] if existing else 0) + 1
            stored = dataclasses.replace(thresholds, version=version, created_at=created_at)
            try:
                text = json.dumps(stored.to_dict(), indent=2, allow_nan=False) + "\n"
            except (TypeError, ValueError) as exc:
                raise BundleError(
                    f"thresholds for model {v} are not JSON-serialisable: {exc}"
                ) from None
            if self.storage.create(self._thresholds_key(v, version), text.encode()):
                return stored
            existing = self.list_thresholds(v)
        raise RegistryError(
            f"could not save thresholds for model {v}: other writers kept taking the number"
        )

    def activate(
        self,
        model_version: str,
        thresholds_version: int,
        *,
        action: str = "activate",
        by: str | None = None,
    ) -> ActivePointer:
        """Point ``ACTIVE`` at a model and thresholds version, atomically, and record it.

        The whole bundle is loaded and validated first, so a broken version is never active.
        The activation is recorded (``action``, who ``by``) before ``ACTIVE`` moves, so the
        pointer never names a record that does not exist.
        """
        if type(thresholds_version) is not int:
            raise RegistryError(
                f"thresholds version must be an integer, got {thresholds_version!r}"
            )
        self.load_bundle(model_version, thresholds_version)
        current = self.active()
        record = record_activation(
            self.storage,
            model_version=model_version,
            thresholds_version=thresholds_version,
            action=action,
            at=self._clock().isoformat(timespec="seconds"),
            by=by,
            previous=None if current is None else current.activation,
        )
        return self._point(record)

    def rollback(self, *, by: str | None = None) -> tuple[ActivePointer, ActivePointer]:
        """Go back to the activation before the current one; ``(from, to)`` pointers.

        RegistryError when nothing is active or there is nothing earlier to go back to.
        """
        current = self.active()
        if current is None:
            raise RegistryError(f"nothing to roll back: {self._name()} has no active model")
        if current.activation is None:
            raise RegistryError(
                f"cannot roll back {current.model_version} thresholds "
                f"v{current.thresholds_version}: it was activated before activations were "
                "recorded; promote the version you want instead"
            )
        entry = load_activation(self.storage, current.activation, where=self.location)
        if entry.previous is None:
            raise RegistryError(
                f"nothing to roll back to: {current.model_version} thresholds "
                f"v{current.thresholds_version} is the first activation recorded"
            )
        target = load_activation(self.storage, entry.previous, where=self.location)
        self.load_bundle(target.model_version, target.thresholds_version)
        record = record_activation(
            self.storage,
            model_version=target.model_version,
            thresholds_version=target.thresholds_version,
            action="rollback",
            at=self._clock().isoformat(timespec="seconds"),
            by=by,
            previous=target.previous,
        )
        return current, self._point(record)

    def activation(self, number: int) -> Activation:
        """Activation record ``number``."""
        return load_activation(self.storage, number, where=self.location)

    def _point(self, record: Activation) -> ActivePointer:
        pointer = ActivePointer(record.model_version, record.thresholds_version, record.number)
        self.storage.write(ACTIVE_KEY, (json.dumps(pointer.to_dict(), indent=2) + "\n").encode())
        return pointer

    # -- reading --------------------------------------------------------------------------

    def model_versions(self) -> list[str]:
        """Versions that have a manifest, sorted (oldest first for generated names)."""
        versions = set()
        for key in self.storage.list(MODELS_PREFIX):
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == "manifest.json":
                versions.add(parts[1])
        return sorted(versions)

    def list_models(self) -> list[Manifest]:
        """Every stored model's manifest, sorted by model version."""
        return [self.load_manifest(v) for v in self.model_versions()]

    def list_thresholds(self, model_version: str) -> list[int]:
        """The model's thresholds versions, ascending."""
        self._require_model(model_version)
        prefix = self._model_key(model_version, "thresholds/")
        versions = []
        for key in self.storage.list(prefix):
            match = _THRESHOLDS_FILE.fullmatch(key[len(prefix) :])
            if match:
                versions.append(int(match.group(1)))
        return sorted(versions)

    def load_manifest(self, model_version: str) -> Manifest:
        """The model's manifest; RegistryError if the version does not exist."""
        key = self._require_model(model_version)
        manifest = Manifest.from_json(self._read(key), source=self._where(key))
        if manifest.model_version != model_version:
            raise BundleError(
                f"{self._where(key)}: says model_version {manifest.model_version!r}, "
                f"expected {model_version!r}"
            )
        return manifest

    def load_centroids(self, model_version: str) -> npt.NDArray[np.float32]:
        """The model's float32 ``(k, feature_dim)`` centroids."""
        return self._centroids(self.load_manifest(model_version))

    def load_artifact(self, model_version: str) -> bytes:
        """The model's ``model.tar.gz`` exactly as stored (SageMaker's artifact format)."""
        self.load_manifest(model_version)  # an unknown version is named as such
        return self._read(self._model_key(model_version, "model.tar.gz"))

    def load_calibration(self, model_version: str) -> CalibrationSample:
        """The model's held-out calibration sample."""
        return self._calibration(self.load_manifest(model_version))

    def load_thresholds(self, model_version: str, version: int | None = None) -> Thresholds:
        """A thresholds version of the model; the latest when ``version`` is None."""
        return self._thresholds(self.load_manifest(model_version), version)

    def load_bundle(self, model_version: str, thresholds_version: int | None = None) -> Bundle:
        """Manifest, centroids, thresholds (latest when None) and sample, validated together."""
        manifest = self.load_manifest(model_version)
        bundle = Bundle(
            manifest=manifest,
            centroids=self._centroids(manifest),
            thresholds=self._thresholds(manifest, thresholds_version),
            calibration=self._calibration(manifest),
        )
        return bundle

    def active(self) -> ActivePointer | None:
        """The ``ACTIVE`` pointer, or None when nothing was ever activated."""
        where = self._where(ACTIVE_KEY)
        try:
            raw = self.storage.read(ACTIVE_KEY)
        except MissingKeyError:
            return None
        try:
            data = load_json(raw, source=where)
        except BundleError as exc:
            raise RegistryError(str(exc)) from None
        if not isinstance(data, dict):
            raise RegistryError(f"{where}: must be a JSON object")
        model_version = data.get("model_version")
        thresholds_version = data.get("thresholds_version")
        if not isinstance(model_version, str) or not MODEL_VERSION_PATTERN.fullmatch(model_version):
            raise RegistryError(f"{where}: invalid model_version {model_version!r}")
        if type(thresholds_version) is not int or thresholds_version < 1:
            raise RegistryError(f"{where}: invalid thresholds_version {thresholds_version!r}")
        activation = data.get("activation")
        if activation is not None and (type(activation) is not int or activation < 1):
            raise RegistryError(f"{where}: invalid activation {activation!r}")
        return ActivePointer(model_version, thresholds_version, activation)

    # -- helpers --------------------------------------------------------------------------

    def _name(self) -> str:
        return f"the registry at {self.location}" if self.location else "the registry"

    def _read(self, key: str) -> bytes:
        """Read a key, naming the location in errors."""
        try:
            return self.storage.read(key)
        except MissingKeyError:
            raise MissingKeyError(key, self._where(key)) from None

    def _require_model(self, model_version: str) -> str:
        """The manifest key of an existing model; RegistryError listing what exists."""
        key = self._model_key(model_version, "manifest.json")
        if self.storage.exists(key):
            return key
        versions = self.model_versions()
        if not versions:
            raise RegistryError(
                f"model version {model_version!r} not found: {self._name()} is empty"
            )
        shown = ", ".join(versions[-_LISTED_VERSIONS:])
        more = len(versions) - _LISTED_VERSIONS
        tail = f" (and {more} older)" if more > 0 else ""
        raise RegistryError(
            f"model version {model_version!r} not found in {self._name()}; it has {shown}{tail}"
        )

    def _centroids(self, manifest: Manifest) -> npt.NDArray[np.float32]:
        key = self._model_key(manifest.model_version, "model.tar.gz")
        where = self._where(key)
        try:
            centroids = read_model_tar(self._read(key), feature_dim=manifest.feature_dim)
        except ArtifactError as exc:
            raise BundleError(f"{where}: {exc}") from None
        if centroids.shape[0] != manifest.k:
            raise BundleError(
                f"{where}: has {centroids.shape[0]} centroids, manifest k={manifest.k}"
            )
        return centroids

    def _calibration(self, manifest: Manifest) -> CalibrationSample:
        key = self._model_key(manifest.model_version, "calibration.npz")
        where = self._where(key)
        sample = CalibrationSample.from_npz_bytes(self._read(key), source=where)
        if sample.n and int(sample.clusters.max()) >= manifest.k:
            raise BundleError(
                f"{where}: cluster id {int(sample.clusters.max())} but manifest k={manifest.k}"
            )
        return sample

    def _thresholds(self, manifest: Manifest, version: int | None) -> Thresholds:
        v = manifest.model_version
        existing = self.list_thresholds(v)
        if version is None:
            if not existing:
                raise RegistryError(f"model {v} has no thresholds versions")
            version = existing[-1]
        elif version not in existing:
            have = ", ".join(map(str, existing)) if existing else "none"
            raise RegistryError(f"model {v} has no thresholds version {version!r} (it has {have})")
        key = self._thresholds_key(v, version)
        where = self._where(key)
        data = load_json(self._read(key), source=where)
        if not isinstance(data, dict):
            raise BundleError(f"{where}: must be a JSON object")
        thresholds = Thresholds.from_dict(data, source=where)
        if thresholds.version != version:
            raise BundleError(f"{where}: says version {thresholds.version}, expected {version}")
        if thresholds.model_version != v:
            raise BundleError(f"{where}: belongs to model {thresholds.model_version!r}, not {v!r}")
        if thresholds.k != manifest.k:
            raise BundleError(f"{where}: has {thresholds.k} clusters, manifest k={manifest.k}")
        return thresholds


KMS_KEY_ENV = "FRAUDSCORE_KMS_KEY_ID"
# S3's bucket naming rules, loosened for older buckets (capitals and underscores).
_BUCKET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]")


def open_registry(location: str | Path, *, kms_key_id: str | None = None) -> Registry:
    """The registry at a local directory (created on first write) or an ``s3://`` URL.

    An S3 registry encrypts every write with ``kms_key_id``, by default the key in the
    ``FRAUDSCORE_KMS_KEY_ID`` environment variable; region, endpoint and credentials come
    from boto3's usual configuration.
    """
    text = str(location)
    if text.startswith("s3://"):
        return _open_s3_registry(text, kms_key_id)
    if "://" in text:
        raise RegistryError(
            f"unsupported registry location {text!r}: use a directory or s3://bucket/prefix"
        )
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise RegistryError(f"registry location {path} is not a directory")
    return Registry(LocalStorage(path), location=str(path))


def parse_s3_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket[/prefix]``; the prefix without outer slashes."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise RegistryError(f"invalid S3 registry location {url!r}: no bucket name")
    if not _BUCKET_NAME.fullmatch(bucket):
        raise RegistryError(f"invalid S3 registry location {url!r}: bad bucket name {bucket!r}")
    prefix = prefix.strip("/")
    try:
        validate_key(prefix, prefix=True)
    except RegistryError:
        raise RegistryError(
            f"invalid S3 registry location {url!r}: the prefix must be a '/'-separated path "
            "without empty, '.' or '..' parts, backslashes or NUL characters"
        ) from None
    return bucket, prefix


def _open_s3_registry(url: str, kms_key_id: str | None) -> Registry:
    bucket, prefix = parse_s3_url(url)
    key_id = kms_key_id or os.environ.get(KMS_KEY_ENV, "").strip()
    if not key_id:
        raise RegistryError(
            f"{url}: no KMS key to encrypt registry writes; set {KMS_KEY_ENV} "
            "(the key ARN) or pass kms_key_id"
        )
    # Imported here: local registries never pay for boto3.
    import boto3

    try:
        # A session of its own: configuration is read now, not cached from an earlier client.
        client = boto3.session.Session().client("s3")
    except BotoCoreError as exc:  # e.g. an unknown AWS_PROFILE
        raise RegistryError(f"{url}: cannot create an S3 client ({type(exc).__name__})") from None
    storage = S3Storage(client, bucket, prefix, key_id)
    return Registry(storage, location=storage.url)
