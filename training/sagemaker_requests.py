"""The exact boto3 request dicts of the SageMaker control plane, built from a typed config.

Pure functions, no client: each returns the keyword arguments of one boto3 call, so it can
be printed (``--dry-run``), diffed in tests and checked against botocore's service model.
Everything created is KMS-encrypted with the configured key and carries the standard tags
plus a ``ResourceName`` tag.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from training.errors import FraudscoreError
from training.parameter_ranges import DEFAULT_PARAMETER_RANGES

# kmeans:1 registry accounts by region (the SageMaker SDK's image_uri_config/kmeans.json).
KMEANS_ACCOUNTS: Mapping[str, str] = {
    "af-south-1": "455444449433", "ap-east-1": "286214385809", "ap-northeast-1": "351501993468",
    "ap-northeast-2": "835164637446", "ap-northeast-3": "867004704886",
    "ap-south-1": "991648021394", "ap-south-2": "628508329040",
    "ap-southeast-1": "475088953585", "ap-southeast-2": "712309505854",
    "ap-southeast-3": "951798379941", "ap-southeast-4": "106583098589",
    "ca-central-1": "469771592824", "ca-west-1": "190319476487", "cn-north-1": "390948362332",
    "cn-northwest-1": "387376663083", "eu-central-1": "664544806723",
    "eu-central-2": "680994064768", "eu-north-1": "669576153137", "eu-south-1": "257386234256",
    "eu-south-2": "104374241257", "eu-west-1": "438346466558", "eu-west-2": "644912444149",
    "eu-west-3": "749696950732", "il-central-1": "898809789911", "me-central-1": "272398656194",
    "me-south-1": "249704162688", "sa-east-1": "855470959533", "us-east-1": "382416733822",
    "us-east-2": "404615174143", "us-gov-east-1": "237065988967",
    "us-gov-west-1": "226302683700", "us-iso-east-1": "490574956308",
    "us-isob-east-1": "765400339828", "us-isof-east-1": "108575199400",
    "us-isof-south-1": "124985052026", "us-west-1": "632365934929", "us-west-2": "174872318107",
}  # fmt: skip
# Regions outside the commercial partition use their own domain (the SDK's ALTERNATE_DOMAINS).
_DOMAINS = (
    ("cn-", "amazonaws.com.cn"),
    ("us-isof-", "csp.hci.ic.gov"),
    ("us-isob-", "sc2s.sgov.gov"),
    ("us-iso-", "c2s.ic.gov"),
)
STANDARD_TAGS = ("Project", "Environment", "Owner", "CostCenter", "DataClassification", "ManagedBy")
CSV_LABEL_SIZE_0 = "text/csv;label_size=0"
# SageMaker name limits: tuning jobs 32 characters, models, configs and endpoints 63.
TUNING_JOB_NAME_MAX = 32
RESOURCE_NAME_MAX = 63
_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")


class SageMakerConfigError(FraudscoreError):
    """A SageMaker setting is missing or invalid; the message names it."""


@dataclass(frozen=True)
class SageMakerConfig:
    """What every SageMaker request needs: where, as whom, under which key and tags."""

    region: str
    bucket: str
    prefix: str
    role_arn: str
    kms_key_id: str
    tags: Mapping[str, str]
    training_instance_type: str = "ml.m5.xlarge"
    training_instance_count: int = 1
    training_volume_gb: int = 10
    max_runtime_s: int = 3600
    endpoint_instance_type: str = "ml.m5.large"
    endpoint_instance_count: int = 1
    subnets: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    data_capture_percent: int | None = None
    rollback_alarms: tuple[str, ...] = ()
    name_prefix: str = "fraudscore"

    def __post_init__(self) -> None:
        for name in ("region", "bucket", "role_arn", "kms_key_id"):
            if not getattr(self, name):
                raise SageMakerConfigError(f"SageMaker setting '{name}' is required")
        if self.region not in KMEANS_ACCOUNTS:
            raise SageMakerConfigError(f"no kmeans:1 image is published in region {self.region!r}")
        if bool(self.subnets) != bool(self.security_group_ids):
            raise SageMakerConfigError("a VPC config needs both subnets and security_group_ids")
        if len(self.tags) + 1 > 50:
            raise SageMakerConfigError("at most 49 tags (SageMaker allows 50 with ResourceName)")
        for key, value in self.tags.items():
            if not 1 <= len(key) <= 128 or len(value) > 256:
                raise SageMakerConfigError(f"tag {key!r}: keys are 1-128 characters, values 256")
        if self.data_capture_percent is not None and not 0 < self.data_capture_percent <= 100:
            raise SageMakerConfigError("data_capture_percent must be in 1..100")

    def s3_key(self, *parts: str) -> str:
        """``prefix/part/...``: a key in the configured bucket."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def s3_uri(self, *parts: str) -> str:
        """``s3://bucket/prefix/part/...``."""
        return f"s3://{self.bucket}/{self.s3_key(*parts)}"


def image_uri(region: str) -> str:
    """The regional ``kmeans:1`` image (training and inference), without the SageMaker SDK."""
    try:
        account = KMEANS_ACCOUNTS[region]
    except KeyError:
        raise SageMakerConfigError(f"no kmeans:1 image is published in region {region!r}") from None
    domain = next((d for p, d in _DOMAINS if region.startswith(p)), "amazonaws.com")
    return f"{account}.dkr.ecr.{region}.{domain}/kmeans:1"


def resource_name(prefix: str, kind: str, when: datetime, *, limit: int = RESOURCE_NAME_MAX) -> str:
    """A SageMaker-legal, time-stamped name such as ``fraudscore-model-20261128-101500``."""
    stamp = f"{when:%Y%m%d-%H%M%S}"
    head = re.sub(r"[^a-zA-Z0-9]+", "-", f"{prefix}-{kind}").strip("-")
    name = f"{head[: max(limit - len(stamp) - 1, 1)].rstrip('-')}-{stamp}"
    if len(name) > limit or not _NAME.fullmatch(name):
        raise SageMakerConfigError(f"cannot make a SageMaker name from prefix {prefix!r}")
    return name


def tags(config: SageMakerConfig, name: str) -> list[dict[str, str]]:
    """The configured standard tags plus ``ResourceName``, as SageMaker's Key/Value list."""
    merged = {**config.tags, "ResourceName": name}
    return [{"Key": k, "Value": v} for k, v in merged.items()]


def _sse_kms(config: SageMakerConfig) -> dict[str, Any]:
    """The encryption of every object written: SSE-KMS under the key, bucket key on."""
    return {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": config.kms_key_id,
        "BucketKeyEnabled": True,
    }


def put_object(config: SageMakerConfig, key: str, body: Any) -> dict[str, Any]:
    """``PutObject`` into the configured bucket, SSE-KMS under the key (bucket key on)."""
    return {"Bucket": config.bucket, "Key": key, "Body": body, **_sse_kms(config)}


def create_multipart_upload(config: SageMakerConfig, key: str) -> dict[str, Any]:
    """``CreateMultipartUpload`` in the configured bucket; its parts inherit the SSE-KMS."""
    return {"Bucket": config.bucket, "Key": key, **_sse_kms(config)}


def upload_part(
    config: SageMakerConfig, key: str, upload_id: str, part_number: int, body: Any
) -> dict[str, Any]:
    """``UploadPart`` number ``part_number`` (1-based) of a multipart upload."""
    return {
        "Bucket": config.bucket,
        "Key": key,
        "UploadId": upload_id,
        "PartNumber": part_number,
        "Body": body,
    }


def complete_multipart_upload(
    config: SageMakerConfig, key: str, upload_id: str, parts: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """``CompleteMultipartUpload`` from the uploaded parts' ``PartNumber`` and ``ETag``."""
    return {
        "Bucket": config.bucket,
        "Key": key,
        "UploadId": upload_id,
        "MultipartUpload": {"Parts": [dict(part) for part in parts]},
    }


def abort_multipart_upload(config: SageMakerConfig, key: str, upload_id: str) -> dict[str, Any]:
    """``AbortMultipartUpload``: S3 drops the parts uploaded so far."""
    return {"Bucket": config.bucket, "Key": key, "UploadId": upload_id}


def _vpc(config: SageMakerConfig) -> dict[str, Any]:
    if not config.subnets:
        return {}
    return {
        "VpcConfig": {
            "SecurityGroupIds": list(config.security_group_ids),
            "Subnets": list(config.subnets),
        }
    }


def create_hyper_parameter_tuning_job(
    config: SageMakerConfig,
    name: str,
    *,
    k: int,
    feature_dim: int,
    train_uri: str,
    test_uri: str,
    output_uri: str,
    parameter_ranges: Mapping[str, Any] = DEFAULT_PARAMETER_RANGES,
    max_jobs: int = 50,
    max_parallel: int = 2,
    strategy: str = "Bayesian",
    early_stopping: str = "Auto",
) -> dict[str, Any]:
    """``CreateHyperParameterTuningJob``: minimise ``test:msd`` over the given ranges."""
    if len(name) > TUNING_JOB_NAME_MAX or not _NAME.fullmatch(name):
        raise SageMakerConfigError(f"tuning job name {name!r} is not a valid 1-32 character name")
    if strategy not in ("Bayesian", "Random", "Hyperband", "Grid"):
        raise SageMakerConfigError(f"unknown tuning strategy {strategy!r}")
    if strategy == "Hyperband" and early_stopping != "Off":
        raise SageMakerConfigError("the Hyperband strategy needs early_stopping 'Off'")

    def channel(channel_name: str, uri: str) -> dict[str, Any]:
        return {
            "ChannelName": channel_name,
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": uri,
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
            "ContentType": CSV_LABEL_SIZE_0,
            "CompressionType": "None",
        }

    tuning_config: dict[str, Any] = {
        "Strategy": strategy,
        "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "test:msd"},
        "ResourceLimits": {
            "MaxNumberOfTrainingJobs": max_jobs,
            "MaxParallelTrainingJobs": max_parallel,
        },
        "ParameterRanges": {kind: list(ranges) for kind, ranges in parameter_ranges.items()},
        "TrainingJobEarlyStoppingType": early_stopping,
    }
    definition: dict[str, Any] = {
        "StaticHyperParameters": {
            "k": str(k),
            "feature_dim": str(feature_dim),
            "eval_metrics": json.dumps(["msd", "ssd"]),
        },
        # Built-in algorithms publish their own metrics: no MetricDefinitions.
        "AlgorithmSpecification": {
            "TrainingImage": image_uri(config.region),
            "TrainingInputMode": "File",
        },
        "RoleArn": config.role_arn,
        "InputDataConfig": [channel("train", train_uri), channel("test", test_uri)],
        "OutputDataConfig": {"S3OutputPath": output_uri, "KmsKeyId": config.kms_key_id},
        "ResourceConfig": {
            "InstanceType": config.training_instance_type,
            "InstanceCount": config.training_instance_count,
            "VolumeSizeInGB": config.training_volume_gb,
            "VolumeKmsKeyId": config.kms_key_id,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": config.max_runtime_s},
        "EnableNetworkIsolation": True,
        "EnableInterContainerTrafficEncryption": True,
        **_vpc(config),
    }
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": tuning_config,
        "TrainingJobDefinition": definition,
        "Tags": tags(config, name),
    }


def create_model(config: SageMakerConfig, name: str, model_data_url: str) -> dict[str, Any]:
    """``CreateModel``: the kmeans:1 image serving a ``model.tar.gz`` from S3."""
    return {
        "ModelName": _checked(name),
        "PrimaryContainer": {
            "Image": image_uri(config.region),
            "ModelDataUrl": model_data_url,
            "Mode": "SingleModel",
        },
        "ExecutionRoleArn": config.role_arn,
        "EnableNetworkIsolation": True,
        **_vpc(config),
        "Tags": tags(config, name),
    }


def create_endpoint_config(
    config: SageMakerConfig, name: str, model_name: str, *, variant: str = "AllTraffic"
) -> dict[str, Any]:
    """``CreateEndpointConfig``: one variant, volumes (and captured data) under the key."""
    request: dict[str, Any] = {
        "EndpointConfigName": _checked(name),
        "ProductionVariants": [
            {
                "VariantName": variant,
                "ModelName": model_name,
                "InitialInstanceCount": config.endpoint_instance_count,
                "InstanceType": config.endpoint_instance_type,
                "InitialVariantWeight": 1.0,
            }
        ],
        "KmsKeyId": config.kms_key_id,
        "Tags": tags(config, name),
    }
    if config.data_capture_percent is not None:
        request["DataCaptureConfig"] = {
            "EnableCapture": True,
            "InitialSamplingPercentage": config.data_capture_percent,
            "DestinationS3Uri": config.s3_uri("data-capture"),
            "KmsKeyId": config.kms_key_id,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        }
    return request


def _deployment(config: SageMakerConfig) -> dict[str, Any]:
    """Blue/green, all at once; with alarms, an automatic rollback when one fires."""
    deployment: dict[str, Any] = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
            "TerminationWaitInSeconds": 120,
            "MaximumExecutionTimeoutInSeconds": 1800,
        }
    }
    if config.rollback_alarms:
        deployment["AutoRollbackConfiguration"] = {
            "Alarms": [{"AlarmName": alarm} for alarm in config.rollback_alarms]
        }
    return deployment


def create_endpoint(config: SageMakerConfig, name: str, endpoint_config: str) -> dict[str, Any]:
    """``CreateEndpoint``."""
    return {
        "EndpointName": _checked(name),
        "EndpointConfigName": endpoint_config,
        "DeploymentConfig": _deployment(config),
        "Tags": tags(config, name),
    }


def update_endpoint(config: SageMakerConfig, name: str, endpoint_config: str) -> dict[str, Any]:
    """``UpdateEndpoint``: a new fleet on the new config, the old one retired after."""
    return {
        "EndpointName": _checked(name),
        "EndpointConfigName": endpoint_config,
        "RetainAllVariantProperties": False,
        "DeploymentConfig": _deployment(config),
    }


def _checked(name: str) -> str:
    if len(name) > RESOURCE_NAME_MAX or not _NAME.fullmatch(name):
        raise SageMakerConfigError(f"{name!r} is not a valid SageMaker name (1-63 characters)")
    return name


@dataclass(frozen=True)
class Setting:
    """One AWS setting: its config field, what it is (for messages) and its variable."""

    field: str
    what: str
    variable: str


# Where each setting comes from (the FRAUDSCORE_* names of ARCHITECTURE.md); all but the
# prefix are required.
SETTINGS = (
    Setting("region", "AWS region", "FRAUDSCORE_AWS_REGION"),
    Setting("bucket", "S3 bucket", "FRAUDSCORE_S3_BUCKET"),
    Setting("prefix", "S3 prefix", "FRAUDSCORE_S3_PREFIX"),
    Setting("role_arn", "SageMaker execution role", "FRAUDSCORE_SAGEMAKER_ROLE_ARN"),
    Setting("kms_key_id", "KMS key", "FRAUDSCORE_KMS_KEY_ID"),
)
TAGS_VARIABLE = "FRAUDSCORE_TAGS"
DEFAULT_PREFIX = "fraudscore"
DEFAULT_TAGS = {"Project": "fraudscore", "ManagedBy": "fraudscore"}


class MissingSettingError(SageMakerConfigError):
    """A required AWS setting has no value; ``setting`` says which."""

    def __init__(self, setting: Setting) -> None:
        self.setting = setting
        super().__init__(f"missing {setting.what}: {setting.variable} is not set")


def config_from_settings(
    environ: Mapping[str, str],
    given: Mapping[str, str | None] | None = None,
    *,
    tags: Mapping[str, str] | None = None,
) -> SageMakerConfig:
    """A config from explicit values over ``FRAUDSCORE_*`` variables.

    ``given`` maps config fields (``bucket``, ``role_arn``, ...) to values, ``None`` meaning
    "not given"; ``tags`` are merged over ``FRAUDSCORE_TAGS`` (or the default tags).
    MissingSettingError names the first required setting without a value.
    """
    given = given or {}
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        explicit = given.get(setting.field)
        value = (explicit if explicit is not None else environ.get(setting.variable, "")).strip()
        if not value and setting.field != "prefix":
            raise MissingSettingError(setting)
        values[setting.field] = value or DEFAULT_PREFIX
    return SageMakerConfig(tags={**_environment_tags(environ), **(tags or {})}, **values)


def config_from_environment(environ: Mapping[str, str]) -> SageMakerConfig:
    """A config from ``FRAUDSCORE_*`` variables alone; SageMakerConfigError naming a missing one."""
    return config_from_settings(environ)


def _environment_tags(environ: Mapping[str, str]) -> dict[str, str]:
    """``FRAUDSCORE_TAGS`` (a JSON object of strings), or the default tags when unset."""
    raw = environ.get(TAGS_VARIABLE, "").strip()
    try:
        tags = json.loads(raw) if raw else dict(DEFAULT_TAGS)
    except json.JSONDecodeError as exc:
        raise SageMakerConfigError(f"{TAGS_VARIABLE} is not JSON: {exc}") from None
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise SageMakerConfigError(f"{TAGS_VARIABLE} must be a JSON object of strings")
    return tags
