"""The S3 storage adapter: the local storage contract on moto, SSE-KMS on every write, a whole
registry on S3, AWS errors as one-line RegistryErrors (botocore Stubber), open_registry URLs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError
from botocore.response import StreamingBody
from botocore.stub import Stubber
from moto import mock_aws

from tests.aws_fakes import isolate_from_aws
from tests.training.test_registry import VERSION, centroids, manifest, sample, thresholds
from training.errors import RegistryError
from training.registry import Registry, open_registry
from training.s3_storage import S3Storage
from training.storage import TEMP_PREFIX, LocalStorage, MissingKeyError, Storage

REGION = "eu-west-1"
BUCKET = "fraudscore-registry"
FAKE_CREDENTIAL = "wJalrXUtnFEMI-not-a-real-key"
STUB_KEY = f"arn:aws:kms:{REGION}:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region; no profile, config file or endpoint from the host."""
    isolate_from_aws(monkeypatch, region=REGION, secret=FAKE_CREDENTIAL)


@pytest.fixture
def aws() -> Iterator[tuple[Any, str]]:
    """Moto's S3 and KMS in process: an S3 client with the bucket created, and a KMS key ARN."""
    with mock_aws():
        kms_key = boto3.client("kms").create_key(Description="registry")["KeyMetadata"]["Arn"]
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield s3, kms_key


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The same contract runs against both adapters."""
    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    s3, kms_key = request.getfixturevalue("aws")
    return S3Storage(s3, BUCKET, "registry", kms_key)


def sse_of(s3: Any, key: str) -> tuple[str, str, bool]:
    head = s3.head_object(Bucket=BUCKET, Key=key)
    return head["ServerSideEncryption"], head["SSEKMSKeyId"], head["BucketKeyEnabled"]


# -- the storage contract (LocalStorage and S3Storage alike) --------------------------------


def test_round_trip_overwrite_exists_and_list(storage: Storage) -> None:
    assert storage.list("") == []
    storage.write("a/b/c.json", b"1")
    storage.write("a/b/c.json", b"2")
    storage.write("a/bc.txt", b"3")
    storage.write("top", b"\x00\xffbinary")
    storage.write("empty", b"")
    assert storage.read("a/b/c.json") == b"2"
    assert storage.read("top") == b"\x00\xffbinary"
    assert storage.read("empty") == b""
    assert storage.exists("a/b/c.json")
    assert not storage.exists("a/b")  # a "directory" is not an object
    assert not storage.exists("a/missing")
    assert storage.list("") == ["a/b/c.json", "a/bc.txt", "empty", "top"]
    assert storage.list("a/") == ["a/b/c.json", "a/bc.txt"]
    assert storage.list("a/b") == ["a/b/c.json", "a/bc.txt"]  # a string prefix
    assert storage.list("a/b/") == ["a/b/c.json"]
    assert storage.list("zzz/") == []


def test_missing_keys(storage: Storage) -> None:
    storage.write("a/b/c.json", b"1")
    with pytest.raises(MissingKeyError, match=r"a/missing: not found") as info:
        storage.read("a/missing")
    assert info.value.key == "a/missing"


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../secret", "models/../../x", "models//x", "a\\b", "C:/x", ".."]
)
def test_invalid_keys_are_rejected(storage: Storage, key: str) -> None:
    with pytest.raises(RegistryError, match=r"invalid storage key"):
        storage.read(key)
    with pytest.raises(RegistryError, match=r"invalid storage key"):
        storage.write(key, b"x")
    with pytest.raises(RegistryError, match=r"invalid storage key"):
        storage.exists(key)
    if key:  # "" is the whole storage as a list prefix
        with pytest.raises(RegistryError, match=r"invalid storage key"):
            storage.list(key)


# -- S3 specifics on moto -----------------------------------------------------------------------


def test_every_write_is_sse_kms_with_the_configured_key(aws: tuple[Any, str]) -> None:
    s3, kms_key = aws
    storage = S3Storage(s3, BUCKET, "/registry/", kms_key)
    storage.write("ACTIVE", b"{}")
    storage.write("models/v/manifest.json", b"{}")
    storage.write("ACTIVE", b"{}\n")  # a replacement is encrypted too
    listed = s3.list_objects_v2(Bucket=BUCKET)["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        "registry/ACTIVE",
        "registry/models/v/manifest.json",
    ]
    for obj in listed:
        assert sse_of(s3, obj["Key"]) == ("aws:kms", kms_key, True)


def test_keys_are_relative_to_the_prefix_and_prefixes_do_not_leak(aws: tuple[Any, str]) -> None:
    s3, kms_key = aws
    storage = S3Storage(s3, BUCKET, "reg", kms_key)
    sibling = S3Storage(s3, BUCKET, "reg-old", kms_key)
    root = S3Storage(s3, BUCKET, "", kms_key)
    storage.write("models/x", b"1")
    sibling.write("models/y", b"2")
    assert storage.list("") == ["models/x"]
    assert sibling.list("models/") == ["models/y"]
    assert root.list("") == ["reg-old/models/y", "reg/models/x"]
    assert root.read("reg/models/x") == b"1"
    assert not storage.exists("models/y")
    assert (storage.url, root.url, repr(storage)) == (
        f"s3://{BUCKET}/reg",
        f"s3://{BUCKET}",
        f"S3Storage('s3://{BUCKET}/reg')",
    )


def test_objects_no_key_can_name_are_not_listed(aws: tuple[Any, str]) -> None:
    s3, kms_key = aws
    storage = S3Storage(s3, BUCKET, "reg", kms_key)
    storage.write("models/v/manifest.json", b"{}")
    # written by other tools: a console "folder", an empty path part, a synced local temp file
    for key in ("reg/models/", "reg/models//x", f"reg/models/v/{TEMP_PREFIX}ab-manifest.json"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"")
    assert storage.list("") == ["models/v/manifest.json"]


def test_missing_key_names_the_s3_url(aws: tuple[Any, str]) -> None:
    s3, kms_key = aws
    storage = S3Storage(s3, BUCKET, "reg", kms_key)
    storage.write("a/b/c.json", b"1")
    with pytest.raises(MissingKeyError, match=rf"^s3://{BUCKET}/reg/ACTIVE: not found$"):
        storage.read("ACTIVE")
    # unlike a local directory, a "folder" is simply no object
    with pytest.raises(MissingKeyError, match=rf"^s3://{BUCKET}/reg/a/b: not found$"):
        storage.read("a/b")


def test_a_missing_bucket_is_a_registry_error(aws: tuple[Any, str]) -> None:
    s3, kms_key = aws
    storage = S3Storage(s3, "no-such-bucket", "reg", kms_key)
    with pytest.raises(
        RegistryError, match=r"^s3://no-such-bucket/reg/x: cannot write \(NoSuchBucket\)$"
    ):
        storage.write("x", b"1")
    with pytest.raises(RegistryError, match=r"cannot read \(NoSuchBucket\)") as info:
        storage.read("x")
    assert not isinstance(info.value, MissingKeyError)
    with pytest.raises(RegistryError, match=r"cannot list \(NoSuchBucket\)"):
        storage.list("")


def test_a_whole_registry_round_trip_on_s3(
    aws: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    s3, kms_key = aws
    monkeypatch.setenv("FRAUDSCORE_KMS_KEY_ID", kms_key)
    registry = open_registry(f"s3://{BUCKET}/registry/")
    assert isinstance(registry.storage, S3Storage)
    assert registry.location == f"s3://{BUCKET}/registry"
    assert registry.active() is None
    registry.save_model(manifest(), centroids(), sample())
    stored = registry.save_thresholds(thresholds())
    assert registry.activate(VERSION, stored.version).to_dict() == {
        "model_version": VERSION,
        "thresholds_version": 1,
        "activation": 1,
    }

    # a second process sees the same registry
    again = open_registry(f"s3://{BUCKET}/registry")
    pointer = again.active()
    assert pointer is not None
    assert (pointer.model_version, pointer.thresholds_version) == (VERSION, 1)
    assert again.model_versions() == [VERSION]
    bundle = again.load_bundle(pointer.model_version, pointer.thresholds_version)
    assert bundle.manifest == manifest()
    np.testing.assert_array_equal(bundle.centroids, centroids())
    np.testing.assert_array_equal(bundle.thresholds.values, thresholds().values)
    np.testing.assert_array_equal(bundle.calibration.distances, sample().distances)

    # the same layout as a local directory, every object encrypted with the key
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
    model_dir = f"registry/models/{VERSION}"
    assert keys == [
        "registry/ACTIVE",
        "registry/activations/000001.json",
        f"{model_dir}/calibration.npz",
        f"{model_dir}/manifest.json",
        f"{model_dir}/model.tar.gz",
        f"{model_dir}/thresholds/1.json",
    ]
    assert {sse_of(s3, key) for key in keys} == {("aws:kms", kms_key, True)}
    with pytest.raises(
        RegistryError, match=rf"'nope-1' not found in the registry at s3://{BUCKET}/"
    ):
        again.load_manifest("nope-1")


# -- error mapping with botocore's Stubber ---------------------------------------------------


@pytest.fixture
def stubbed() -> Iterator[tuple[S3Storage, Stubber]]:
    """An S3Storage over a real client whose responses are queued by a Stubber."""
    client = boto3.client("s3", region_name=REGION)
    with Stubber(client) as stubber:
        yield S3Storage(client, "bucket", "reg", STUB_KEY), stubber
        stubber.assert_no_pending_responses()


def test_put_object_sends_exactly_the_sse_kms_parameters(
    stubbed: tuple[S3Storage, Stubber],
) -> None:
    storage, stubber = stubbed
    stubber.add_response(
        "put_object",
        {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": STUB_KEY, "BucketKeyEnabled": True},
        expected_params={
            "Bucket": "bucket",
            "Key": "reg/ACTIVE",
            "Body": b"{}",
            "ServerSideEncryption": "aws:kms",
            "SSEKMSKeyId": STUB_KEY,
            "BucketKeyEnabled": True,
        },
    )
    storage.write("ACTIVE", b"{}")


def test_access_denied_is_one_line_naming_url_and_code(stubbed: tuple[S3Storage, Stubber]) -> None:
    storage, stubber = stubbed
    stubber.add_client_error(
        "get_object",
        "AccessDenied",
        "Access Denied",
        403,
        expected_params={"Bucket": "bucket", "Key": "reg/ACTIVE"},
    )
    with pytest.raises(RegistryError) as info:
        storage.read("ACTIVE")
    assert str(info.value) == "s3://bucket/reg/ACTIVE: cannot read (AccessDenied)"
    assert not isinstance(info.value, MissingKeyError)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__  # no chained boto traceback


def test_no_such_key_is_a_missing_key(stubbed: tuple[S3Storage, Stubber]) -> None:
    storage, stubber = stubbed
    stubber.add_client_error("get_object", "NoSuchKey", "The specified key does not exist.", 404)
    with pytest.raises(
        MissingKeyError, match=r"^s3://bucket/reg/models/v/manifest.json: not found$"
    ):
        storage.read("models/v/manifest.json")
    stubber.add_client_error("get_object", "NoSuchKey", http_status_code=404)
    assert Registry(storage).active() is None


def test_read_returns_the_body(stubbed: tuple[S3Storage, Stubber]) -> None:
    storage, stubber = stubbed
    stubber.add_response("get_object", {"Body": StreamingBody(io.BytesIO(b"data"), 4)})
    assert storage.read("x") == b"data"


def test_write_failures_are_registry_errors(stubbed: tuple[S3Storage, Stubber]) -> None:
    storage, stubber = stubbed
    stubber.add_client_error("put_object", "KMS.NotFoundException", "Invalid keyId", 400)
    with pytest.raises(
        RegistryError, match=r"^s3://bucket/reg/ACTIVE: cannot write \(KMS.NotFoundException\)$"
    ):
        storage.write("ACTIVE", b"{}")


def test_exists_maps_404_to_false_and_other_errors_to_registry_errors(
    stubbed: tuple[S3Storage, Stubber],
) -> None:
    storage, stubber = stubbed
    stubber.add_response("head_object", {"ContentLength": 2})
    stubber.add_client_error("head_object", "404", "Not Found", 404)
    stubber.add_client_error("head_object", "403", "Forbidden", 403)
    assert storage.exists("a")
    assert not storage.exists("b")
    with pytest.raises(RegistryError, match=r"^s3://bucket/reg/c: cannot check \(403\)$"):
        storage.exists("c")


def test_list_follows_pages(stubbed: tuple[S3Storage, Stubber]) -> None:
    storage, stubber = stubbed
    stubber.add_response(
        "list_objects_v2",
        {"Contents": [{"Key": "reg/models/b"}], "IsTruncated": True, "NextContinuationToken": "t1"},
        expected_params={"Bucket": "bucket", "Prefix": "reg/models/"},
    )
    stubber.add_response(
        "list_objects_v2",
        {"Contents": [{"Key": "reg/models/a"}], "IsTruncated": False},
        expected_params={"Bucket": "bucket", "Prefix": "reg/models/", "ContinuationToken": "t1"},
    )
    stubber.add_client_error("list_objects_v2", "SlowDown", "Reduce your request rate.", 503)
    assert storage.list("models/") == ["models/a", "models/b"]
    with pytest.raises(RegistryError, match=r"^s3://bucket/reg/models/: cannot list \(SlowDown\)$"):
        storage.list("models/")


def test_connection_failures_are_registry_errors() -> None:
    client = boto3.client(
        "s3", region_name=REGION, config=Config(retries={"total_max_attempts": 1})
    )

    def unreachable(**_: Any) -> None:
        raise EndpointConnectionError(endpoint_url="https://bucket.s3.eu-west-1.amazonaws.com")

    # before-send: the request is fully built and signed, but never leaves the machine
    client.meta.events.register("before-send.s3", unreachable)
    storage = S3Storage(client, "bucket", "reg", STUB_KEY)
    with pytest.raises(
        RegistryError, match=r"^s3://bucket/reg/x: cannot read \(EndpointConnectionError\)$"
    ) as info:
        storage.read("x")
    assert FAKE_CREDENTIAL not in str(info.value)
    with pytest.raises(RegistryError, match=r"cannot write \(EndpointConnectionError\)"):
        storage.write("x", b"1")


# -- open_registry ------------------------------------------------------------------------------


def test_an_s3_registry_needs_a_kms_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RegistryError, match=r"^s3://bucket/prefix: .*set FRAUDSCORE_KMS_KEY_ID"):
        open_registry("s3://bucket/prefix")
    monkeypatch.setenv("FRAUDSCORE_KMS_KEY_ID", "  ")
    with pytest.raises(RegistryError, match=r"FRAUDSCORE_KMS_KEY_ID"):
        open_registry("s3://bucket/prefix")
    with pytest.raises(RegistryError, match=r"KMS key id is required"):
        S3Storage(boto3.client("s3"), "bucket", "prefix", "")


def test_the_kms_key_argument_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDSCORE_KMS_KEY_ID", "from-env")
    storage = open_registry("s3://bucket/prefix").storage
    assert isinstance(storage, S3Storage)
    assert storage.kms_key_id == "from-env"
    storage = open_registry("s3://bucket/prefix", kms_key_id=STUB_KEY).storage
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.kms_key_id) == ("bucket", "prefix/", STUB_KEY)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("s3://", "no bucket name"),
        ("s3:///x", "no bucket name"),
        ("s3://a/x", "bad bucket name 'a'"),
        ("s3://bad bucket/x", "bad bucket name"),
        ("s3://-bucket/x", "bad bucket name"),
        ("s3://bucket/a//b", "the prefix must be"),
        ("s3://bucket/../x", "the prefix must be"),
        ("s3://bucket/a\\b", "the prefix must be"),
    ],
)
def test_bad_s3_urls_are_registry_errors(url: str, problem: str) -> None:
    with pytest.raises(RegistryError, match=rf"^invalid S3 registry location .*{problem}"):
        open_registry(url, kms_key_id=STUB_KEY)


def test_region_and_endpoint_come_from_boto3_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    storage = open_registry("s3://bucket", kms_key_id=STUB_KEY).storage
    assert isinstance(storage, S3Storage)
    assert storage.client.meta.region_name == "eu-central-1"
    assert storage.client.meta.endpoint_url == "http://127.0.0.1:9"
    assert storage.url == "s3://bucket"


def test_a_broken_aws_configuration_is_a_registry_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(
        RegistryError, match=r"^s3://bucket/p: cannot create an S3 client \(Profile"
    ):
        open_registry("s3://bucket/p", kms_key_id=STUB_KEY)
