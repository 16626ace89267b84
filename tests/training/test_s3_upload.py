"""Streaming uploads to S3: one PutObject or a multipart upload, SSE-KMS, never half-written.

Happy paths run against moto (in process, its 5 MiB part minimum lowered so that small
parts work); failures come from botocore's Stubber, which answers each call as AWS would.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.stub import ANY, Stubber
from botocore.validate import validate_parameters
from moto import mock_aws

from tests.training.test_sagemaker_requests import config
from training.s3_upload import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MIB,
    UploadError,
    part_size_for,
    part_sizes,
    upload_plan,
    upload_stream,
)

pytestmark = pytest.mark.usefixtures("fake_aws")
REGION = "us-east-1"
BUCKET = "fraudscore-data"
KEY = "fraudscore/data/run/train/train.csv"
KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/abcd"
URL = f"s3://{BUCKET}/{KEY}"
PART = 100  # bytes: small parts, so a few hundred bytes make a multipart upload
SSE = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": KMS_KEY, "BucketKeyEnabled": True}


def pieces(total: int, size: int = 37) -> list[bytes]:
    """``total`` bytes of varying content in pieces that do not line up with the parts."""
    data = bytes(i % 251 for i in range(total))
    return [data[i : i + size] for i in range(0, total, size)]


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's S3 with the bucket, accepting parts of any size."""
    monkeypatch.setattr("moto.s3.models.S3_UPLOAD_PART_MIN_SIZE", 1)
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        yield client


def record(client: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every request the client sends from now on: (operation, parameters)."""
    sent: list[tuple[str, dict[str, Any]]] = []

    def remember(params: dict[str, Any], model: Any, **_: Any) -> None:
        sent.append((model.name, dict(params)))

    client.meta.events.register("before-parameter-build.s3.*", remember)
    return sent


def body_size(request: dict[str, Any]) -> int:
    """The size of a body, or of a plan's ``<N bytes>`` placeholder for one."""
    body = request["Body"]
    if isinstance(body, bytes):
        return len(body)
    return int(body.rsplit(" ", 2)[-2].lstrip("<"))


@pytest.mark.parametrize(
    ("size", "expected"),
    [(0, []), (99, []), (100, []), (101, [100, 1]), (250, [100, 100, 50]), (300, [100] * 3)],
)
def test_every_part_but_the_last_is_full(size: int, expected: list[int]) -> None:
    assert part_sizes(size, PART) == expected


def test_the_part_size_grows_only_when_s3s_part_limit_needs_it() -> None:
    assert part_size_for(10 * MIB, 16 * MIB) == 16 * MIB
    assert part_size_for(MAX_PARTS * 16 * MIB, 16 * MIB) == 16 * MIB
    assert part_size_for(MAX_PARTS * 16 * MIB + 1, 16 * MIB) == 16 * MIB + 1
    with pytest.raises(UploadError, match="may not fit in one S3 object"):
        part_size_for(MAX_PARTS * MAX_PART_SIZE + 1)


def test_a_longer_stream_is_a_multipart_upload_encrypted_under_the_key(s3: Any) -> None:
    data = pieces(1234)
    recorded = record(s3)
    uploaded = upload_stream(
        s3, config(region=REGION, kms_key_id=KMS_KEY), KEY, data, part_size=PART
    )
    sent = list(recorded)
    head = s3.head_object(Bucket=BUCKET, Key=KEY)
    body = s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read()
    assert (uploaded.url, uploaded.size, uploaded.parts) == (URL, 1234, 13)
    assert body == b"".join(data)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == KMS_KEY
    assert [op for op, _ in sent] == [
        "CreateMultipartUpload",
        *["UploadPart"] * 13,
        "CompleteMultipartUpload",
    ]
    assert {k: sent[0][1][k] for k in SSE} == SSE
    assert [body_size(params) for _, params in sent[1:-1]] == [PART] * 12 + [34]
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=BUCKET)


@pytest.mark.parametrize("size", [0, 1, PART])
def test_a_stream_that_fits_in_one_part_is_one_put_object(s3: Any, size: int) -> None:
    recorded = record(s3)
    uploaded = upload_stream(
        s3, config(region=REGION, kms_key_id=KMS_KEY), KEY, pieces(size), part_size=PART
    )
    sent = list(recorded)
    head = s3.head_object(Bucket=BUCKET, Key=KEY)
    assert (uploaded.size, uploaded.parts) == (size, 0)
    assert [op for op, _ in sent] == ["PutObject"]
    assert {k: sent[0][1][k] for k in SSE} == SSE
    assert head["ContentLength"] == size
    assert head["SSEKMSKeyId"] == KMS_KEY


def test_the_plan_lists_exactly_the_requests_of_the_upload(s3: Any) -> None:
    c = config(region=REGION, kms_key_id=KMS_KEY)
    for size in (PART, 3 * PART, 3 * PART + 1):
        sent = record(s3)
        upload_stream(s3, c, KEY, pieces(size), part_size=PART)
        plan = upload_plan(c, KEY, size=size, part_size=PART, body="the rows")
        assert [step["operation"] for step in plan] == [op for op, _ in sent]
        for step, (op, params) in zip(plan, sent, strict=True):
            shown = step["request"]
            assert set(shown) == set(params), op
            if "Body" in params:
                assert body_size(shown) == body_size(params)
            if op == "CompleteMultipartUpload":
                numbers = [p["PartNumber"] for p in params["MultipartUpload"]["Parts"]]
                assert [p["PartNumber"] for p in shown["MultipartUpload"]["Parts"]] == numbers
        s3.meta.events.unregister("before-parameter-build.s3.*")


def test_the_plan_is_valid_for_botocore() -> None:
    model = botocore.session.get_session().get_service_model("s3")
    c = config(kms_key_id=KMS_KEY)
    for size in (10, 250):
        for step in upload_plan(c, KEY, size=size, part_size=PART, body="rows"):
            operation = model.operation_model(step["operation"])
            validate_parameters(step["request"], operation.input_shape)
    single = upload_plan(c, KEY, size=10, part_size=PART, body="4 rows as CSV")
    assert single[0]["request"]["Body"] == "<4 rows as CSV, 10 bytes>"
    complete = upload_plan(c, KEY, size=250, part_size=PART, body="rows")[-1]["request"]
    assert complete["MultipartUpload"]["Parts"][2] == {
        "PartNumber": 3,
        "ETag": "<ETag from UploadPart 3>",
    }


def test_parts_are_sent_while_the_stream_is_still_being_read(s3: Any) -> None:
    drawn = 0

    def stream() -> Iterator[bytes]:
        nonlocal drawn
        for piece in pieces(1000, size=10):
            drawn += 1
            yield piece

    seen_at_part: list[int] = []
    s3.meta.events.register(
        "before-parameter-build.s3.UploadPart", lambda **_: seen_at_part.append(drawn)
    )
    upload_stream(s3, config(region=REGION), KEY, stream(), part_size=PART)
    # Part n goes out once 10 n + 1 pieces (of 10 bytes) are read: never the whole stream.
    assert seen_at_part == [11, 21, 31, 41, 51, 61, 71, 81, 91, 100]


def test_a_failure_leaves_neither_an_object_nor_parts_in_the_bucket(s3: Any) -> None:
    def broken() -> Iterator[bytes]:
        yield b"x" * 350  # three parts go out
        raise ValueError("disk read error")

    with pytest.raises(ValueError, match="disk read error"):
        upload_stream(s3, config(region=REGION), KEY, broken(), part_size=PART)
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=BUCKET)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


def test_memory_stays_near_two_parts_whatever_the_size_of_the_stream() -> None:
    part_size, total = 5 * MIB, 60 * MIB  # S3's real minimum part size
    client, stubber = stubbed()
    stubber.add_response("create_multipart_upload", {"UploadId": "up-1"})
    for number in range(1, len(part_sizes(total, part_size)) + 1):
        stubber.add_response("upload_part", {"ETag": f'"etag-{number}"'})
    stubber.add_response("complete_multipart_upload", {})
    piece = bytes(MIB)  # the same piece each time: the source itself holds nothing
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        with stubber:
            upload_stream(client, config(), KEY, (piece for _ in range(60)), part_size=part_size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        if not tracing:
            tracemalloc.stop()
    stubber.assert_no_pending_responses()
    # One part being sent, the next being gathered, a piece: about 12 MiB here, not 60.
    assert peak < 3 * part_size


# Failures: botocore's Stubber, which also checks the parameters of every call.


def stubbed() -> tuple[Any, Stubber]:
    client = boto3.client("s3", region_name=REGION)
    return client, Stubber(client)


def expect_create(stubber: Stubber) -> None:
    stubber.add_response(
        "create_multipart_upload",
        {"Bucket": BUCKET, "Key": KEY, "UploadId": "up-1"},
        {"Bucket": BUCKET, "Key": KEY, **SSE},
    )


def expect_part(stubber: Stubber, number: int) -> None:
    stubber.add_response(
        "upload_part",
        {"ETag": f'"etag-{number}"'},
        {"Bucket": BUCKET, "Key": KEY, "UploadId": "up-1", "PartNumber": number, "Body": ANY},
    )


def expect_abort(stubber: Stubber, *, fails: bool = False) -> None:
    expected = {"Bucket": BUCKET, "Key": KEY, "UploadId": "up-1"}
    if fails:
        stubber.add_client_error(
            "abort_multipart_upload", "AccessDenied", "no", 403, None, expected
        )
    else:
        stubber.add_response("abort_multipart_upload", {}, expected)


def test_a_failed_part_aborts_the_upload_and_the_error_names_the_step_and_key() -> None:
    client, stubber = stubbed()
    expect_create(stubber)
    expect_part(stubber, 1)
    stubber.add_client_error("upload_part", "SlowDown", "Please reduce your request rate", 503)
    expect_abort(stubber)
    with stubber, pytest.raises(UploadError) as caught:
        upload_stream(client, config(kms_key_id=KMS_KEY), KEY, pieces(350), part_size=PART)
    stubber.assert_no_pending_responses()
    assert str(caught.value) == (
        f"UploadPart 2 of {URL} failed: SlowDown: Please reduce your request rate; "
        "the multipart upload was aborted"
    )


def test_a_failed_completion_aborts_the_upload() -> None:
    client, stubber = stubbed()
    expect_create(stubber)
    expect_part(stubber, 1)
    expect_part(stubber, 2)
    stubber.add_client_error("complete_multipart_upload", "KMS.AccessDeniedException", "kms")
    expect_abort(stubber)
    with stubber, pytest.raises(UploadError, match=f"^CompleteMultipartUpload of {URL} failed"):
        upload_stream(client, config(kms_key_id=KMS_KEY), KEY, pieces(150), part_size=PART)
    stubber.assert_no_pending_responses()


def test_an_abort_that_fails_too_is_reported_with_the_upload_id() -> None:
    client, stubber = stubbed()
    expect_create(stubber)
    stubber.add_client_error("upload_part", "InternalError", "boom", 500)
    expect_abort(stubber, fails=True)
    with stubber, pytest.raises(UploadError) as caught:
        upload_stream(client, config(kms_key_id=KMS_KEY), KEY, pieces(150), part_size=PART)
    stubber.assert_no_pending_responses()
    message = str(caught.value)
    assert message.startswith(f"UploadPart 1 of {URL} failed: InternalError: boom; ")
    assert "AbortMultipartUpload failed too (AccessDenied: no): upload up-1" in message


def test_a_failing_data_source_still_aborts_the_upload() -> None:
    def broken() -> Iterator[bytes]:
        yield b"x" * 150  # part 1, and 50 bytes towards part 2
        raise ValueError("disk read error")

    client, stubber = stubbed()
    expect_create(stubber)
    expect_part(stubber, 1)
    expect_abort(stubber)
    with stubber, pytest.raises(ValueError, match="disk read error"):
        upload_stream(client, config(kms_key_id=KMS_KEY), KEY, broken(), part_size=PART)
    stubber.assert_no_pending_responses()


def test_a_refused_create_has_nothing_to_abort() -> None:
    client, stubber = stubbed()
    stubber.add_client_error("create_multipart_upload", "NoSuchBucket", "no bucket", 404)
    with stubber, pytest.raises(UploadError, match=f"^CreateMultipartUpload of {URL} failed: "):
        upload_stream(client, config(kms_key_id=KMS_KEY), KEY, pieces(150), part_size=PART)
    stubber.assert_no_pending_responses()


def test_a_refused_put_names_the_key() -> None:
    client, stubber = stubbed()
    stubber.add_client_error("put_object", "KMS.NotFoundException", "Invalid keyId", 400)
    with stubber, pytest.raises(UploadError) as caught:
        upload_stream(client, config(kms_key_id=KMS_KEY), KEY, pieces(50), part_size=PART)
    assert str(caught.value) == f"PutObject of {URL} failed: KMS.NotFoundException: Invalid keyId"
