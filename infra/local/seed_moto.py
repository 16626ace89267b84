"""Seed a moto server for the docker compose "aws" profile: a KMS key, a bucket, a model.

Runs in the fraudscore image against ``AWS_ENDPOINT_URL`` (the compose file's moto service),
with the same ``FRAUDSCORE_REGISTRY`` and ``FRAUDSCORE_KMS_KEY_ID`` as the service it prepares.
It creates the key (with rotation) under the alias, the bucket (SSE-KMS with that key, bucket
key, public access blocked, versioned), and trains the demo model into the S3 registry when it
has no active model. A second run finds everything in place and changes nothing.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import boto3

from training.demo import DEMO_FEATURES, LABEL_COLUMN, DemoConfig, generate, write_csv
from training.pipeline import TrainRequest, train
from training.registry import open_registry, parse_s3_url


def _say(message: str) -> None:
    sys.stdout.write(f"seed: {message}\n")
    sys.stdout.flush()


def ensure_key(kms: Any, alias: str) -> str:
    """The ARN of the key behind ``alias``, created (rotation on) the first time."""
    if not alias.startswith("alias/"):
        raise SystemExit(f"seed: FRAUDSCORE_KMS_KEY_ID must be an alias here, not {alias!r}")
    try:
        return str(kms.describe_key(KeyId=alias)["KeyMetadata"]["Arn"])
    except kms.exceptions.NotFoundException:
        pass
    key = kms.create_key(Description="fraudscore local (moto)")["KeyMetadata"]
    kms.enable_key_rotation(KeyId=key["KeyId"])
    kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
    _say(f"created key {key['Arn']} as {alias}")
    return str(key["Arn"])


def ensure_bucket(s3: Any, bucket: str, key_arn: str) -> None:
    """The bucket, encrypted with the key by default, private and versioned."""
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except s3.exceptions.ClientError:
        pass
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {
                        "SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": key_arn,
                    },
                    "BucketKeyEnabled": True,
                }
            ]
        },
    )
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    _say(f"created bucket {bucket}")


def main() -> int:
    """Seed key, bucket and demo model; 0 when the registry has an active model."""
    registry_url = os.environ["FRAUDSCORE_REGISTRY"]
    alias = os.environ["FRAUDSCORE_KMS_KEY_ID"]
    rows = int(os.environ.get("SEED_ROWS", "50000"))
    bucket, _prefix = parse_s3_url(registry_url)
    key_arn = ensure_key(boto3.client("kms"), alias)
    ensure_bucket(boto3.client("s3"), bucket, key_arn)
    registry = open_registry(registry_url)
    if registry.active() is None:
        with tempfile.TemporaryDirectory(prefix="fraudscore-seed-") as tmp:
            data = Path(tmp, "demo.csv")
            write_csv(generate(DemoConfig(rows=rows, seed=0)), data)
            request = TrainRequest(data=data, label_column=LABEL_COLUMN, features=DEMO_FEATURES)
            outcome = train(request, registry)
        _say(f"trained the demo model {outcome.manifest.model_version} into {registry_url}")
    else:
        _say(f"{registry_url} already has an active model")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
