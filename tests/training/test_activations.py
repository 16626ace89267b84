"""Activation history and rollback, and the exclusive create that numbers records.

Covers ``training.activations`` (numbered, immutable records), ``Registry.activate`` /
``Registry.rollback`` (walking back through history like a stack), ``save_thresholds`` under
concurrent writers, and ``create``/``delete`` of both storage adapters (local directory and
S3 on moto), including races between threads and between processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.stub import Stubber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from tests.aws_fakes import isolate_from_aws
from tests.factories import make_thresholds
from tests.training.test_registry import DIM, K, centroids, sample
from training.activations import (
    ACTIONS,
    Activation,
    activation_key,
    activation_numbers,
    load_activation,
    record_activation,
)
from training.bundle import SCHEMA_VERSION, Manifest
from training.errors import BundleError, RegistryError
from training.features import CategoricalField, FeatureSpec, NumericField
from training.registry import ActivePointer, Registry
from training.s3_storage import S3Storage
from training.storage import TEMP_PREFIX, KeyList, LocalStorage, MissingKeyError, Storage
from training.thresholds import Thresholds

MODEL_A = "20261128T004040Z-1a2b3c"
MODEL_B = "20261129T000000Z-4d5e6f"
NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
AT = "2026-11-28T12:00:00+00:00"
THREADS = 8

REGION = "eu-west-1"
BUCKET = "fraudscore-registry"


# -- a small registry -----------------------------------------------------------------------


def manifest(model_version: str = MODEL_A) -> Manifest:
    spec = FeatureSpec(
        fields=(NumericField("amount"), CategoricalField("tran_code", categories=("a", "b", "c"))),
        fitted=True,
    )
    return Manifest(
        schema_version=SCHEMA_VERSION,
        model_version=model_version,
        created_at="2026-11-28T00:40:40+00:00",
        k=K,
        feature_dim=DIM,
        feature_spec=spec.to_dict(),
        hyperparameters={"k": str(K), "feature_dim": str(DIM)},
        metrics={"test:msd": 1.5},
        source={"kind": "local"},
        data_fingerprint={"rows": 100, "sha256": "ab" * 32},
        cluster_shares=[0.5, 0.25, 0.25],
    )


def thresholds(model_version: str = MODEL_A, **overrides: Any) -> Thresholds:
    return make_thresholds(model_version, K, **overrides)


def fill(registry: Registry) -> Registry:
    """Model A with thresholds versions 1-3, model B with version 1; nothing active."""
    registry.save_model(manifest(MODEL_A), centroids(), sample())
    registry.save_model(manifest(MODEL_B), centroids(), sample())
    for n in range(1, 4):
        registry.save_thresholds(
            thresholds(MODEL_A, parent=None if n == 1 else n - 1, values=np.full(K, float(n)))
        )
    registry.save_thresholds(thresholds(MODEL_B))
    return registry


# The versions the history tests move between.
A1, A2, A3, B1 = (MODEL_A, 1), (MODEL_A, 2), (MODEL_A, 3), (MODEL_B, 1)


def local_registry(path: Path) -> Registry:
    return Registry(LocalStorage(path), location=str(path), clock=lambda: NOW)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return fill(local_registry(tmp_path / "registry"))


def versions(pointer: ActivePointer | None) -> tuple[str, int] | None:
    return None if pointer is None else (pointer.model_version, pointer.thresholds_version)


def active_file(registry: Registry) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(registry.storage.read("ACTIVE"))
    return data


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


# -- activation records ---------------------------------------------------------------------


def test_each_activation_is_a_numbered_record_named_by_the_pointer(registry: Registry) -> None:
    first = registry.activate(*A1, action="train", by="sha256:alice")
    second = registry.activate(*A2, action="promote", by="sha256:bob")
    third = registry.activate(*B1)
    assert [first.activation, second.activation, third.activation] == [1, 2, 3]
    assert activation_numbers(registry.storage) == [1, 2, 3]
    raw = json.loads(registry.storage.read("activations/000002.json"))
    assert raw == {
        "number": 2,
        "model_version": MODEL_A,
        "thresholds_version": 2,
        "action": "promote",
        "at": AT,
        "by": "sha256:bob",
        "previous": 1,
    }
    assert registry.activation(1) == Activation(1, MODEL_A, 1, "train", AT, "sha256:alice", None)
    assert registry.activation(3) == Activation(3, MODEL_B, 1, "activate", AT, None, 2)
    assert active_file(registry) == {
        "model_version": MODEL_B,
        "thresholds_version": 1,
        "activation": 3,
    }
    active = registry.active()
    assert active is not None
    assert active.activation == 3
    # What is served depends only on the versions: the record number is not part of equality.
    assert active == ActivePointer(MODEL_B, 1)


def test_rollback_walks_back_through_history_then_refuses(registry: Registry) -> None:
    for pointer in (A1, A2, B1):
        registry.activate(*pointer, action="promote")
    before, after = registry.rollback(by="sha256:carol")
    assert (versions(before), versions(after)) == (B1, A2)
    assert (before.activation, after.activation) == (3, 4)
    assert versions(registry.active()) == A2
    before, after = registry.rollback()
    assert (versions(before), versions(after)) == (A2, A1)
    assert active_file(registry) == {
        "model_version": MODEL_A,
        "thresholds_version": 1,
        "activation": 5,
    }
    # A1 was the first activation: rolling back further is refused and changes nothing.
    with pytest.raises(RegistryError, match=r"nothing to roll back to: .* is the first activation"):
        registry.rollback()
    assert versions(registry.active()) == A1
    assert activation_numbers(registry.storage) == [1, 2, 3, 4, 5]
    # Rollbacks are recorded too, chained to what was in force before their target.
    assert registry.activation(4) == Activation(4, MODEL_A, 2, "rollback", AT, "sha256:carol", 1)
    assert registry.activation(5) == Activation(5, MODEL_A, 1, "rollback", AT, None, None)


def test_activating_after_a_rollback_continues_from_the_rolled_back_state(
    registry: Registry,
) -> None:
    for pointer in (A1, A2, A3):
        registry.activate(*pointer)
    registry.rollback()  # -> A2, discarding A3
    registry.activate(*B1)
    assert [versions(p) for p in registry.rollback()] == [B1, A2]
    assert [versions(p) for p in registry.rollback()] == [A2, A1]
    with pytest.raises(RegistryError, match=r"nothing to roll back to"):
        registry.rollback()


def test_reactivating_the_same_version_is_its_own_history_step(registry: Registry) -> None:
    registry.activate(*A1)
    registry.activate(*A1)
    assert [versions(p) for p in registry.rollback()] == [A1, A1]
    with pytest.raises(RegistryError, match=r"nothing to roll back to"):
        registry.rollback()


def test_rollback_with_nothing_active_is_refused(registry: Registry) -> None:
    with pytest.raises(RegistryError, match=r"nothing to roll back: .* has no active model"):
        registry.rollback()
    assert activation_numbers(registry.storage) == []
    assert registry.active() is None


def test_a_pointer_without_an_activation_number_cannot_be_rolled_back(
    registry: Registry,
) -> None:
    registry.storage.write(
        "ACTIVE", json.dumps({"model_version": MODEL_A, "thresholds_version": 2}).encode()
    )
    assert registry.active() == ActivePointer(MODEL_A, 2)
    assert registry.active().activation is None  # type: ignore[union-attr]
    with pytest.raises(RegistryError, match=r"activated before activations were recorded"):
        registry.rollback()
    assert activation_numbers(registry.storage) == []
    assert active_file(registry) == {"model_version": MODEL_A, "thresholds_version": 2}
    # The next activation starts the history: it has no predecessor to roll back to.
    registry.activate(*B1)
    assert registry.activation(1).previous is None
    with pytest.raises(RegistryError, match=r"nothing to roll back to"):
        registry.rollback()


def test_rollback_to_a_version_that_no_longer_loads_changes_nothing(
    registry: Registry, tmp_path: Path
) -> None:
    registry.activate(*A1)
    registry.activate(*B1)
    broken = tmp_path / "registry" / "models" / MODEL_A / "thresholds" / "1.json"
    broken.write_bytes(b"{truncated")
    before = snapshot(tmp_path / "registry")
    with pytest.raises(BundleError, match=r"thresholds/1.json: not valid JSON"):
        registry.rollback()
    assert snapshot(tmp_path / "registry") == before
    assert versions(registry.active()) == B1


def test_rollback_to_a_missing_record_names_it(registry: Registry) -> None:
    registry.activate(*A1)
    registry.activate(*A2)
    registry.storage.delete(activation_key(1))
    with pytest.raises(RegistryError, match=r"activation 1 is not recorded \(.*activations/000001"):
        registry.rollback()
    assert versions(registry.active()) == A2


def test_activation_is_validated_before_anything_is_recorded(registry: Registry) -> None:
    registry.activate(*A1)
    with pytest.raises(RegistryError, match=r"unknown activation action 'deploy'"):
        registry.activate(*A2, action="deploy")
    with pytest.raises(RegistryError, match=r"no thresholds version 9"):
        registry.activate(MODEL_A, 9)
    with pytest.raises(RegistryError, match=r"must be an integer"):
        registry.activate(MODEL_A, "2")  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match=r"'nope' not found"):
        registry.activate("nope", 1)
    assert activation_numbers(registry.storage) == [1]
    assert active_file(registry)["activation"] == 1


def test_every_documented_action_can_be_recorded(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    for i, action in enumerate(ACTIONS, start=1):
        record = record_activation(
            storage,
            model_version=MODEL_A,
            thresholds_version=i,
            action=action,
            at=AT,
            by=None,
            previous=i - 1 or None,
        )
        assert record.number == i
        assert load_activation(storage, i) == record
    assert activation_numbers(storage) == list(range(1, len(ACTIONS) + 1))


def test_activation_numbers_ignore_other_files_and_continue_after_the_highest(
    tmp_path: Path,
) -> None:
    storage = LocalStorage(tmp_path)
    storage.write("activations/notes.txt", b"x")
    storage.write("activations/12.json", b"{}")  # fewer than six digits: not a record name
    storage.write(f"activations/{TEMP_PREFIX}abc-000099.json", b"{")
    storage.write("activations/000007.json", b"{}")
    storage.write("activations/nested/000050.json", b"{}")
    assert activation_numbers(storage) == [7]
    record = record_activation(
        storage,
        model_version=MODEL_A,
        thresholds_version=1,
        action="promote",
        at=AT,
        by=None,
        previous=7,
    )
    assert record.number == 8
    assert storage.exists("activations/000008.json")
    assert activation_key(1_234_567) == "activations/1234567.json"


def valid_record(**overrides: Any) -> dict[str, Any]:
    record = {
        "number": 3,
        "model_version": MODEL_A,
        "thresholds_version": 2,
        "action": "promote",
        "at": AT,
        "by": None,
        "previous": 2,
    }
    record.update(overrides)
    return record


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        (b"{oops", BundleError, r"activations/000003.json: not valid JSON"),
        (b"[]", BundleError, r"000003.json: must be a JSON object"),
        (json.dumps(valid_record(number=4)).encode(), BundleError, r"says number 4, expected 3"),
        (json.dumps(valid_record(number=True)).encode(), BundleError, r"positive integer"),
        (json.dumps(valid_record(number="3")).encode(), BundleError, r"positive integer"),
        (json.dumps(valid_record(thresholds_version=0)).encode(), BundleError, r"positive"),
        (json.dumps(valid_record(previous=-1)).encode(), BundleError, r"positive integer"),
        (json.dumps(valid_record(previous=2.0)).encode(), BundleError, r"positive integer"),
        (
            json.dumps(valid_record(model_version="../x")).encode(),
            BundleError,
            r"invalid model_version '\.\./x'",
        ),
        (
            json.dumps({k: v for k, v in valid_record().items() if k != "action"}).encode(),
            BundleError,
            r"invalid activation record: missing key 'action'",
        ),
    ],
)
def test_bad_activation_records_are_bundle_errors_naming_the_file(
    tmp_path: Path, content: bytes, error: type[Exception], match: str
) -> None:
    storage = LocalStorage(tmp_path)
    storage.write(activation_key(3), content)
    with pytest.raises(error, match=match) as info:
        load_activation(storage, 3, where="s3://bucket/reg")
    assert "s3://bucket/reg/activations/000003.json" in str(info.value)


def test_a_valid_record_round_trips_and_optional_fields_default_to_none(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    minimal = {k: v for k, v in valid_record().items() if k not in ("by", "previous")}
    storage.write(activation_key(3), json.dumps(minimal).encode())
    record = load_activation(storage, 3)
    assert record == Activation(3, MODEL_A, 2, "promote", AT, None, None)
    assert Activation.from_dict(record.to_dict(), source="x") == record
    with pytest.raises(RegistryError, match=r"activation 4 is not recorded \(activations/000004"):
        load_activation(storage, 4)


# -- history as a stack (property) ----------------------------------------------------------


class MemoryStorage:
    """The storage contract in a dict, so property tests can take hundreds of steps fast."""

    def __init__(self, objects: dict[str, bytes] | None = None) -> None:
        self.objects = dict(objects or {})
        self._lock = threading.Lock()

    def read(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError:
            raise MissingKeyError(key) from None

    def write(self, key: str, data: bytes) -> None:
        self.objects[key] = bytes(data)

    def exists(self, key: str) -> bool:
        return key in self.objects

    def list(self, prefix: str) -> KeyList:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def create(self, key: str, data: bytes) -> bool:
        with self._lock:
            if key in self.objects:
                return False
            self.objects[key] = bytes(data)
            return True

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)


@pytest.fixture(scope="module")
def template() -> MemoryStorage:
    storage = MemoryStorage()
    fill(Registry(storage))
    return storage


POINTERS = (A1, A2, A3, B1)
operations = st.lists(
    st.one_of(st.just("rollback"), st.sampled_from(range(len(POINTERS)))), max_size=14
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_activations_and_rollbacks_behave_like_a_stack(
    template: MemoryStorage, ops: list[str | int]
) -> None:
    registry = Registry(MemoryStorage(template.objects), clock=lambda: NOW)
    stack: list[tuple[str, int]] = []
    recorded = 0
    for op in ops:
        if op == "rollback":
            if len(stack) < 2:
                message = "nothing to roll back to" if stack else "has no active model"
                with pytest.raises(RegistryError, match=message):
                    registry.rollback()
            else:
                current = stack.pop()
                before, after = registry.rollback()
                recorded += 1
                assert (versions(before), versions(after)) == (current, stack[-1])
                assert registry.activation(recorded).action == "rollback"
        else:
            stack.append(POINTERS[int(op)])
            registry.activate(*POINTERS[int(op)])
            recorded += 1
        active = registry.active()
        assert versions(active) == (stack[-1] if stack else None)
        assert activation_numbers(registry.storage) == list(range(1, recorded + 1))
        if active is not None:
            assert active.activation == recorded


def test_stored_thresholds_replace_only_version_and_stamp(registry: Registry) -> None:
    given_ = thresholds(MODEL_B, version=5, parent=1, created_at="")
    stored = registry.save_thresholds(given_)
    assert stored.version == 2
    assert stored.created_at == AT
    assert replace(stored, version=5, created_at="").to_dict() == given_.to_dict()


# -- concurrent writers ---------------------------------------------------------------------


def run_together(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` for i in 0..count-1 on as many threads, released at the same moment."""
    start = threading.Barrier(count)

    def one(i: int) -> Any:
        start.wait(timeout=10)
        return work(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_concurrent_thresholds_saves_get_distinct_versions(registry: Registry) -> None:
    saved = run_together(
        THREADS,
        lambda i: registry.save_thresholds(
            thresholds(MODEL_B, parent=1, values=np.full(K, 10.0 + i))
        ),
    )
    numbers = sorted(t.version for t in saved)
    assert numbers == list(range(2, THREADS + 2))
    assert registry.list_thresholds(MODEL_B) == list(range(1, THREADS + 2))
    for stored in saved:  # each file holds what its writer was told it stored
        loaded = registry.load_thresholds(MODEL_B, stored.version)
        np.testing.assert_array_equal(loaded.values, stored.values)
        assert loaded.parent == 1


def test_concurrent_activations_get_distinct_numbers(registry: Registry) -> None:
    pointers = run_together(THREADS, lambda i: registry.activate(*POINTERS[i % len(POINTERS)]))
    assert sorted(p.activation for p in pointers) == list(range(1, THREADS + 1))
    for pointer in pointers:  # each record is the one its activation returned
        record = registry.activation(pointer.activation)
        assert (record.model_version, record.thresholds_version) == versions(pointer)
    active = registry.active()
    assert active is not None
    assert active.activation in {p.activation for p in pointers}
    record = registry.activation(active.activation)  # type: ignore[arg-type]
    assert (record.model_version, record.thresholds_version) == versions(active)


# -- storage: exclusive create and delete ---------------------------------------------------


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    """Fake credentials and region; no profile, config file or endpoint from the host."""
    with pytest.MonkeyPatch.context() as env:
        isolate_from_aws(env, region=REGION)
        yield


@pytest.fixture(scope="module")
def moto_s3(aws_env: None) -> Iterator[tuple[Any, str]]:
    """Moto's S3 and KMS in process, once per module: a client with the bucket, a KMS key ARN."""
    del aws_env
    with mock_aws():
        kms_key = boto3.client("kms").create_key(Description="registry")["KeyMetadata"]["Arn"]
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield s3, kms_key


@pytest.fixture
def aws(moto_s3: tuple[Any, str]) -> tuple[Any, str, str]:
    """The S3 client, the KMS key and a prefix of this test's own in the shared bucket."""
    s3, kms_key = moto_s3
    return s3, kms_key, f"t-{secrets.token_hex(6)}"


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    s3, kms_key, prefix = request.getfixturevalue("aws")
    return S3Storage(s3, BUCKET, prefix, kms_key)


def test_create_writes_only_when_absent(storage: Storage) -> None:
    assert storage.create("locks/retrain", b"first") is True
    assert storage.read("locks/retrain") == b"first"
    assert storage.create("locks/retrain", b"second") is False
    assert storage.read("locks/retrain") == b"first"
    storage.write("plain", b"old")
    assert storage.create("plain", b"new") is False
    assert storage.read("plain") == b"old"
    assert storage.create("empty", b"") is True
    assert storage.read("empty") == b""
    assert storage.list("") == ["empty", "locks/retrain", "plain"]


def test_delete_removes_and_a_missing_key_is_fine(storage: Storage) -> None:
    storage.create("jobs/a.cancel", b"x")
    storage.write("jobs/b.json", b"y")
    storage.delete("jobs/a.cancel")
    assert not storage.exists("jobs/a.cancel")
    with pytest.raises(MissingKeyError):
        storage.read("jobs/a.cancel")
    storage.delete("jobs/a.cancel")  # again: missing is fine
    storage.delete("never/was/here")
    assert storage.list("jobs/") == ["jobs/b.json"]
    # A deleted key can be created again: how a released lock is taken by the next job.
    assert storage.create("jobs/a.cancel", b"z") is True
    assert storage.read("jobs/a.cancel") == b"z"


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../secret", "a//b", "a/./b", "a\\b", "C:/x"])
def test_create_and_delete_reject_keys_outside_the_root(storage: Storage, key: str) -> None:
    with pytest.raises(RegistryError, match=r"invalid storage key"):
        storage.create(key, b"x")
    with pytest.raises(RegistryError, match=r"invalid storage key"):
        storage.delete(key)


def test_local_create_leaves_no_temp_file_win_or_lose(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    assert storage.create("a/b.json", b"1")
    assert not storage.create("a/b.json", b"2")
    assert temp_files(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.json"]


def test_a_failed_local_create_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path)

    def broken_fsync(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(RegistryError, match=r"b.json: cannot create \(No space left on device\)"):
        storage.create("a/b.json", b"content")
    monkeypatch.undo()
    assert not storage.exists("a/b.json")
    assert temp_files(tmp_path) == []
    assert storage.create("a/b.json", b"content") is True


def test_local_create_and_delete_report_os_errors(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.write("file", b"x")
    with pytest.raises(RegistryError, match=r"cannot create"):
        storage.create("file/inside", b"y")  # 'file' is not a directory
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").write_bytes(b"x")
    with pytest.raises(RegistryError, match=r"dir: cannot delete"):
        storage.delete("dir")  # a directory is not an object
    assert (tmp_path / "dir" / "x").exists()


def test_racing_local_creates_have_exactly_one_winner(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    keys = [f"race/{n}.json" for n in range(10)]

    def contend(i: int) -> list[bool]:
        payload = f"writer {i} ".encode() * 1000
        return [storage.create(key, payload) for key in keys]

    outcomes = run_together(THREADS, contend)
    for n, key in enumerate(keys):
        winners = [i for i in range(THREADS) if outcomes[i][n]]
        assert len(winners) == 1, key
        assert storage.read(key) == f"writer {winners[0]} ".encode() * 1000
    assert temp_files(tmp_path) == []


def test_readers_see_a_created_file_whole_or_not_at_all(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    payload = bytes(range(256)) * 4096  # 1 MiB: a partial write would be visible
    seen: list[int] = []
    stop = threading.Event()

    def read_until_done() -> None:
        while not stop.is_set():
            for n in range(5):
                try:
                    seen.append(len(storage.read(f"big/{n}")))
                except MissingKeyError:
                    seen.append(0)

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for n in range(5):
            assert storage.create(f"big/{n}", payload)
    finally:
        stop.set()
        reader.join()
    assert set(seen) <= {0, len(payload)}
    assert all(storage.read(f"big/{n}") == payload for n in range(5))


def _create_in_process(root: str, keys: list[str], start: Any, results: Any) -> None:
    storage = LocalStorage(root)
    me = str(os.getpid()).encode()
    start.wait(timeout=30)
    results.put((os.getpid(), [key for key in keys if storage.create(key, me)]))


def test_racing_processes_have_exactly_one_winner_per_key(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    keys = [f"jobs/locks/kind-{n}" for n in range(25)]
    workers = 4
    start = context.Barrier(workers)
    results = context.SimpleQueue()
    processes = [
        context.Process(target=_create_in_process, args=(str(tmp_path), keys, start, results))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    won: dict[str, int] = {}
    for _ in range(workers):
        pid, keys_won = results.get()
        for key in keys_won:
            assert key not in won, f"{key} created twice"
            won[key] = pid
    assert sorted(won) == sorted(keys)
    storage = LocalStorage(tmp_path)
    for key, pid in won.items():
        assert storage.read(key) == str(pid).encode()
    assert temp_files(tmp_path) == []


# -- S3 specifics ---------------------------------------------------------------------------


def test_s3_create_is_encrypted_with_the_configured_key(aws: tuple[Any, str, str]) -> None:
    s3, kms_key, prefix = aws
    storage = S3Storage(s3, BUCKET, prefix, kms_key)
    assert storage.create("activations/000001.json", b"{}")
    head = s3.head_object(Bucket=BUCKET, Key=f"{prefix}/activations/000001.json")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == kms_key
    assert head["BucketKeyEnabled"] is True


def stubbed(kms_key: str = "arn:aws:kms:eu-west-1:123456789012:key/x") -> tuple[S3Storage, Stubber]:
    client = boto3.client("s3", region_name=REGION)
    return S3Storage(client, BUCKET, "reg", kms_key), Stubber(client)


@pytest.mark.usefixtures("aws_env")
def test_s3_create_asks_s3_for_a_conditional_put() -> None:
    storage, stub = stubbed()
    stub.add_response(
        "put_object",
        {},
        {
            "Bucket": BUCKET,
            "Key": "reg/jobs/locks/retrain",
            "Body": b"x",
            "IfNoneMatch": "*",
            "ServerSideEncryption": "aws:kms",
            "SSEKMSKeyId": "arn:aws:kms:eu-west-1:123456789012:key/x",
            "BucketKeyEnabled": True,
        },
    )
    with stub:
        assert storage.create("jobs/locks/retrain", b"x") is True
    stub.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("code", "status"),
    [("PreconditionFailed", 412), ("ConditionalRequestConflict", 409)],
)
@pytest.mark.usefixtures("aws_env")
def test_s3_create_that_loses_the_race_returns_false(code: str, status: int) -> None:
    storage, stub = stubbed()
    stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
    with stub:
        assert storage.create("activations/000002.json", b"{}") is False


@pytest.mark.usefixtures("aws_env")
@pytest.mark.parametrize("method", ["create", "delete"])
def test_s3_create_and_delete_failures_name_the_url_and_code(method: str) -> None:
    storage, stub = stubbed()
    operation = "put_object" if method == "create" else "delete_object"
    stub.add_client_error(operation, service_error_code="AccessDenied", http_status_code=403)
    call: Callable[[], object] = (
        (lambda: storage.create("jobs/x.json", b"{}"))
        if method == "create"
        else (lambda: storage.delete("jobs/x.json"))
    )
    with stub, pytest.raises(RegistryError) as info:
        call()
    assert str(info.value) == f"s3://{BUCKET}/reg/jobs/x.json: cannot {method} (AccessDenied)"
    assert info.value.__cause__ is None


def test_a_whole_history_on_s3(aws: tuple[Any, str, str]) -> None:
    s3, kms_key, prefix = aws
    registry = fill(Registry(S3Storage(s3, BUCKET, prefix, kms_key), clock=lambda: NOW))
    assert registry.list_thresholds(MODEL_A) == [1, 2, 3]
    for pointer in (A1, B1, A3):
        registry.activate(*pointer, action="promote")
    assert [versions(p) for p in registry.rollback()] == [A3, B1]
    assert [versions(p) for p in registry.rollback()] == [B1, A1]
    with pytest.raises(RegistryError, match=r"nothing to roll back to"):
        registry.rollback()
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/activations/")["Contents"]
    assert [item["Key"] for item in listed] == [
        f"{prefix}/activations/00000{n}.json" for n in range(1, 6)
    ]
    head = s3.head_object(Bucket=BUCKET, Key=f"{prefix}/activations/000005.json")
    assert head["ServerSideEncryption"] == "aws:kms"
