"""Smoke test: the three stacks deploy in order on moto's CloudFormation, exports and all.

moto is no proof of the security properties (it ignores bucket policies, auto scaling and
most ECS and load balancer settings; see the other tests for those). It does show that the
templates parse as CloudFormation does, that every reference and cross-stack import
resolves, and that the key, the bucket encryption and the roles land as written.
Two moto bugs need the rewrites below: KMS key Tags crash create_stack, and a KeyPolicy
written as an object breaks describe_key (so it is passed as a JSON string).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.infra.cfn_model import ACCOUNT, REGION, REQUIRED, STACK_NAMES, load_template

pytestmark = pytest.mark.filterwarnings(
    # moto skips the resource types it does not emulate (bucket policies, scaling policies).
    "ignore:Tried to parse AWS:UserWarning"
)


def _for_moto(name: str) -> str:
    template = load_template(name)
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::KMS::Key":
            resource["Properties"].pop("Tags", None)
            resource["Properties"]["KeyPolicy"] = json.dumps(resource["Properties"]["KeyPolicy"])
    return json.dumps(template)


@pytest.fixture(scope="module")
def aws(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The three stacks created on moto; the clients to look at what they made."""
    for variable, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch_module.setenv(variable, value)
    monkeypatch_module.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch_module.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnets = [
            ec2.create_subnet(
                VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{z}"
            )["Subnet"]["SubnetId"]
            for i, z in ((1, "a"), (2, "b"))
        ]
        acm = boto3.client("acm", region_name=REGION)
        certificate = acm.request_certificate(DomainName="fraudscore.example.com")["CertificateArn"]
        network = {
            "VpcId": vpc,
            "ServiceSubnetIds": ",".join(subnets),
            "LoadBalancerSubnetIds": ",".join(subnets),
            "CertificateArn": certificate,
        }
        cloudformation = boto3.client("cloudformation", region_name=REGION)
        outputs = {}
        for name in ("foundation.yaml", "roles.yaml", "service.yaml"):
            parameters = {**REQUIRED[name], **(network if name == "service.yaml" else {})}
            cloudformation.create_stack(
                StackName=STACK_NAMES[name],
                TemplateBody=_for_moto(name),
                Parameters=[
                    {"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()
                ],
                Capabilities=["CAPABILITY_NAMED_IAM"],
            )
            (stack,) = cloudformation.describe_stacks(StackName=STACK_NAMES[name])["Stacks"]
            assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
            outputs[name] = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        yield {"outputs": outputs, "region": REGION}


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_foundation_creates_a_rotating_key_and_a_bucket_under_it(aws: dict[str, Any]) -> None:
    foundation = aws["outputs"]["foundation.yaml"]
    kms = boto3.client("kms", region_name=REGION)
    key_arn = foundation["KeyArn"]
    assert kms.get_key_rotation_status(KeyId=key_arn)["KeyRotationEnabled"] is True
    s3 = boto3.client("s3", region_name=REGION)
    (rule,) = s3.get_bucket_encryption(Bucket=foundation["DataBucketName"])[
        "ServerSideEncryptionConfiguration"
    ]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": key_arn,
    }
    tags = s3.get_bucket_tagging(Bucket=foundation["DataBucketName"])["TagSet"]
    assert {t["Key"] for t in tags} >= {"Project", "Environment", "Owner", "CostCenter"}
    logs = boto3.client("logs", region_name=REGION)
    groups = {g["logGroupName"]: g for g in logs.describe_log_groups()["logGroups"]}
    assert groups["/ecs/fraudscore-prod"]["retentionInDays"] == 365


def test_roles_land_with_their_trust_and_the_pinned_pass_role(aws: dict[str, Any]) -> None:
    iam = boto3.client("iam", region_name=REGION)
    roles = aws["outputs"]["roles.yaml"]
    control = iam.get_role(RoleName="fraudscore-prod-control-plane")["Role"]
    assert control["Arn"] == roles["ControlPlaneRoleArn"]
    execution = iam.get_role(RoleName="fraudscore-prod-sagemaker-exec")["Role"]
    trust = execution["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Condition"]["StringEquals"]["aws:SourceAccount"] == ACCOUNT
    policy = iam.get_role_policy(
        RoleName="fraudscore-prod-control-plane", PolicyName="control-plane"
    )
    document = policy["PolicyDocument"]
    if isinstance(document, str):  # moto keeps CloudFormation's policy object as its repr
        document = ast.literal_eval(document)
    statements = document["Statement"]
    (pass_role,) = [s for s in statements if s["Action"] == "iam:PassRole"]
    # Resolved across the stack: exactly the execution role created above.
    assert pass_role["Resource"] == execution["Arn"] == roles["SageMakerExecutionRoleArn"]
    tags = {t["Key"] for t in iam.list_role_tags(RoleName=execution["RoleName"])["Tags"]}
    assert tags >= {"Project", "Environment", "Owner", "CostCenter", "DataClassification"}


def test_service_task_gets_the_imported_key_registry_and_endpoint(aws: dict[str, Any]) -> None:
    ecs = boto3.client("ecs", region_name=REGION)
    task = ecs.describe_task_definition(taskDefinition="fraudscore-prod")["taskDefinition"]
    foundation = aws["outputs"]["foundation.yaml"]
    # moto keeps only family, containers, volumes and memory of a task definition: the roles,
    # awsvpc and Fargate settings are checked on the resolved templates instead.
    (container,) = task["containerDefinitions"]
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env["FRAUDSCORE_KMS_KEY_ID"] == foundation["KeyArn"]
    assert env["FRAUDSCORE_REGISTRY"] == f"s3://{foundation['DataBucketName']}/registry"
    assert env["FRAUDSCORE_ENDPOINT_NAME"] == foundation["EndpointName"]
    assert container["readonlyRootFilesystem"] is True
    assert container["user"] == "10001:10001"
