"""SageMaker request builders: exact dicts, KMS and tags everywhere, valid for botocore."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import botocore.session
import pytest
from botocore.validate import validate_parameters

from training import sagemaker_requests as req
from training.sagemaker_requests import SageMakerConfig, SageMakerConfigError

KEY = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ROLE = "arn:aws:iam::111122223333:role/fraudscore-sagemaker-execution"
TAGS = {
    "Project": "fraudscore",
    "Environment": "prod",
    "Owner": "fraud-analytics",
    "CostCenter": "cc-4711",
    "DataClassification": "confidential",
    "ManagedBy": "fraudscore",
}
WHEN = datetime(2026, 11, 28, 10, 15, 0, tzinfo=UTC)


def config(**overrides: Any) -> SageMakerConfig:
    values: dict[str, Any] = {
        "region": "eu-west-1",
        "bucket": "fraudscore-data",
        "prefix": "fraudscore",
        "role_arn": ROLE,
        "kms_key_id": KEY,
        "tags": TAGS,
    }
    values.update(overrides)
    return SageMakerConfig(**values)


def assert_valid(operation: str, request: dict[str, Any]) -> None:
    """botocore's own parameter validation against the SageMaker service model."""
    model = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(request, model.operation_model(operation).input_shape)


def tuning_request(**overrides: Any) -> dict[str, Any]:
    c = overrides.pop("config", config())
    args: dict[str, Any] = {
        "k": 10,
        "feature_dim": 13,
        "train_uri": c.s3_uri("data", "train"),
        "test_uri": c.s3_uri("data", "test"),
        "output_uri": c.s3_uri("output"),
    }
    args.update(overrides)
    return req.create_hyper_parameter_tuning_job(c, "fraudscore-20261128-101500", **args)


def test_the_tuning_job_is_the_proof_of_concepts_search_with_kms_and_tags() -> None:
    expected_channel = {
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "ContentType": "text/csv;label_size=0",
        "CompressionType": "None",
    }
    request = tuning_request()
    assert request == {
        "HyperParameterTuningJobName": "fraudscore-20261128-101500",
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "test:msd"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 50, "MaxParallelTrainingJobs": 2},
            "ParameterRanges": {
                "IntegerParameterRanges": [
                    {
                        "Name": "extra_center_factor",
                        "MinValue": "4",
                        "MaxValue": "10",
                        "ScalingType": "Auto",
                    },
                    {
                        "Name": "mini_batch_size",
                        "MinValue": "3000",
                        "MaxValue": "15000",
                        "ScalingType": "Auto",
                    },
                ],
                "ContinuousParameterRanges": [],
                "CategoricalParameterRanges": [
                    {"Name": "init_method", "Values": ["kmeans++", "random"]}
                ],
            },
            "TrainingJobEarlyStoppingType": "Auto",
        },
        "TrainingJobDefinition": {
            "StaticHyperParameters": {
                "k": "10",
                "feature_dim": "13",
                "eval_metrics": json.dumps(["msd", "ssd"]),
            },
            "AlgorithmSpecification": {
                "TrainingImage": "438346466558.dkr.ecr.eu-west-1.amazonaws.com/kmeans:1",
                "TrainingInputMode": "File",
            },
            "RoleArn": ROLE,
            "InputDataConfig": [
                {
                    "ChannelName": "train",
                    **expected_channel,
                    "DataSource": {
                        "S3DataSource": {
                            **expected_channel["DataSource"]["S3DataSource"],  # type: ignore[index]
                            "S3Uri": "s3://fraudscore-data/fraudscore/data/train",
                        }
                    },
                },
                {
                    "ChannelName": "test",
                    **expected_channel,
                    "DataSource": {
                        "S3DataSource": {
                            **expected_channel["DataSource"]["S3DataSource"],  # type: ignore[index]
                            "S3Uri": "s3://fraudscore-data/fraudscore/data/test",
                        }
                    },
                },
            ],
            "OutputDataConfig": {
                "S3OutputPath": "s3://fraudscore-data/fraudscore/output",
                "KmsKeyId": KEY,
            },
            "ResourceConfig": {
                "InstanceType": "ml.m5.xlarge",
                "InstanceCount": 1,
                "VolumeSizeInGB": 10,
                "VolumeKmsKeyId": KEY,
            },
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
            "EnableNetworkIsolation": True,
            "EnableInterContainerTrafficEncryption": True,
        },
        "Tags": [
            *({"Key": k, "Value": v} for k, v in TAGS.items()),
            {"Key": "ResourceName", "Value": "fraudscore-20261128-101500"},
        ],
    }
    assert_valid("CreateHyperParameterTuningJob", request)


def test_model_endpoint_config_and_endpoint_are_encrypted_and_tagged() -> None:
    c = config(data_capture_percent=5, rollback_alarms=("fraudscore-invocation-5xx",))
    url = "s3://fraudscore-data/fraudscore/output/job-1/output/model.tar.gz"
    model = req.create_model(c, "fraudscore-model-20261128-101500", url)
    assert model["PrimaryContainer"] == {
        "Image": "438346466558.dkr.ecr.eu-west-1.amazonaws.com/kmeans:1",
        "ModelDataUrl": url,
        "Mode": "SingleModel",
    }
    assert model["ExecutionRoleArn"] == ROLE
    assert model["EnableNetworkIsolation"] is True
    endpoint_config = req.create_endpoint_config(
        c, "fraudscore-config-20261128-101500", model["ModelName"]
    )
    assert endpoint_config["KmsKeyId"] == KEY
    capture = endpoint_config["DataCaptureConfig"]
    assert capture["KmsKeyId"] == KEY
    assert capture["DestinationS3Uri"] == "s3://fraudscore-data/fraudscore/data-capture"
    (variant,) = endpoint_config["ProductionVariants"]
    assert variant["ModelName"] == "fraudscore-model-20261128-101500"
    endpoint = req.create_endpoint(c, "fraudscore", endpoint_config["EndpointConfigName"])
    rollback = endpoint["DeploymentConfig"]["AutoRollbackConfiguration"]
    assert rollback == {"Alarms": [{"AlarmName": "fraudscore-invocation-5xx"}]}
    for operation, request, name in (
        ("CreateModel", model, model["ModelName"]),
        ("CreateEndpointConfig", endpoint_config, endpoint_config["EndpointConfigName"]),
        ("CreateEndpoint", endpoint, "fraudscore"),
    ):
        assert_valid(operation, request)
        got = {t["Key"]: t["Value"] for t in request["Tags"]}
        assert got == {**TAGS, "ResourceName": name}
    update = req.update_endpoint(c, "fraudscore", "fraudscore-config-2")
    assert_valid("UpdateEndpoint", update)
    assert update["DeploymentConfig"] == endpoint["DeploymentConfig"]


def test_a_vpc_goes_to_every_resource_that_runs_code() -> None:
    c = config(subnets=("subnet-1", "subnet-2"), security_group_ids=("sg-1",))
    vpc = {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1", "subnet-2"]}
    assert tuning_request(config=c)["TrainingJobDefinition"]["VpcConfig"] == vpc
    assert req.create_model(c, "m", "s3://b/k")["VpcConfig"] == vpc
    assert "VpcConfig" not in req.create_model(config(), "m", "s3://b/k")


@pytest.mark.parametrize(
    ("region", "uri"),
    [
        ("us-east-1", "382416733822.dkr.ecr.us-east-1.amazonaws.com/kmeans:1"),
        ("cn-north-1", "390948362332.dkr.ecr.cn-north-1.amazonaws.com.cn/kmeans:1"),
        ("us-iso-east-1", "490574956308.dkr.ecr.us-iso-east-1.c2s.ic.gov/kmeans:1"),
        ("us-isob-east-1", "765400339828.dkr.ecr.us-isob-east-1.sc2s.sgov.gov/kmeans:1"),
        ("us-isof-south-1", "124985052026.dkr.ecr.us-isof-south-1.csp.hci.ic.gov/kmeans:1"),
    ],
)
def test_image_uris_per_region(region: str, uri: str) -> None:
    assert req.image_uri(region) == uri


def test_names_fit_sagemaker_limits() -> None:
    long_prefix = "fraudscore-" + "x" * 80
    for kind, limit in (("tuning", 32), ("model", 63)):
        name = req.resource_name(long_prefix, kind, WHEN, limit=limit)
        assert len(name) <= limit
        assert name.endswith("20261128-101500")
    assert req.resource_name("fraud score!", "model", WHEN) == "fraud-score-model-20261128-101500"
    with pytest.raises(SageMakerConfigError, match="tuning job name"):
        req.create_hyper_parameter_tuning_job(
            config(),
            "x" * 33,
            k=2,
            feature_dim=2,
            train_uri="s3://b/t",
            test_uri="s3://b/v",
            output_uri="s3://b/o",
        )
    with pytest.raises(SageMakerConfigError, match="not a valid SageMaker name"):
        req.create_model(config(), "bad_name", "s3://b/k")


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"role_arn": ""}, "'role_arn' is required"),
        ({"kms_key_id": ""}, "'kms_key_id' is required"),
        ({"region": "mars-1"}, "region 'mars-1'"),
        ({"subnets": ("s-1",)}, "both subnets and security_group_ids"),
        ({"data_capture_percent": 0}, "data_capture_percent"),
        ({"tags": {f"k{i}": "v" for i in range(50)}}, "at most 49 tags"),
    ],
)
def test_bad_settings_name_themselves(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(SageMakerConfigError, match=words):
        config(**overrides)


def test_strategies_follow_sagemakers_rules() -> None:
    assert (
        tuning_request(strategy="Random")["HyperParameterTuningJobConfig"]["Strategy"] == "Random"
    )
    with pytest.raises(SageMakerConfigError, match="Hyperband"):
        tuning_request(strategy="Hyperband")
    hyperband = tuning_request(strategy="Hyperband", early_stopping="Off")
    assert_valid("CreateHyperParameterTuningJob", hyperband)
    with pytest.raises(SageMakerConfigError, match="unknown tuning strategy"):
        tuning_request(strategy="Genetic")


def assert_valid_s3(operation: str, request: dict[str, Any]) -> None:
    """botocore's own parameter validation against the S3 service model."""
    model = botocore.session.get_session().get_service_model("s3")
    validate_parameters(request, model.operation_model(operation).input_shape)


def test_every_object_write_is_sse_kms_under_the_key() -> None:
    c = config()
    sse = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": KEY, "BucketKeyEnabled": True}
    put = req.put_object(c, "fraudscore/a.csv", b"1,2\n")
    create = req.create_multipart_upload(c, "fraudscore/a.csv")
    assert put == {"Bucket": "fraudscore-data", "Key": "fraudscore/a.csv", "Body": b"1,2\n", **sse}
    assert create == {"Bucket": "fraudscore-data", "Key": "fraudscore/a.csv", **sse}
    part = req.upload_part(c, "fraudscore/a.csv", "up-1", 2, b"x")
    assert part == {
        "Bucket": "fraudscore-data",
        "Key": "fraudscore/a.csv",
        "UploadId": "up-1",
        "PartNumber": 2,
        "Body": b"x",
    }
    parts = [{"PartNumber": 1, "ETag": '"a"'}, {"PartNumber": 2, "ETag": '"b"'}]
    complete = req.complete_multipart_upload(c, "fraudscore/a.csv", "up-1", parts)
    assert complete["MultipartUpload"] == {"Parts": parts}
    abort = req.abort_multipart_upload(c, "fraudscore/a.csv", "up-1")
    assert abort == {"Bucket": "fraudscore-data", "Key": "fraudscore/a.csv", "UploadId": "up-1"}
    for operation, request in (
        ("PutObject", put),
        ("CreateMultipartUpload", create),
        ("UploadPart", part),
        ("CompleteMultipartUpload", complete),
        ("AbortMultipartUpload", abort),
    ):
        assert_valid_s3(operation, request)


ENV = {
    "FRAUDSCORE_AWS_REGION": "eu-west-1",
    "FRAUDSCORE_S3_BUCKET": "env-bucket",
    "FRAUDSCORE_S3_PREFIX": "env-prefix",
    "FRAUDSCORE_SAGEMAKER_ROLE_ARN": ROLE,
    "FRAUDSCORE_KMS_KEY_ID": KEY,
    "FRAUDSCORE_TAGS": json.dumps({"Project": "fraudscore", "Owner": "env-team"}),
}


def test_given_values_override_the_environment_and_tags_merge_over_it() -> None:
    given = {"region": "us-east-1", "bucket": "flag-bucket", "prefix": None, "role_arn": None}
    c = req.config_from_settings(ENV, given, tags={"Owner": "flag-team", "CostCenter": "cc-1"})
    assert (c.region, c.bucket, c.prefix, c.role_arn, c.kms_key_id) == (
        "us-east-1",
        "flag-bucket",
        "env-prefix",
        ROLE,
        KEY,
    )
    assert c.tags == {"Project": "fraudscore", "Owner": "flag-team", "CostCenter": "cc-1"}


def test_without_the_environment_every_value_can_be_given() -> None:
    given = {"region": "us-east-1", "bucket": "b", "role_arn": ROLE, "kms_key_id": KEY}
    c = req.config_from_settings({}, given, tags={"Owner": "me"})
    assert c.prefix == "fraudscore"
    assert c.tags == {**req.DEFAULT_TAGS, "Owner": "me"}
    assert req.config_from_environment(ENV).bucket == "env-bucket"


@pytest.mark.parametrize("setting", [s for s in req.SETTINGS if s.field != "prefix"])
def test_a_missing_setting_names_its_variable(setting: req.Setting) -> None:
    env = {k: v for k, v in ENV.items() if k != setting.variable}
    with pytest.raises(req.MissingSettingError) as caught:
        req.config_from_settings(env, {setting.field: None})
    assert caught.value.setting == setting
    assert str(caught.value) == f"missing {setting.what}: {setting.variable} is not set"
    with pytest.raises(req.MissingSettingError):
        req.config_from_settings(ENV, {setting.field: " "})  # given but blank: not a value


@pytest.mark.parametrize(
    ("raw", "words"),
    [("{not json", "FRAUDSCORE_TAGS is not JSON"), ('["a"]', "a JSON object of strings")],
)
def test_bad_environment_tags_are_named(raw: str, words: str) -> None:
    with pytest.raises(SageMakerConfigError, match=words):
        req.config_from_settings({**ENV, "FRAUDSCORE_TAGS": raw})
