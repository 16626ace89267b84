"""The S3 adapter of the registry's storage port: keys live under ``s3://bucket/prefix/``.

Every write is encrypted with SSE-KMS under one configured key. AWS failures become one-line
:class:`RegistryError` messages naming the ``s3://`` URL and the AWS error code.
"""

from __future__ import annotations

from typing import Any, NoReturn

from botocore.exceptions import BotoCoreError, ClientError

from training.errors import RegistryError
from training.storage import TEMP_PREFIX, KeyList, MissingKeyError, validate_key

# Codes S3 uses for an absent object: GET says NoSuchKey; HEAD has no body, so only the status.
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# Codes of a conditional create that lost: the object exists, or another writer is mid-race.
_EXISTS_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})


class S3Storage:
    """A :class:`~training.storage.Storage` under an S3 prefix; writes are SSE-KMS encrypted.

    ``client`` is a boto3 S3 client (injected, so tests and callers choose its configuration);
    ``prefix`` is the folder inside the bucket ("" for the bucket root).
    """

    def __init__(self, client: Any, bucket: str, prefix: str, kms_key_id: str) -> None:
        if not bucket:
            raise RegistryError("an S3 registry needs a bucket name")
        if not kms_key_id or not kms_key_id.strip():
            raise RegistryError(f"s3://{bucket}: a KMS key id is required to encrypt writes")
        body = prefix.strip("/")
        validate_key(body, prefix=True)
        self.client = client
        self.bucket = bucket
        self.prefix = f"{body}/" if body else ""
        self.kms_key_id = kms_key_id

    @property
    def url(self) -> str:
        """The ``s3://bucket/prefix`` URL of the storage root."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r})"

    def where(self, key: str) -> str:
        """The ``s3://`` URL of a key, for messages."""
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _object_key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}{key}"

    def read(self, key: str) -> bytes:
        """The object's bytes; :class:`MissingKeyError` if absent."""
        object_key = self._object_key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=object_key)
            with response["Body"] as body:
                data: bytes = body.read()
        except (ClientError, BotoCoreError) as exc:
            # Without s3:ListBucket on the bucket, S3 answers 403 rather than 404 for a missing
            # key: the registry's role needs it for "not found" to be reported as such.
            if _error_code(exc) in _MISSING_CODES:
                raise MissingKeyError(key, self.where(key)) from None
            _fail(self.where(key), "read", exc)
        return data

    def write(self, key: str, data: bytes) -> None:
        """Create or replace the object, encrypted with the configured KMS key."""
        try:
            # A PUT replaces an object atomically: readers see the old or the new bytes, never a
            # mix, which is what the ACTIVE pointer relies on. No temp object is needed.
            self._put(key, data)
        except (ClientError, BotoCoreError) as exc:
            _fail(self.where(key), "write", exc)

    def create(self, key: str, data: bytes) -> bool:
        """Put the object only if absent (S3 conditional write, ``If-None-Match: *``)."""
        try:
            self._put(key, data, IfNoneMatch="*")
        except (ClientError, BotoCoreError) as exc:
            # 412: the key exists. 409: a concurrent conditional write to the key won the race.
            if _error_code(exc) in _EXISTS_CODES:
                return False
            _fail(self.where(key), "create", exc)
        return True

    def _put(self, key: str, data: bytes, **conditions: str) -> None:
        """One PutObject, encrypted with the configured KMS key."""
        self.client.put_object(
            Bucket=self.bucket,
            Key=self._object_key(key),
            Body=data,
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=self.kms_key_id,
            # A bucket-level data key: far fewer KMS calls (cost, throttling) per write.
            BucketKeyEnabled=True,
            **conditions,
        )

    def delete(self, key: str) -> None:
        """Delete the object (S3 answers success for a missing key too)."""
        object_key = self._object_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=object_key)
        except (ClientError, BotoCoreError) as exc:
            _fail(self.where(key), "delete", exc)

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        object_key = self._object_key(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=object_key)
        except (ClientError, BotoCoreError) as exc:
            # HEAD answers without a body, so a missing bucket is a bare 404 too; the next write
            # or list then names NoSuchBucket.
            if _error_code(exc) in _MISSING_CODES:
                return False
            _fail(self.where(key), "check", exc)
        return True

    def list(self, prefix: str) -> KeyList:
        """All keys starting with ``prefix`` (a string prefix, recursive), sorted.

        Keys are relative to the storage prefix. Objects no key can name (folder markers ending
        in ``/``, ``a//b``) and temp files copied from a local registry are skipped, as locally.
        """
        validate_key(prefix, prefix=True)
        keys: KeyList = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}{prefix}"
            )
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) :]
                    if _is_listable(key):
                        keys.append(key)
        except (ClientError, BotoCoreError) as exc:
            _fail(self.where(prefix), "list", exc)
        return sorted(keys)


def _is_listable(key: str) -> bool:
    if key.rpartition("/")[2].startswith(TEMP_PREFIX):
        return False
    try:
        validate_key(key)
    except RegistryError:
        return False
    return True


def _error_code(exc: Exception) -> str:
    """The AWS error code of a ClientError ("404" for a bare HEAD), else the exception's name."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "Unknown")
    return type(exc).__name__


def _fail(where: str, action: str, exc: Exception) -> NoReturn:
    """Raise a one-line RegistryError: the URL and the AWS error code, no traceback chain."""
    raise RegistryError(f"{where}: cannot {action} ({_error_code(exc)})") from None
