"""Stream bytes into one S3 object, SSE-KMS under the configured key, in bounded memory.

The pieces of a stream are gathered into parts of ``part_size`` bytes. A stream that fits
in one part is a single ``PutObject``; a longer one is a multipart upload
(``CreateMultipartUpload``, one ``UploadPart`` per part, ``CompleteMultipartUpload``).
Every part but the last holds exactly ``part_size`` bytes, so the parts follow from the
stream's size alone and :func:`upload_plan` can list them without the data. Memory holds
about two parts (the one being sent, the next being gathered) and one piece, whatever the
stream's length.

When any step of a multipart upload fails, the upload is aborted: S3 keeps (and bills)
the parts of an unfinished upload, invisibly, until it is completed or aborted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from training.errors import FraudscoreError
from training.sagemaker_requests import (
    SageMakerConfig,
    abort_multipart_upload,
    complete_multipart_upload,
    create_multipart_upload,
    put_object,
    upload_part,
)

MIB = 1 << 20
# S3's limits: every part but the last at least 5 MiB, at most 5 GiB, at most 10,000 parts.
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000
# 16 MiB parts: 156 GiB per object before part_size_for has to raise the part size.
DEFAULT_PART_SIZE = 16 * MIB


class UploadError(FraudscoreError):
    """An upload failed; the message names the failed step and the object."""


@dataclass(frozen=True)
class Uploaded:
    """What a stream became: the object's URL, its size and its parts (0: one PutObject)."""

    url: str
    size: int
    parts: int


def part_sizes(size: int, part_size: int) -> list[int]:
    """The parts a stream of ``size`` bytes is sent in; empty when it is one PutObject."""
    if size <= part_size:
        return []
    count = -(-size // part_size)
    return [part_size] * (count - 1) + [size - part_size * (count - 1)]


def part_size_for(max_size: int, part_size: int = DEFAULT_PART_SIZE) -> int:
    """``part_size``, raised where needed so that ``max_size`` bytes fit in MAX_PARTS parts."""
    size = max(part_size, -(-max_size // MAX_PARTS))
    if size > MAX_PART_SIZE:
        raise UploadError(
            f"{max_size} bytes may not fit in one S3 object "
            f"({MAX_PARTS} parts of at most {MAX_PART_SIZE} bytes)"
        )
    return size


def upload_plan(
    config: SageMakerConfig, key: str, *, size: int, part_size: int, body: str
) -> list[dict[str, Any]]:
    """The requests :func:`upload_stream` sends for ``size`` bytes, in order.

    Bodies are shown as placeholders: ``body`` describes the whole object for a PutObject;
    a part shows its size. Values S3 returns (upload id, ETags) are ``<...>`` too.
    """
    sizes = part_sizes(size, part_size)
    if not sizes:
        request = put_object(config, key, f"<{body}, {size} bytes>")
        return [{"operation": "PutObject", "request": request}]
    upload_id = "<UploadId from CreateMultipartUpload>"
    numbers = range(1, len(sizes) + 1)
    parts = [{"PartNumber": n, "ETag": f"<ETag from UploadPart {n}>"} for n in numbers]
    return [
        {"operation": "CreateMultipartUpload", "request": create_multipart_upload(config, key)},
        *(
            {
                "operation": "UploadPart",
                "request": upload_part(config, key, upload_id, n, f"<{length} bytes>"),
            }
            for n, length in zip(numbers, sizes, strict=True)
        ),
        {
            "operation": "CompleteMultipartUpload",
            "request": complete_multipart_upload(config, key, upload_id, parts),
        },
    ]


def upload_stream(
    s3: Any,
    config: SageMakerConfig,
    key: str,
    pieces: Iterable[bytes],
    *,
    part_size: int = DEFAULT_PART_SIZE,
) -> Uploaded:
    """Write ``pieces`` to ``key`` in the configured bucket, SSE-KMS; UploadError on failure.

    ``part_size`` below S3's 5 MiB minimum only works against emulators that allow it.
    """
    if part_size < 1:
        raise ValueError(f"part_size must be positive, got {part_size}")
    parts = _parts(pieces, part_size)
    first, last = next(parts)
    if last:
        _send("PutObject", _url(config, key), s3.put_object, put_object(config, key, first))
        return Uploaded(_url(config, key), len(first), 0)
    rest = _after(first, parts)
    del first  # only ``rest`` holds it now, and drops it once it is sent
    return _multipart(s3, config, key, rest)


def _parts(pieces: Iterable[bytes], part_size: int) -> Iterator[tuple[bytes, bool]]:
    """``(part, is_last)``: parts of exactly ``part_size`` bytes, then the (shorter) rest.

    A full part is released only once more data is buffered, so the last part is never
    empty and a stream of at most ``part_size`` bytes is one (last) part. An empty stream
    is one empty part.
    """
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        del piece
        while len(buffer) > part_size:
            # No local name for the part: the generator must not keep it alive while it
            # gathers the next one.
            yield _take(buffer, part_size), False
    yield bytes(buffer), True


def _after(first: bytes, parts: Iterator[tuple[bytes, bool]]) -> Iterator[bytes]:
    """``first``, then the parts of ``parts``, holding none of them once it is handed on.

    (``itertools.chain([first], ...)`` would keep ``first`` alive to the end.)
    """
    yield first
    del first
    # map, unlike a loop variable, keeps no reference to a part it has handed on.
    yield from map(itemgetter(0), parts)


def _take(buffer: bytearray, size: int) -> bytes:
    """The first ``size`` bytes of ``buffer``, removed from it (one copy)."""
    with memoryview(buffer) as view:
        head = bytes(view[:size])
    del buffer[:size]
    return head


def _multipart(s3: Any, config: SageMakerConfig, key: str, parts: Iterator[bytes]) -> Uploaded:
    """Create, upload every part, complete; abort on any failure after the create."""
    from botocore.exceptions import BotoCoreError, ClientError

    url = _url(config, key)
    create = create_multipart_upload(config, key)
    created = _send("CreateMultipartUpload", url, s3.create_multipart_upload, create)
    upload_id = str(created["UploadId"])
    step, size = "UploadPart 1", 0
    done: list[dict[str, Any]] = []
    try:
        # Not enumerate(): it reuses its result tuple, which would keep the part just sent
        # alive while the next one is gathered.
        for part in parts:
            number = len(done) + 1
            step = f"UploadPart {number}"
            if number > MAX_PARTS:
                raise UploadError(f"S3 allows at most {MAX_PARTS} parts")
            response = s3.upload_part(**upload_part(config, key, upload_id, number, part))
            done.append({"PartNumber": number, "ETag": response["ETag"]})
            size += len(part)
            del part  # sent: free it before the next part is gathered
        step = "CompleteMultipartUpload"
        s3.complete_multipart_upload(**complete_multipart_upload(config, key, upload_id, done))
    except (ClientError, BotoCoreError, UploadError) as exc:
        aborted = _abort(s3, config, key, upload_id)
        raise UploadError(f"{step} of {url} failed: {_describe(exc)}; {aborted}") from None
    except BaseException:
        # Anything else (a failing data source, an interrupt): still leave no parts behind.
        _abort(s3, config, key, upload_id)
        raise
    return Uploaded(url, size, len(done))


def _abort(s3: Any, config: SageMakerConfig, key: str, upload_id: str) -> str:
    """Abort the upload; say how that went, for the error message."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3.abort_multipart_upload(**abort_multipart_upload(config, key, upload_id))
    except (ClientError, BotoCoreError) as exc:
        return (
            f"AbortMultipartUpload failed too ({_describe(exc)}): upload {upload_id} "
            "keeps its parts until aborted or expired by a lifecycle rule"
        )
    return "the multipart upload was aborted"


def _send(step: str, url: str, call: Any, request: dict[str, Any]) -> Any:
    """One call; UploadError naming the step and the object when it fails."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call(**request)
    except (ClientError, BotoCoreError) as exc:
        raise UploadError(f"{step} of {url} failed: {_describe(exc)}") from None


def _describe(exc: Exception) -> str:
    """An AWS error as ``Code: Message``, anything else as its text."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return str(exc)
    error = response.get("Error", {})
    return f"{error.get('Code', 'Unknown')}: {error.get('Message', '')}".rstrip(": ")


def _url(config: SageMakerConfig, key: str) -> str:
    return f"s3://{config.bucket}/{key}"
