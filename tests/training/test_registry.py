"""Registry layout, versioning, atomic pointer, crash safety and clear errors."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from tests.factories import make_thresholds
from training.artifact import read_model_tar
from training.bundle import SCHEMA_VERSION, CalibrationSample, Manifest
from training.errors import BundleError, RegistryError
from training.features import CategoricalField, FeatureSpec, NumericField
from training.registry import ActivePointer, Registry, open_registry
from training.storage import TEMP_PREFIX, LocalStorage, MissingKeyError, validate_key
from training.thresholds import Thresholds

K, DIM = 3, 4
VERSION = "20261128T004040Z-1a2b3c"
MODEL_DIR = f"models/{VERSION}"


def manifest(**overrides: Any) -> Manifest:
    """A valid manifest of a k=3 model over 4 columns (1 numeric + 3 one-hot)."""
    spec = FeatureSpec(
        fields=(NumericField("amount"), CategoricalField("tran_code", categories=("a", "b", "c"))),
        fitted=True,
    )
    values: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "model_version": VERSION,
        "created_at": "2026-11-28T00:40:40+00:00",
        "k": K,
        "feature_dim": DIM,
        "feature_spec": spec.to_dict(),
        "hyperparameters": {"k": "3", "feature_dim": "4"},
        "metrics": {"test:msd": 1.5},
        "source": {"kind": "local"},
        "data_fingerprint": {"rows": 100, "sha256": "ab" * 32},
        "cluster_shares": [0.5, 0.25, 0.25],
    }
    values.update(overrides)
    return Manifest(**values)


def thresholds(**overrides: Any) -> Thresholds:
    """Valid thresholds version 1 for the test model (``k`` overridable)."""
    return make_thresholds(VERSION, overrides.pop("k", K), **overrides)


def sample() -> CalibrationSample:
    return CalibrationSample(
        clusters=(np.arange(6) % K).astype(np.int32),
        distances=np.linspace(0.0, 3.0, 6).astype(np.float32),
        labels=(np.arange(6) % 2).astype(np.int8),
    )


def centroids() -> npt.NDArray[np.float32]:
    return np.arange(K * DIM, dtype=np.float32).reshape(K, DIM)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return open_registry(tmp_path / "registry")


@pytest.fixture
def saved(registry: Registry) -> Registry:
    """A registry holding the test model with thresholds version 1."""
    registry.save_model(manifest(), centroids(), sample())
    registry.save_thresholds(thresholds())
    return registry


def root(registry: Registry) -> Path:
    storage = registry.storage
    assert isinstance(storage, LocalStorage)
    return storage.root


def temp_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.name.startswith(TEMP_PREFIX)]


# -- round trip -----------------------------------------------------------------------------


def test_save_list_load_round_trip(saved: Registry) -> None:
    files = sorted(p.relative_to(root(saved)).as_posix() for p in root(saved).rglob("*.*"))
    assert files == [
        f"{MODEL_DIR}/calibration.npz",
        f"{MODEL_DIR}/manifest.json",
        f"{MODEL_DIR}/model.tar.gz",
        f"{MODEL_DIR}/thresholds/1.json",
    ]
    assert saved.list_models() == [manifest()]
    assert saved.load_manifest(VERSION) == manifest()
    np.testing.assert_array_equal(saved.load_centroids(VERSION), centroids())
    # model.tar.gz is a SageMaker artifact, readable on its own
    raw = (root(saved) / MODEL_DIR / "model.tar.gz").read_bytes()
    np.testing.assert_array_equal(read_model_tar(raw, feature_dim=DIM), centroids())
    cal = saved.load_calibration(VERSION)
    np.testing.assert_array_equal(cal.distances, sample().distances)
    loaded = saved.load_thresholds(VERSION)
    assert loaded.version == 1
    np.testing.assert_array_equal(loaded.values, thresholds().values)
    bundle = saved.load_bundle(VERSION)
    assert bundle.thresholds.version == 1
    assert bundle.manifest == manifest()


def test_thresholds_versions_increment(registry: Registry) -> None:
    registry.save_model(manifest(), centroids(), sample())
    first = registry.save_thresholds(thresholds(version=7))
    assert first.version == 1
    assert first.created_at  # stamped when empty
    second = registry.save_thresholds(thresholds(parent=1, values=np.full(K, 5.0)))
    third = registry.save_thresholds(thresholds(parent=2, created_at="2026-01-01T00:00:00+00:00"))
    assert (second.version, third.version) == (2, 3)
    assert third.created_at == "2026-01-01T00:00:00+00:00"
    assert registry.list_thresholds(VERSION) == [1, 2, 3]
    assert registry.load_thresholds(VERSION).version == 3
    assert registry.load_thresholds(VERSION, 2).values.tolist() == [5.0] * K
    assert registry.load_thresholds(VERSION, 2).parent == 1
    assert registry.load_bundle(VERSION, 2).thresholds.version == 2


def test_list_thresholds_ignores_unrelated_files(saved: Registry) -> None:
    tdir = root(saved) / MODEL_DIR / "thresholds"
    (tdir / "notes.txt").write_text("x")
    (tdir / "01.json").write_text("{}")
    (tdir / f"{TEMP_PREFIX}abc-2.json").write_text("{")
    assert saved.list_thresholds(VERSION) == [1]


def test_thresholds_for_other_or_missing_models_are_refused(saved: Registry) -> None:
    with pytest.raises(RegistryError, match=r"'nope' not found"):
        saved.save_thresholds(thresholds(model_version="nope"))
    with pytest.raises(BundleError, match=r"4 clusters, model .* has 3"):
        saved.save_thresholds(thresholds(k=K + 1))
    with pytest.raises(RegistryError, match=r"parent version 9 does not exist"):
        saved.save_thresholds(thresholds(parent=9))
    assert saved.list_thresholds(VERSION) == [1]


def test_saving_a_version_twice_is_refused(saved: Registry) -> None:
    with pytest.raises(RegistryError, match=r"already exists"):
        saved.save_model(manifest(), centroids(), sample())


def test_save_model_checks_arrays_before_writing(registry: Registry) -> None:
    with pytest.raises(BundleError, match=r"shape \(3, 5\)"):
        registry.save_model(manifest(), np.zeros((K, DIM + 1), np.float32), sample())
    with pytest.raises(BundleError, match=r"NaN"):
        registry.save_model(manifest(), np.full((K, DIM), np.nan, np.float32), sample())
    bad_sample = replace(sample(), clusters=np.array([0, 1, 2, 3, 0, 1], np.int32))
    with pytest.raises(BundleError, match=r"cluster id 3"):
        registry.save_model(manifest(), centroids(), bad_sample)
    assert not root(registry).exists() or not any(root(registry).rglob("*.*"))


def test_new_model_versions_are_sortable_and_valid_manifest_names() -> None:
    times = iter(
        [datetime(2026, 11, 28, 0, 40, 40, tzinfo=UTC) + timedelta(seconds=s) for s in (0, 1, 61)]
    )
    reg = Registry(LocalStorage("/nonexistent"), clock=lambda: next(times))
    versions = [reg.new_model_version() for _ in range(3)]
    assert versions == sorted(versions)
    assert re.fullmatch(r"20261128T004040Z-[0-9a-f]{6}", versions[0])
    manifest(model_version=versions[0])  # accepted as a model version


# -- activation -----------------------------------------------------------------------------


def test_activate_writes_the_pointer_atomically(saved: Registry) -> None:
    assert saved.active() is None
    pointer = saved.activate(VERSION, 1)
    assert pointer == ActivePointer(VERSION, 1)
    assert saved.active() == pointer
    active_file = root(saved) / "ACTIVE"
    assert json.loads(active_file.read_text()) == {
        "model_version": VERSION,
        "thresholds_version": 1,
        "activation": 1,
    }
    saved.save_thresholds(thresholds(parent=1))
    saved.activate(VERSION, 2)
    assert saved.active() == ActivePointer(VERSION, 2)
    assert temp_files(root(saved)) == []


def test_activate_validates_before_touching_the_pointer(saved: Registry) -> None:
    saved.activate(VERSION, 1)
    before = (root(saved) / "ACTIVE").read_bytes()
    with pytest.raises(RegistryError, match=r"'missing' not found in the registry at .*; it has"):
        saved.activate("missing", 1)
    with pytest.raises(RegistryError, match=r"no thresholds version 2 .*it has 1"):
        saved.activate(VERSION, 2)
    (root(saved) / MODEL_DIR / "model.tar.gz").write_bytes(b"\x1f\x8bbroken")
    with pytest.raises(BundleError, match=r"model.tar.gz: corrupt or truncated gzip"):
        saved.activate(VERSION, 1)
    assert (root(saved) / "ACTIVE").read_bytes() == before


def test_a_failed_pointer_write_keeps_the_old_pointer_and_no_temp_file(
    saved: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved.activate(VERSION, 1)
    saved.save_thresholds(thresholds(parent=1))

    def broken_fsync(_fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    # The activation record is written before the pointer: the first failing write stops it.
    with pytest.raises(RegistryError, match=r"cannot (write|create)"):
        saved.activate(VERSION, 2)
    monkeypatch.undo()
    assert saved.active() == ActivePointer(VERSION, 1)
    assert temp_files(root(saved)) == []


# -- crash safety ---------------------------------------------------------------------------


class CrashOnManifest(LocalStorage):
    """Storage whose disk 'fills up' when the manifest is written."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.written: list[str] = []

    def write(self, key: str, data: bytes) -> None:
        if key.endswith("manifest.json"):
            raise RegistryError(f"{key}: cannot write (No space left on device)")
        super().write(key, data)
        self.written.append(key)


def test_manifest_is_written_last_so_a_crashed_save_is_not_listed(tmp_path: Path) -> None:
    storage = CrashOnManifest(tmp_path)
    reg = Registry(storage)
    with pytest.raises(RegistryError, match=r"No space left"):
        reg.save_model(manifest(), centroids(), sample())
    assert sorted(storage.written) == [f"{MODEL_DIR}/calibration.npz", f"{MODEL_DIR}/model.tar.gz"]
    assert reg.model_versions() == []
    assert reg.list_models() == []
    with pytest.raises(RegistryError, match=r"is empty"):
        reg.load_manifest(VERSION)
    # Retrying once the disk has room succeeds over the leftovers.
    healthy = Registry(LocalStorage(tmp_path))
    healthy.save_model(manifest(), centroids(), sample())
    assert [m.model_version for m in healthy.list_models()] == [VERSION]


# -- clear errors on corrupt content --------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "content", "error", "match"),
    [
        ("manifest.json", b'{"schema_version": 1', BundleError, "manifest.json: not valid JSON"),
        ("manifest.json", b"[]", BundleError, "manifest.json: a manifest must be a JSON object"),
        ("manifest.json", b'{"schema_version": 9}', BundleError, "manifest.json: .*version 9"),
        ("thresholds/1.json", b"{oops", BundleError, "thresholds/1.json: not valid JSON"),
        ("thresholds/1.json", b"[]", BundleError, "thresholds/1.json: must be a JSON object"),
        ("thresholds/1.json", b'{"version": 1}', BundleError, "thresholds/1.json: invalid"),
        ("model.tar.gz", b"", BundleError, "model.tar.gz: not a gzip file"),
        ("calibration.npz", b"PK\x03\x04", BundleError, "calibration.npz: corrupt or truncated"),
    ],
)
def test_corrupt_files_give_errors_naming_the_file(
    saved: Registry, relative: str, content: bytes, error: type[Exception], match: str
) -> None:
    (root(saved) / MODEL_DIR / relative).write_bytes(content)
    with pytest.raises(error, match=match) as info:
        saved.load_bundle(VERSION, 1)
    assert str(root(saved)) in str(info.value)


def test_truncated_files_give_errors_naming_the_file(saved: Registry) -> None:
    for name in ("manifest.json", "model.tar.gz", "calibration.npz", "thresholds/1.json"):
        path = root(saved) / MODEL_DIR / name
        whole = path.read_bytes()
        size = len(whole.rstrip(b"\n"))  # without the trailing newline of JSON files
        for end in sorted({1, size // 3, size // 2, size - 1}):
            path.write_bytes(whole[:end])
            with pytest.raises(BundleError, match=re.escape(name)):
                saved.load_bundle(VERSION, 1)
        path.write_bytes(whole)
    saved.load_bundle(VERSION, 1)


def test_files_that_disagree_with_their_place_are_rejected(saved: Registry) -> None:
    tdir = root(saved) / MODEL_DIR / "thresholds"
    (tdir / "2.json").write_bytes((tdir / "1.json").read_bytes())
    with pytest.raises(BundleError, match=r"2.json: says version 1, expected 2"):
        saved.load_thresholds(VERSION, 2)
    other = json.loads((tdir / "1.json").read_text()) | {"version": 3, "model_version": "other"}
    (tdir / "3.json").write_text(json.dumps(other))
    with pytest.raises(BundleError, match=r"3.json: belongs to model 'other'"):
        saved.load_thresholds(VERSION, 3)
    mdir = root(saved) / "models" / "copy"
    mdir.mkdir()
    (mdir / "manifest.json").write_bytes((root(saved) / MODEL_DIR / "manifest.json").read_bytes())
    with pytest.raises(BundleError, match=r"copy/manifest.json: says model_version"):
        saved.load_manifest("copy")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not json", "ACTIVE: not valid JSON"),
        (b"\xff", "ACTIVE: not valid JSON"),
        (b"[]", "ACTIVE: must be a JSON object"),
        (b'{"model_version": "a/../b", "thresholds_version": 1}', "ACTIVE: invalid model_version"),
        (b'{"model_version": "v1", "thresholds_version": "1"}', "invalid thresholds_version"),
        (b'{"model_version": "v1", "thresholds_version": true}', "invalid thresholds_version"),
        (b'{"model_version": "v1"}', "invalid thresholds_version None"),
    ],
)
def test_corrupt_active_pointer_is_a_registry_error(
    registry: Registry, content: bytes, match: str
) -> None:
    path = root(registry) / "ACTIVE"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(RegistryError, match=match):
        registry.active()


def test_unknown_versions_list_what_exists(saved: Registry) -> None:
    with pytest.raises(RegistryError, match=f"'zzz' not found in .*; it has {VERSION}$"):
        saved.load_bundle("zzz")
    with pytest.raises(RegistryError, match=r"'zzz' not found"):
        saved.list_thresholds("zzz")


def test_empty_registry_says_so(tmp_path: Path) -> None:
    reg = open_registry(tmp_path / "nothing-here")
    assert reg.list_models() == []
    assert reg.active() is None
    with pytest.raises(RegistryError, match=r"not found: the registry at .*nothing-here is empty"):
        reg.load_manifest(VERSION)


def test_a_model_without_thresholds_cannot_load(registry: Registry) -> None:
    registry.save_model(manifest(), centroids(), sample())
    with pytest.raises(RegistryError, match=r"has no thresholds versions"):
        registry.load_bundle(VERSION)


def test_many_models_are_listed_sorted_and_messages_stay_short(registry: Registry) -> None:
    names = [f"v{i:02d}" for i in range(12)]
    for name in reversed(names):
        registry.save_model(manifest(model_version=name), centroids(), sample())
    assert [m.model_version for m in registry.list_models()] == names
    with pytest.raises(RegistryError, match=r"it has v02, .* v11 \(and 2 older\)$"):
        registry.load_manifest("v99")


def test_jobs_prefix_is_reserved_and_ignored_by_model_listing(saved: Registry) -> None:
    assert saved.jobs_prefix == "jobs/"
    saved.storage.write("jobs/abc.json", b"{}")
    (root(saved) / "models" / "half-written").mkdir()
    assert saved.model_versions() == [VERSION]


# -- keys and storage -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../secret",
        "models/../../secret",
        "models//x",
        "models/./x",
        "models/x/",
        "a\\..\\b",
        "C:/Windows",
        "nul\x00byte",
        "..",
    ],
)
def test_path_traversal_and_odd_keys_are_rejected(key: str) -> None:
    with pytest.raises(RegistryError, match=r"invalid storage key"):
        validate_key(key)


def test_storage_never_leaves_its_root(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"top secret")
    storage = LocalStorage(tmp_path / "root")
    with pytest.raises(RegistryError, match=r"invalid storage key"):
        storage.read("../secret")
    with pytest.raises(RegistryError, match=r"invalid storage key"):
        storage.write("../secret", b"overwritten")
    with pytest.raises(RegistryError, match=r"invalid storage key"):
        storage.exists(str(tmp_path / "secret"))
    with pytest.raises(RegistryError, match=r"invalid storage key"):
        storage.list("../")
    assert (tmp_path / "secret").read_bytes() == b"top secret"
    reg = Registry(storage)
    with pytest.raises(RegistryError, match=r"invalid model version"):
        reg.load_manifest("../../secret")


def test_local_storage_basics(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "r")
    assert storage.list("") == []
    storage.write("a/b/c.json", b"1")
    storage.write("a/b/c.json", b"2")
    storage.write("a/bc.txt", b"3")
    storage.write("top", b"4")
    assert storage.read("a/b/c.json") == b"2"
    assert storage.exists("a/b/c.json")
    assert not storage.exists("a/b")  # a directory is not an object
    assert storage.list("") == ["a/b/c.json", "a/bc.txt", "top"]
    assert storage.list("a/") == ["a/b/c.json", "a/bc.txt"]
    assert storage.list("a/b") == ["a/b/c.json", "a/bc.txt"]  # string prefix, like S3
    assert storage.list("a/b/") == ["a/b/c.json"]
    assert storage.list("zzz/") == []
    assert temp_files(tmp_path) == []
    with pytest.raises(MissingKeyError, match=r"not found"):
        storage.read("a/missing")
    with pytest.raises(RegistryError, match=r"cannot read"):
        storage.read("a/b")
    with pytest.raises(RegistryError, match=r"cannot write"):
        storage.write("top/inside", b"x")  # 'top' is a file


def test_open_registry_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAUDSCORE_KMS_KEY_ID", raising=False)
    # S3 registries need a KMS key (tests/training/test_s3_storage.py covers the rest)
    with pytest.raises(RegistryError, match="FRAUDSCORE_KMS_KEY_ID"):
        open_registry("s3://bucket/prefix")
    with pytest.raises(RegistryError, match=r"unsupported registry location"):
        open_registry("gs://bucket/prefix")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RegistryError, match=r"is not a directory"):
        open_registry(tmp_path / "file")
    reg = open_registry(str(tmp_path / "new"))
    assert reg.location == str(tmp_path / "new")
