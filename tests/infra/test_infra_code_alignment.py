"""The roles allow what the fraudscore code really sends, and refuse its near misses.

The requests come from the code itself: the dry-run plans of ``fraudscore train --mode
sagemaker`` and ``fraudscore deploy`` (``training_plan``, ``deployment_plan``), built with
the settings the stacks output. Each request becomes the authorizations AWS checks for it
(action, resource ARN, condition keys), evaluated against the deployed policies.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.infra.cfn_model import ACCOUNT, REGION, STANDARD_TAGS, Stack, deploy, load_template
from tests.infra.iam_model import (
    Statement,
    decide,
    identity_statements,
    resource_policy_statements,
)
from training.sagemaker_deploy import deployment_plan
from training.sagemaker_requests import (
    DEFAULT_TAGS,
    KMEANS_ACCOUNTS,
    SageMakerConfig,
    config_from_environment,
    create_endpoint_config,
    create_hyper_parameter_tuning_job,
    create_model,
    image_uri,
    resource_name,
)
from training.sagemaker_requests import STANDARD_TAGS as CODE_STANDARD_TAGS
from training.sagemaker_training import training_plan, tuning_job_name

WHEN = datetime(2026, 11, 28, 10, 15, tzinfo=UTC)
FOREIGN_KEY = "arn:aws:kms:us-east-1:999999999999:key/x"
Authorization = tuple[str, str, dict[str, Any]]


# ---------------------------------------------------------------------- settings from stacks
def settings(stacks: dict[str, Stack]) -> dict[str, str]:
    """The FRAUDSCORE_* settings an operator copies from the stack outputs."""
    foundation, roles = stacks["foundation.yaml"], stacks["roles.yaml"]
    env = {
        "FRAUDSCORE_AWS_REGION": REGION,
        "FRAUDSCORE_S3_BUCKET": foundation.outputs["DataBucketName"],
        "FRAUDSCORE_S3_PREFIX": roles.parameters["SageMakerS3Prefix"],
        "FRAUDSCORE_SAGEMAKER_ROLE_ARN": roles.outputs["SageMakerExecutionRoleArn"],
        "FRAUDSCORE_KMS_KEY_ID": foundation.outputs["KeyArn"],
        "FRAUDSCORE_TAGS": roles.outputs["FraudscoreTags"],
    }
    return {k: str(v) for k, v in env.items()}


def sagemaker_config(stacks: dict[str, Stack], **changes: Any) -> SageMakerConfig:
    """The code's config from those settings (with the VPC when the roles require one)."""
    config = config_from_environment(settings(stacks))
    roles = stacks["roles.yaml"].parameters
    if roles["SageMakerVpcId"]:
        config = _replace(
            config,
            subnets=tuple(roles["SageMakerSubnetIds"]),
            security_group_ids=tuple(roles["SageMakerSecurityGroupIds"]),
        )
    return _replace(config, **changes)


def _replace(config: SageMakerConfig, **changes: Any) -> SageMakerConfig:
    from dataclasses import replace

    return replace(config, **changes)


# ---------------------------------------------------------------------- request -> authorizations
def _arn(kind: str, name: str) -> str:
    # SageMaker lowercases names in ARNs.
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{kind}/{name.lower()}"


def _tags(request: dict[str, Any]) -> dict[str, Any]:
    tags = {t["Key"]: t["Value"] for t in request.get("Tags", [])}
    return {**{f"aws:RequestTag/{k}": v for k, v in tags.items()}, "aws:TagKeys": list(tags)}


def _vpc(vpc: dict[str, Any] | None) -> dict[str, Any]:
    if not vpc:
        return {}
    return {
        "sagemaker:VpcSubnets": vpc["Subnets"],
        "sagemaker:VpcSecurityGroupIds": vpc["SecurityGroupIds"],
    }


def _flag(value: Any) -> str:
    return str(bool(value)).lower()


def _pass_role(role: str) -> Authorization:
    return ("iam:PassRole", role, {"iam:PassedToService": "sagemaker.amazonaws.com"})


def _s3(action: str, bucket: str, key: str, **context: Any) -> list[Authorization]:
    via = {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}
    key_arn = context.pop("key_arn")
    kms = [("kms:GenerateDataKey", key_arn, via), ("kms:Decrypt", key_arn, via)]
    if action == "s3:GetObject":
        kms = [("kms:Decrypt", key_arn, via)]
    return [(action, f"arn:aws:s3:::{bucket}/{key}", context), *kms]


def authorizations(entry: dict[str, Any], key_arn: str) -> list[Authorization]:
    """What AWS authorizes for one entry of the code's dry-run plan."""
    op, request = entry["operation"], entry["request"]
    tags = _tags(request)
    if op in ("PutObject", "CreateMultipartUpload"):
        headers = {
            "s3:x-amz-server-side-encryption": request.get("ServerSideEncryption"),
            "s3:x-amz-server-side-encryption-aws-kms-key-id": request.get("SSEKMSKeyId"),
        }
        context = {k: v for k, v in headers.items() if v is not None}
        return _s3("s3:PutObject", request["Bucket"], request["Key"], key_arn=key_arn, **context)
    if op in ("UploadPart", "CompleteMultipartUpload"):
        return _s3("s3:PutObject", request["Bucket"], request["Key"], key_arn=key_arn)
    if op == "GetObject":
        bucket, _, key = request["url"].removeprefix("s3://").partition("/")
        return _s3("s3:GetObject", bucket, key, key_arn=key_arn)
    if op == "CreateHyperParameterTuningJob":
        name = request["HyperParameterTuningJobName"]
        job = request["TrainingJobDefinition"]
        resources = job["ResourceConfig"]
        context = {
            "sagemaker:VolumeKmsKey": resources.get("VolumeKmsKeyId"),
            "sagemaker:OutputKmsKey": job["OutputDataConfig"].get("KmsKeyId"),
            "sagemaker:NetworkIsolation": _flag(job.get("EnableNetworkIsolation")),
            "sagemaker:InterContainerTrafficEncryption": _flag(
                job.get("EnableInterContainerTrafficEncryption")
            ),
            "sagemaker:InstanceTypes": [resources["InstanceType"]],
            "sagemaker:MaxRuntimeInSeconds": job["StoppingCondition"]["MaxRuntimeInSeconds"],
            **_vpc(job.get("VpcConfig")),
            **tags,
        }
        context = {k: v for k, v in context.items() if v is not None}
        arn = _arn("hyper-parameter-tuning-job", name)
        tagging = {"sagemaker:TaggingAction": "CreateHyperParameterTuningJob", **tags}
        return [
            ("sagemaker:CreateHyperParameterTuningJob", arn, context),
            ("sagemaker:AddTags", arn, tagging),
            _pass_role(job["RoleArn"]),
        ]
    if op == "CreateModel":
        arn = _arn("model", request["ModelName"])
        context = {
            "sagemaker:NetworkIsolation": _flag(request.get("EnableNetworkIsolation")),
            **_vpc(request.get("VpcConfig")),
            **tags,
        }
        tagging = {"sagemaker:TaggingAction": "CreateModel", **tags}
        return [
            ("sagemaker:CreateModel", arn, context),
            ("sagemaker:AddTags", arn, tagging),
            _pass_role(request["ExecutionRoleArn"]),
        ]
    if op == "CreateEndpointConfig":
        arn = _arn("endpoint-config", request["EndpointConfigName"])
        variants = request["ProductionVariants"]
        context = {
            "sagemaker:VolumeKmsKey": request.get("KmsKeyId"),
            "sagemaker:InstanceTypes": [v["InstanceType"] for v in variants],
            "sagemaker:ModelArn": [_arn("model", v["ModelName"]) for v in variants],
            **tags,
        }
        context = {k: v for k, v in context.items() if v is not None}
        tagging = {"sagemaker:TaggingAction": "CreateEndpointConfig", **tags}
        return [
            ("sagemaker:CreateEndpointConfig", arn, context),
            ("sagemaker:AddTags", arn, tagging),
            # The caller lets SageMaker encrypt the endpoint's volumes with the key.
            ("kms:CreateGrant", key_arn, {"kms:GrantIsForAWSResource": "true"}),
            ("kms:DescribeKey", key_arn, {}),
        ]
    if op == "CreateEndpoint":
        endpoint = _arn("endpoint", request["EndpointName"])
        config = _arn("endpoint-config", request["EndpointConfigName"])
        tagging = {"sagemaker:TaggingAction": "CreateEndpoint", **tags}
        return [
            ("sagemaker:CreateEndpoint", endpoint, tags),
            ("sagemaker:CreateEndpoint", config, tags),
            ("sagemaker:AddTags", endpoint, tagging),
        ]
    if op == "UpdateEndpoint":
        # Authorized on the existing endpoint's and the new config's tags.
        existing = {f"aws:ResourceTag/{k}": v for k, v in entry["resource_tags"].items()}
        return [
            ("sagemaker:UpdateEndpoint", _arn("endpoint", request["EndpointName"]), existing),
            (
                "sagemaker:UpdateEndpoint",
                _arn("endpoint-config", request["EndpointConfigName"]),
                existing,
            ),
        ]
    raise AssertionError(f"no authorizations modelled for {op}")


def _plan(config: SageMakerConfig, endpoint: str) -> list[dict[str, Any]]:
    """A training run (large train split: multipart) and a deployment, as the code plans them."""
    plan = training_plan(
        config,
        k=10,
        feature_dim=12,
        rows={"train": 800_000, "test": 200_000},
        sizes={"train": 40 << 20, "test": 1 << 20},
        when=WHEN,
        endpoint_name=endpoint,
    )
    plan += deployment_plan(
        config, "20261128-101500-a1b2c3", b"model", endpoint_name=endpoint, when=WHEN
    )
    best = f"{tuning_job_name(config, WHEN)}-001-1a2b3c4d"
    for entry in plan:
        if entry["operation"] == "GetObject":
            entry["request"]["url"] = entry["request"]["url"].replace("<best training job>", best)
        if entry["operation"] == "UpdateEndpoint":
            entry["resource_tags"] = dict(config.tags)
    return plan


def _denials(statements: list[Statement], checks: list[Authorization]) -> list[str]:
    return [
        f"{action} on {resource}: {verdict}"
        for action, resource, context in checks
        if (verdict := decide(statements, action, resource, context)) != "allowed"
    ]


def _bucket_denials(stacks: dict[str, Stack], checks: list[Authorization]) -> list[str]:
    bucket_policy = [s for s in resource_policy_statements(stacks) if "DataBucketPolicy" in s.where]
    return [
        f"{action} on {resource}: denied by the bucket policy"
        for action, resource, context in checks
        if action.startswith("s3:")
        and decide(bucket_policy, action, resource, {"aws:SecureTransport": "true", **context})
        == "denied"
    ]


# ---------------------------------------------------------------------- the code is allowed
def test_the_code_and_the_templates_agree_on_names_and_defaults(stacks: dict[str, Stack]) -> None:
    roles = load_template("roles.yaml")["Parameters"]
    assert roles["NamePrefix"]["Default"] == SageMakerConfig.name_prefix
    # An unset FRAUDSCORE_S3_PREFIX is "fraudscore", the roles' default SageMaker prefix.
    unset = {k: v for k, v in settings(stacks).items() if k != "FRAUDSCORE_S3_PREFIX"}
    assert config_from_environment(unset).prefix == roles["SageMakerS3Prefix"]["Default"]
    assert tuple(CODE_STANDARD_TAGS) == STANDARD_TAGS
    tags = json.loads(stacks["roles.yaml"].outputs["FraudscoreTags"])
    assert tuple(tags) == STANDARD_TAGS
    # The code's own default tags would be refused: the output must be used.
    assert set(DEFAULT_TAGS) < set(STANDARD_TAGS)


def test_the_kmeans_image_accounts_match_the_code() -> None:
    mapping = load_template("roles.yaml")["Mappings"]["KmeansImage"]
    assert {region: row["Account"] for region, row in mapping.items()} == dict(KMEANS_ACCOUNTS)


def test_control_plane_may_do_what_train_and_deploy_send(stacks: dict[str, Stack]) -> None:
    config = sagemaker_config(stacks)
    key_arn = config.kms_key_id
    endpoint = str(stacks["foundation.yaml"].outputs["EndpointName"])
    plan = _plan(config, endpoint)
    assert {e["operation"] for e in plan} >= {
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "PutObject",
        "CreateHyperParameterTuningJob",
        "GetObject",
        "CreateModel",
        "CreateEndpointConfig",
        "CreateEndpoint",
        "UpdateEndpoint",
    }
    checks = [check for entry in plan for check in authorizations(entry, key_arn)]
    control = identity_statements(stacks)["ControlPlaneRole"]
    assert _denials(control, checks) == []
    assert _bucket_denials(stacks, checks) == []


def test_control_plane_may_follow_stop_and_maintain(stacks: dict[str, Stack]) -> None:
    config = sagemaker_config(stacks)
    tuning = tuning_job_name(config, WHEN)
    endpoint = str(stacks["foundation.yaml"].outputs["EndpointName"])
    own = {f"aws:ResourceTag/{k}": v for k, v in config.tags.items()}
    bucket = f"arn:aws:s3:::{config.bucket}"
    registry = stacks["roles.yaml"].parameters["RegistryS3Prefix"]
    checks: list[Authorization] = [
        (
            "sagemaker:DescribeHyperParameterTuningJob",
            _arn("hyper-parameter-tuning-job", tuning),
            {},
        ),
        (
            "sagemaker:ListTrainingJobsForHyperParameterTuningJob",
            _arn("hyper-parameter-tuning-job", tuning),
            {},
        ),
        ("sagemaker:StopHyperParameterTuningJob", _arn("hyper-parameter-tuning-job", tuning), own),
        ("sagemaker:DescribeTrainingJob", _arn("training-job", f"{tuning}-001-1a2b3c4d"), {}),
        ("sagemaker:DescribeEndpoint", _arn("endpoint", endpoint), {}),
        (
            "sagemaker:DescribeEndpointConfig",
            _arn("endpoint-config", resource_name("fraudscore", "config", WHEN)),
            {},
        ),
        ("s3:ListBucket", bucket, {"s3:prefix": f"{registry}/models/"}),
        ("s3:ListBucket", bucket, {"s3:prefix": f"{config.prefix}/output/"}),
        ("s3:GetObject", f"{bucket}/{registry}/ACTIVE", {}),
        ("s3:PutObject", f"{bucket}/{registry}/ACTIVE", {}),
        ("s3:PutObject", f"{bucket}/{registry}/jobs/j1.json", {}),
        ("s3:DeleteObject", f"{bucket}/{registry}/jobs/retrain.lock", {}),
        ("s3:AbortMultipartUpload", f"{bucket}/{config.prefix}/data/{tuning}/train/train.csv", {}),
    ]
    assert _denials(identity_statements(stacks)["ControlPlaneRole"], checks) == []


def _first(plan: list[dict[str, Any]], operation: str) -> dict[str, Any]:
    return copy.deepcopy(next(e for e in plan if e["operation"] == operation))


Mutation = Callable[[SageMakerConfig], dict[str, Any]]


def _tuning(config: SageMakerConfig, **changes: Any) -> dict[str, Any]:
    request = create_hyper_parameter_tuning_job(
        config,
        tuning_job_name(config, WHEN),
        k=10,
        feature_dim=12,
        train_uri=config.s3_uri("data", "train"),
        test_uri=config.s3_uri("data", "test"),
        output_uri=config.s3_uri("output"),
    )
    job = request["TrainingJobDefinition"]
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = job
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return {"operation": "CreateHyperParameterTuningJob", "request": request}


NEAR_MISSES: dict[str, Mutation] = {
    "tuning job without a volume key": lambda c: _tuning(
        c, **{"ResourceConfig.VolumeKmsKeyId": None}
    ),
    "tuning job output under the AWS-managed key": lambda c: _tuning(
        c, **{"OutputDataConfig.KmsKeyId": None}
    ),
    "tuning job naming the key by alias": lambda c: _tuning(
        c, **{"ResourceConfig.VolumeKmsKeyId": "alias/fraudscore-prod"}
    ),
    "tuning job with network access": lambda c: _tuning(c, EnableNetworkIsolation=False),
    "tuning job without inter-container encryption": lambda c: _tuning(
        c, EnableInterContainerTrafficEncryption=False
    ),
    "tuning job on an NVMe instance type": lambda c: _tuning(
        c, **{"ResourceConfig.InstanceType": "ml.m5d.xlarge"}
    ),
    "tuning job running for a week": lambda c: _tuning(
        c, **{"StoppingCondition.MaxRuntimeInSeconds": 7 * 86400}
    ),
    "tuning job of another project": lambda c: _tuning(
        _replace(c, tags={**c.tags, "Project": "other"})
    ),
    "tuning job without an Owner tag": lambda c: _tuning(
        _replace(c, tags={k: v for k, v in c.tags.items() if k != "Owner"})
    ),
    "tuning job named outside the prefix": lambda c: _tuning(_replace(c, name_prefix="adhoc")),
    "model with network access": lambda c: {
        "operation": "CreateModel",
        "request": {
            **create_model(c, "fraudscore-model-x", "s3://b/m"),
            "EnableNetworkIsolation": False,
        },
    },
    "model named outside the prefix": lambda c: {
        "operation": "CreateModel",
        "request": create_model(c, "adhoc-model-x", "s3://b/m"),
    },
    "model run as another role": lambda c: {
        "operation": "CreateModel",
        "request": create_model(
            _replace(c, role_arn=f"arn:aws:iam::{ACCOUNT}:role/AmazonSageMaker-ExecutionRole-1"),
            "fraudscore-model-x",
            "s3://b/m",
        ),
    },
    "endpoint config without the key": lambda c: {
        "operation": "CreateEndpointConfig",
        "request": {
            k: v
            for k, v in create_endpoint_config(
                c, "fraudscore-config-x", "fraudscore-model-x"
            ).items()
            if k != "KmsKeyId"
        },
    },
    "endpoint config of a foreign model": lambda c: {
        "operation": "CreateEndpointConfig",
        "request": create_endpoint_config(c, "fraudscore-config-x", "adhoc-model-x"),
    },
    "endpoint config on an NVMe instance type": lambda c: {
        "operation": "CreateEndpointConfig",
        "request": create_endpoint_config(
            _replace(c, endpoint_instance_type="ml.g4dn.xlarge"),
            "fraudscore-config-x",
            "fraudscore-model-x",
        ),
    },
    "endpoint of another environment": lambda c: {
        "operation": "CreateEndpoint",
        "request": {
            "EndpointName": "fraudscore-dev",
            "EndpointConfigName": "fraudscore-config-x",
            "Tags": [{"Key": k, "Value": v} for k, v in c.tags.items()],
        },
    },
    "update of an endpoint another project tagged": lambda c: {
        "operation": "UpdateEndpoint",
        "request": {"EndpointName": "fraudscore-prod", "EndpointConfigName": "fraudscore-config-x"},
        "resource_tags": {**c.tags, "Project": "other"},
    },
}


# What each near miss is refused at: the guarded action itself (and AddTags when the name
# is the problem, since tags are checked against the same resource).
REFUSED_AT = {
    "model run as another role": {"iam:PassRole"},
    "model named outside the prefix": {"sagemaker:CreateModel", "sagemaker:AddTags"},
    "model with network access": {"sagemaker:CreateModel"},
    "endpoint of another environment": {"sagemaker:CreateEndpoint", "sagemaker:AddTags"},
    "update of an endpoint another project tagged": {"sagemaker:UpdateEndpoint"},
    "tuning job named outside the prefix": {
        "sagemaker:CreateHyperParameterTuningJob",
        "sagemaker:AddTags",
    },
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_control_plane_refuses_near_misses(stacks: dict[str, Stack], case: str) -> None:
    config = sagemaker_config(stacks)
    entry = NEAR_MISSES[case](config)
    checks = authorizations(entry, config.kms_key_id)
    denied = {
        d.split(" on ")[0]
        for d in _denials(identity_statements(stacks)["ControlPlaneRole"], checks)
    }
    operation = "sagemaker:" + entry["operation"]
    assert denied == REFUSED_AT.get(case, {operation})


def test_control_plane_refuses_jobs_outside_the_vpc() -> None:
    stacks = deploy("everything")
    config = sagemaker_config(stacks)
    control = identity_statements(stacks)["ControlPlaneRole"]
    for changed in (
        _replace(config, subnets=(), security_group_ids=()),
        _replace(config, subnets=("subnet-public",)),
        _replace(config, security_group_ids=("sg-open",)),
    ):
        model = {
            "operation": "CreateModel",
            "request": create_model(changed, "fraudscore-model-x", "s3://b/m"),
        }
        for entry in (_tuning(changed), model):
            assert _denials(control, authorizations(entry, config.kms_key_id)) != []


# ---------------------------------------------------------------------- the other roles
def test_execution_role_serves_jobs_and_endpoints(stacks: dict[str, Stack]) -> None:
    config = sagemaker_config(stacks)
    tuning = tuning_job_name(config, WHEN)
    bucket = f"arn:aws:s3:::{config.bucket}"
    via = {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}
    image = image_uri(REGION)
    kmeans = f"arn:aws:ecr:{REGION}:{image.split('.')[0]}:repository/kmeans"
    endpoint = stacks["foundation.yaml"].outputs["EndpointName"]
    logs = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group"
    allowed: list[Authorization] = [
        ("s3:ListBucket", bucket, {"s3:prefix": f"{config.prefix}/data/{tuning}/train"}),
        ("s3:GetObject", f"{bucket}/{config.prefix}/data/{tuning}/train/train.csv", {}),
        (
            "s3:PutObject",
            f"{bucket}/{config.prefix}/output/{tuning}-001-1a2b3c4d/output/model.tar.gz",
            {},
        ),
        ("s3:GetObject", f"{bucket}/{config.prefix}/models/v1/model.tar.gz", {}),
        (
            "s3:PutObject",
            f"{bucket}/{config.prefix}/data-capture/{endpoint}/AllTraffic/x.jsonl",
            {},
        ),
        ("kms:GenerateDataKey", config.kms_key_id, via),
        ("kms:Decrypt", config.kms_key_id, via),
        ("kms:CreateGrant", config.kms_key_id, {"kms:GrantIsForAWSResource": "true"}),
        ("ecr:BatchGetImage", kmeans, {}),
        (
            "logs:PutLogEvents",
            f"{logs}:/aws/sagemaker/TrainingJobs:log-stream:{tuning}-001/algo-1",
            {},
        ),
        (
            "logs:PutLogEvents",
            f"{logs}:/aws/sagemaker/Endpoints/{endpoint}:log-stream:AllTraffic/i-1",
            {},
        ),
    ]
    refused: list[Authorization] = [
        ("s3:PutObject", f"{bucket}/registry/ACTIVE", {}),
        ("s3:GetObject", f"{bucket}/registry/ACTIVE", {}),
        ("kms:Decrypt", config.kms_key_id, {}),
        ("kms:CreateGrant", config.kms_key_id, {"kms:GrantIsForAWSResource": "false"}),
        ("sagemaker:CreateEndpoint", _arn("endpoint", endpoint), {}),
        ("iam:PassRole", config.role_arn, {"iam:PassedToService": "sagemaker.amazonaws.com"}),
        ("ecr:BatchGetImage", f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/anything", {}),
    ]
    statements = identity_statements(stacks)["SageMakerExecutionRole"]
    assert _denials(statements, allowed) == []
    assert [a for a in refused if decide(statements, *a) == "allowed"] == []


def test_serving_role_invokes_and_reads_only(stacks: dict[str, Stack]) -> None:
    endpoint = str(stacks["foundation.yaml"].outputs["EndpointName"])
    bucket = f"arn:aws:s3:::{stacks['foundation.yaml'].outputs['DataBucketName']}"
    key_arn = str(stacks["foundation.yaml"].outputs["KeyArn"])
    via = {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}
    allowed: list[Authorization] = [
        ("sagemaker:InvokeEndpoint", _arn("endpoint", endpoint), {}),
        ("s3:GetObject", f"{bucket}/registry/ACTIVE", {}),
        ("s3:GetObject", f"{bucket}/registry/models/v1/model.tar.gz", {}),
        ("s3:ListBucket", bucket, {"s3:prefix": "registry/models/"}),
        ("kms:Decrypt", key_arn, via),
    ]
    refused: list[Authorization] = [
        ("sagemaker:InvokeEndpoint", _arn("endpoint", "fraudscore-dev"), {}),
        ("sagemaker:InvokeEndpoint", _arn("endpoint", "other"), {}),
        ("s3:PutObject", f"{bucket}/registry/ACTIVE", {}),
        ("s3:DeleteObject", f"{bucket}/registry/ACTIVE", {}),
        ("s3:GetObject", f"{bucket}/fraudscore/data/run/train/train.csv", {}),
        ("s3:ListBucket", bucket, {"s3:prefix": "fraudscore/"}),
        ("kms:Decrypt", key_arn, {}),
        ("sagemaker:CreateEndpoint", _arn("endpoint", endpoint), {}),
    ]
    statements = identity_statements(stacks)["ServingRole"]
    assert _denials(statements, allowed) == []
    assert [a for a in refused if decide(statements, *a) == "allowed"] == []


# ---------------------------------------------------------------------- bucket and key policies
def test_bucket_policy_takes_the_codes_uploads_and_refuses_other_keys(
    stacks: dict[str, Stack],
) -> None:
    config = sagemaker_config(stacks)
    statements = [s for s in resource_policy_statements(stacks) if "DataBucketPolicy" in s.where]
    obj = f"arn:aws:s3:::{config.bucket}/registry/ACTIVE"
    tls = {"aws:SecureTransport": "true", "s3:TlsVersion": "1.3"}
    ours = {
        "s3:x-amz-server-side-encryption": "aws:kms",
        "s3:x-amz-server-side-encryption-aws-kms-key-id": config.kms_key_id,
    }
    verdicts = {
        "the code's upload": decide(statements, "s3:PutObject", obj, {**tls, **ours}),
        "no encryption headers (bucket default, or UploadPart)": decide(
            statements, "s3:PutObject", obj, tls
        ),
        "plain HTTP": decide(statements, "s3:GetObject", obj, {"aws:SecureTransport": "false"}),
        "TLS 1.1": decide(statements, "s3:GetObject", obj, {**tls, "s3:TlsVersion": "1.1"}),
        "SSE-S3": decide(
            statements, "s3:PutObject", obj, {**tls, "s3:x-amz-server-side-encryption": "AES256"}
        ),
        "another key": decide(
            statements,
            "s3:PutObject",
            obj,
            {
                **tls,
                **ours,
                "s3:x-amz-server-side-encryption-aws-kms-key-id": FOREIGN_KEY,
            },
        ),
        "the key by alias": decide(
            statements,
            "s3:PutObject",
            obj,
            {
                **tls,
                **ours,
                "s3:x-amz-server-side-encryption-aws-kms-key-id": "alias/fraudscore-prod",
            },
        ),
        "aws:kms without a key (aws/s3)": decide(
            statements, "s3:PutObject", obj, {**tls, "s3:x-amz-server-side-encryption": "aws:kms"}
        ),
        "customer-provided key": decide(
            statements,
            "s3:PutObject",
            obj,
            {**tls, "s3:x-amz-server-side-encryption-customer-algorithm": "AES256"},
        ),
    }
    # A bucket policy only denies here; what is allowed comes from identity policies.
    assert verdicts == {
        "the code's upload": "implicit deny",
        "no encryption headers (bucket default, or UploadPart)": "implicit deny",
        "plain HTTP": "denied",
        "TLS 1.1": "denied",
        "SSE-S3": "denied",
        "another key": "denied",
        "the key by alias": "denied",
        "aws:kms without a key (aws/s3)": "denied",
        "customer-provided key": "denied",
    }


def _key_policy_for(stacks: dict[str, Stack], principal: str) -> list[Statement]:
    """The key policy statements that apply to an IAM role of this account."""

    def applies(s: Statement) -> bool:
        who = s.principal
        if who == "*":
            return True
        if isinstance(who, dict) and "AWS" in who:
            named = who["AWS"] if isinstance(who["AWS"], list) else [who["AWS"]]
            return principal in named or f"arn:aws:iam::{ACCOUNT}:root" in named
        return False

    return [s for s in resource_policy_statements(stacks) if "key-policy" in s.where and applies(s)]


def test_key_policy_separates_administrators_from_users(stacks: dict[str, Stack]) -> None:
    params = stacks["foundation.yaml"].parameters
    admin, deployer = params["KeyAdminRoleArn"], params["DeployRoleArn"]
    user = f"arn:aws:iam::{ACCOUNT}:role/fraudscore-prod-control-plane"
    key = "arn:aws:kms:us-east-1:123456789012:key/k"

    def verdict(who: str, action: str, **context: Any) -> str:
        ctx = {"aws:PrincipalArn": who, "aws:PrincipalIsAWSService": "false", **context}
        return decide(_key_policy_for(stacks, who), action, key, ctx)

    assert verdict(admin, "kms:Decrypt") == "denied"
    assert verdict(admin, "kms:GenerateDataKey") == "denied"
    assert verdict(admin, "kms:ScheduleKeyDeletion") == "allowed"
    assert verdict(deployer, "kms:PutKeyPolicy") == "allowed"
    # Users get key use from their IAM policies (root delegation), never key management.
    assert verdict(user, "kms:Decrypt") == "allowed"
    assert verdict(user, "kms:ScheduleKeyDeletion") == "denied"
    assert verdict(user, "kms:PutKeyPolicy") == "denied"
    assert verdict(user, "kms:CreateGrant", **{"kms:GrantIsForAWSResource": "false"}) == "denied"
    assert verdict(user, "kms:CreateGrant", **{"kms:GrantIsForAWSResource": "true"}) == "allowed"
