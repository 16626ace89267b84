"""Tags, encryption, retention and the compute settings, resource by resource.

Taggability comes from the CloudFormation resource schemas cfn-lint bundles, so a new
resource type is covered without touching a list here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

from tests.infra.cfn_model import STANDARD_TAGS, TEMPLATE_NAMES, Stack, parse_template


def _taggable(kind: str) -> bool:
    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", kind).schema
    tagging = schema.get("tagging", {})
    return bool(tagging.get("taggable")) and tagging.get("tagProperty") == "/properties/Tags"


def tag_problems(template: Mapping[str, Any], where: str) -> list[str]:
    """Taggable resources without the six standard tags, each from its stack parameter."""
    problems = []
    for logical, resource in template["Resources"].items():
        if not _taggable(resource["Type"]):
            continue
        raw = resource.get("Properties", {}).get("Tags")
        if isinstance(raw, list):
            tags = {t.get("Key"): t.get("Value") for t in raw}
        else:
            tags = dict(raw or {})
        for key in STANDARD_TAGS:
            if key not in tags:
                problems.append(f"{where}/{logical}: no {key} tag")
            elif tags[key] != {"Ref": key}:
                problems.append(f"{where}/{logical}: {key} tag is {tags[key]}, not the parameter")
    return problems


# ---------------------------------------------------------------------- tags
@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_every_taggable_resource_has_the_standard_tags(
    templates: dict[str, dict[str, Any]], name: str
) -> None:
    template = templates[name]
    assert tag_problems(template, name) == []
    for key in STANDARD_TAGS:
        assert key in template["Parameters"], f"{name}: no {key} parameter"
    assert sum(_taggable(r["Type"]) for r in template["Resources"].values()) >= 3


def test_tag_check_catches_an_untagged_listener_and_a_literal_value() -> None:
    template = parse_template(
        """
Resources:
  Listener:
    Type: AWS::ElasticLoadBalancingV2::Listener
    Properties: {LoadBalancerArn: x, DefaultActions: []}
  Group:
    Type: AWS::Logs::LogGroup
    Properties:
      Tags:
        - {Key: Project, Value: fraudscore}
        - {Key: Environment, Value: !Ref Environment}
        - {Key: Owner, Value: !Ref Owner}
        - {Key: CostCenter, Value: !Ref CostCenter}
        - {Key: DataClassification, Value: !Ref DataClassification}
        - {Key: ManagedBy, Value: !Ref ManagedBy}
  Alias:
    Type: AWS::KMS::Alias
    Properties: {AliasName: alias/x, TargetKeyId: k}
"""
    )
    problems = tag_problems(template, "t")
    assert "t/Listener: no Project tag" in problems
    assert "t/Group: Project tag is fraudscore, not the parameter" in problems
    assert len(problems) == 7  # six for the listener, one for the group; aliases take no tags


# ---------------------------------------------------------------------- the key
def _foundation(stacks: dict[str, Stack]) -> dict[str, dict[str, Any]]:
    return stacks["foundation.yaml"].resources


def _key_arn(stacks: dict[str, Stack]) -> str:
    return str(stacks["foundation.yaml"].outputs["KeyArn"])


def test_key_rotates_and_outlives_the_stack(stacks: dict[str, Stack]) -> None:
    keys = {k: r for k, r in _foundation(stacks).items() if r["Type"] == "AWS::KMS::Key"}
    assert list(keys) == ["Key"]
    key = keys["Key"]
    props = key["Properties"]
    assert props["EnableKeyRotation"] is True
    assert int(props["PendingWindowInDays"]) >= 30
    assert props["KeySpec"] == "SYMMETRIC_DEFAULT"
    assert props["MultiRegion"] is False
    assert key["DeletionPolicy"] == "Retain"
    assert key["UpdateReplacePolicy"] == "Retain"


def test_key_policy_allows_no_anonymous_principal_and_conditions_services(
    stacks: dict[str, Stack],
) -> None:
    for statement in _foundation(stacks)["Key"]["Properties"]["KeyPolicy"]["Statement"]:
        principal = statement["Principal"]
        if statement["Effect"] == "Allow":
            assert principal != "*", statement["Sid"]
            assert principal.get("AWS") != "*", statement["Sid"]
            if "Service" in principal:
                assert statement.get("Condition"), f"{statement['Sid']}: unconditioned service"
        else:
            assert statement.get("Condition"), f"{statement['Sid']}: unconditioned Deny"


def test_key_administrators_get_no_cryptographic_use(stacks: dict[str, Stack]) -> None:
    statements = _foundation(stacks)["Key"]["Properties"]["KeyPolicy"]["Statement"]
    (admin,) = [s for s in statements if s["Sid"] == "AdministratorsManageTheKey"]
    crypto = {"Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "Sign", "Verify", "Mac"}
    assert not [a for a in admin["Action"] if any(a.startswith(f"kms:{c}") for c in crypto)]


# ---------------------------------------------------------------------- buckets and logs
PUBLIC_ACCESS_FLAGS = (
    "BlockPublicAcls",
    "BlockPublicPolicy",
    "IgnorePublicAcls",
    "RestrictPublicBuckets",
)


def bucket_problems(resources: Mapping[str, Mapping[str, Any]], key_arn: str) -> list[str]:
    """Buckets not private, versioned, retained and encrypted under the key.

    The only exception is SSE-S3 declared with a reason in the bucket's Metadata
    (``fraudscore.encryption-exception``), for log destinations that accept nothing else.
    """
    problems = []
    policies = {
        r["Properties"]["Bucket"]: r["Properties"]["PolicyDocument"]["Statement"]
        for r in resources.values()
        if r["Type"] == "AWS::S3::BucketPolicy"
    }
    for logical, resource in resources.items():
        if resource["Type"] != "AWS::S3::Bucket":
            continue
        props = resource["Properties"]
        name = props.get("BucketName", logical)
        rules = props.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", [])
        default = rules[0].get("ServerSideEncryptionByDefault", {}) if rules else {}
        exception = resource.get("Metadata", {}).get("fraudscore", {}).get("encryption-exception")
        if exception and len(str(exception)) > 40 and default.get("SSEAlgorithm") == "AES256":
            pass
        elif default.get("SSEAlgorithm") != "aws:kms" or default.get("KMSMasterKeyID") != key_arn:
            problems.append(f"{logical}: not SSE-KMS under the key ({default})")
        elif not rules[0].get("BucketKeyEnabled"):
            problems.append(f"{logical}: no bucket key")
        block = props.get("PublicAccessBlockConfiguration", {})
        problems.extend(
            f"{logical}: {flag} is not set"
            for flag in PUBLIC_ACCESS_FLAGS
            if block.get(flag) is not True
        )
        ownership = props.get("OwnershipControls", {}).get("Rules", [{}])[0]
        if ownership.get("ObjectOwnership") != "BucketOwnerEnforced":
            problems.append(f"{logical}: ACLs are not disabled (BucketOwnerEnforced)")
        if props.get("VersioningConfiguration", {}).get("Status") != "Enabled":
            problems.append(f"{logical}: not versioned")
        if resource.get("DeletionPolicy") != "Retain":
            problems.append(f"{logical}: not retained on stack deletion")
        statements = policies.get(name, [])
        if not any(
            s["Effect"] == "Deny"
            and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
            for s in statements
        ):
            problems.append(f"{logical}: no Deny of non-TLS access")
        if default.get("SSEAlgorithm") == "aws:kms" and not any(
            s["Effect"] == "Deny"
            and s.get("Condition", {})
            .get("StringNotEquals", {})
            .get("s3:x-amz-server-side-encryption-aws-kms-key-id")
            == key_arn
            for s in statements
        ):
            problems.append(f"{logical}: uploads under another key are not denied")
    return problems


def test_every_bucket_is_private_versioned_retained_and_under_the_key(
    stacks: dict[str, Stack],
) -> None:
    resources = _foundation(stacks)
    assert bucket_problems(resources, _key_arn(stacks)) == []
    buckets = [r for r in resources.values() if r["Type"] == "AWS::S3::Bucket"]
    kms = [b for b in buckets if "fraudscore" not in b.get("Metadata", {})]
    assert len(kms) == 1  # the data bucket; the log bucket is the declared exception
    assert kms[0]["Properties"]["LoggingConfiguration"]["DestinationBucketName"]


def test_bucket_check_catches_the_aws_managed_key_and_a_public_bucket() -> None:
    resources = {
        "Bucket": {
            "Type": "AWS::S3::Bucket",
            "Properties": {
                "BucketName": "b",
                "BucketEncryption": {
                    "ServerSideEncryptionConfiguration": [
                        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}
                    ]
                },
                "PublicAccessBlockConfiguration": {"BlockPublicAcls": True},
            },
        },
        "Logs": {
            "Type": "AWS::S3::Bucket",
            # SSE-S3 without a declared, explained exception.
            "Metadata": {"fraudscore": {"encryption-exception": "logs"}},
            "Properties": {
                "BucketEncryption": {
                    "ServerSideEncryptionConfiguration": [
                        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                    ]
                }
            },
        },
    }
    problems = bucket_problems(resources, "arn:k")
    assert "Bucket: not SSE-KMS under the key ({'SSEAlgorithm': 'aws:kms'})" in problems
    assert "Bucket: BlockPublicPolicy is not set" in problems
    assert "Bucket: not versioned" in problems
    assert "Bucket: no Deny of non-TLS access" in problems
    assert "Logs: not SSE-KMS under the key ({'SSEAlgorithm': 'AES256'})" in problems


def encryption_problems(stacks: dict[str, Stack], key_arn: str) -> list[str]:
    """Log groups, endpoint configs, repositories and Fargate storage not under the key."""
    problems = []
    for stack in stacks.values():
        for logical, resource in stack.resources.items():
            props, kind = resource["Properties"], resource["Type"]
            if kind == "AWS::Logs::LogGroup":
                if props.get("KmsKeyId") != key_arn:
                    problems.append(f"{logical}: log group not encrypted with the key")
                if not props.get("RetentionInDays"):
                    problems.append(f"{logical}: log group keeps logs forever")
                if resource.get("DeletionPolicy") != "Retain":
                    problems.append(f"{logical}: log group not retained")
            elif kind == "AWS::SageMaker::EndpointConfig":
                if props.get("KmsKeyId") != key_arn:
                    problems.append(f"{logical}: endpoint volumes not encrypted with the key")
                capture = props.get("DataCaptureConfig")
                if capture and capture.get("KmsKeyId") != key_arn:
                    problems.append(f"{logical}: captured data not encrypted with the key")
            elif kind == "AWS::ECR::Repository":
                if props.get("EncryptionConfiguration", {}).get("KmsKey") != key_arn:
                    problems.append(f"{logical}: repository not encrypted with the key")
            elif kind == "AWS::ECS::Cluster":
                storage = props.get("Configuration", {}).get("ManagedStorageConfiguration", {})
                if storage.get("FargateEphemeralStorageKmsKeyId") != key_arn:
                    problems.append(f"{logical}: Fargate task storage not encrypted with the key")
    return problems


def test_logs_images_and_task_storage_are_under_the_key(stacks: dict[str, Stack]) -> None:
    assert encryption_problems(stacks, _key_arn(stacks)) == []
    groups = {
        r["Properties"]["LogGroupName"]
        for r in _foundation(stacks).values()
        if r["Type"] == "AWS::Logs::LogGroup"
    }
    assert {"/ecs/fraudscore-prod", "/aws/sagemaker/Endpoints/fraudscore-prod"} <= groups


def test_encryption_check_catches_an_endpoint_config_without_the_key() -> None:
    config = {"Type": "AWS::SageMaker::EndpointConfig", "Properties": {"ProductionVariants": []}}
    group = {"Type": "AWS::Logs::LogGroup", "Properties": {"LogGroupName": "/x"}}
    stack = Stack("s", {}, {}, {}, {"Config": config, "Group": group}, {})
    assert encryption_problems({"s": stack}, "arn:k") == [
        "Config: endpoint volumes not encrypted with the key",
        "Group: log group not encrypted with the key",
        "Group: log group keeps logs forever",
        "Group: log group not retained",
    ]


# ---------------------------------------------------------------------- ECS and the load balancer
def _service(stacks: dict[str, Stack]) -> dict[str, dict[str, Any]]:
    return stacks["service.yaml"].resources


def test_task_runs_non_root_read_only_unprivileged(stacks: dict[str, Stack]) -> None:
    task = _service(stacks)["TaskDefinition"]["Properties"]
    assert task["RequiresCompatibilities"] == ["FARGATE"]
    assert task["NetworkMode"] == "awsvpc"
    (container,) = task["ContainerDefinitions"]
    user = container["User"].split(":")[0]
    assert user not in ("", "0", "root")
    assert container["ReadonlyRootFilesystem"] is True
    assert container["Privileged"] is False
    assert container["LinuxParameters"]["Capabilities"]["Drop"] == ["ALL"]
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["FRAUDSCORE_HOST"] == "0.0.0.0"  # noqa: S104 (inside the task's own network)
    assert env["FRAUDSCORE_REGISTRY"].startswith("s3://fraudscore-prod-data-")
    assert env["FRAUDSCORE_KMS_KEY_ID"] == _key_arn(stacks)
    assert "FRAUDSCORE_ADMIN_TOKEN" not in env
    assert "--demo-model" not in container["Command"]
    secrets = {s["Name"] for s in container.get("Secrets", [])}
    assert secrets <= {"FRAUDSCORE_API_KEYS"}


def test_service_has_no_public_ip_and_scales(stacks: dict[str, Stack]) -> None:
    resources = _service(stacks)
    service = resources["Service"]["Properties"]
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED"
    assert service["LaunchType"] == "FARGATE"
    assert service["PropagateTags"] == "SERVICE"
    assert service["EnableExecuteCommand"] is False
    assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"]["Rollback"] is True
    policies = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::ApplicationAutoScaling::ScalingPolicy"
    ]
    assert policies
    assert all(p["PolicyType"] == "TargetTrackingScaling" for p in policies)
    cluster = resources["Cluster"]["Properties"]
    assert {"Name": "containerInsights", "Value": "enabled"} in cluster["ClusterSettings"]


def test_endpoint_auto_scaling_is_an_option(stacks: dict[str, Stack]) -> None:
    resources = _service(stacks)
    enabled = stacks["service.yaml"].parameters["EnableEndpointAutoScaling"] == "true"
    assert ("EndpointScalableTarget" in resources) == enabled
    if enabled:
        target = resources["EndpointScalableTarget"]["Properties"]
        assert target["ResourceId"] == "endpoint/fraudscore-prod/variant/AllTraffic"
        assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"


def test_load_balancer_is_tls_only_with_access_logs(stacks: dict[str, Stack]) -> None:
    resources = _service(stacks)
    listeners = [r["Properties"] for r in resources.values() if r["Type"].endswith("::Listener")]
    for listener in listeners:
        if listener["Protocol"] == "HTTPS":
            assert listener["SslPolicy"].startswith("ELBSecurityPolicy-TLS13-1-2")
            assert listener["DefaultActions"][0]["Type"] == "forward"
        else:
            (action,) = listener["DefaultActions"]
            assert action["Type"] == "redirect"
            assert action["RedirectConfig"]["Protocol"] == "HTTPS"
    assert sorted(listener["Protocol"] for listener in listeners) == ["HTTP", "HTTPS"]
    attributes = {
        a["Key"]: a["Value"]
        for a in resources["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]
    }
    assert attributes["access_logs.s3.enabled"] == "true"
    assert attributes["access_logs.s3.bucket"].startswith("fraudscore-prod-logs-")
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
    target = resources["TargetGroup"]["Properties"]
    assert target["HealthCheckPath"] == "/healthz"
    assert target["TargetType"] == "ip"


def test_security_groups_only_open_the_paths_they_must(stacks: dict[str, Stack]) -> None:
    resources = _service(stacks)
    for logical in ("LoadBalancerSecurityGroup", "TaskSecurityGroup"):
        props = resources[logical]["Properties"]
        for rule in props.get("SecurityGroupIngress", []) + props.get("SecurityGroupEgress", []):
            assert rule["Description"]
            assert rule.get("CidrIp") != "0.0.0.0/0" or rule["FromPort"] == 443, rule
    ingress = resources["TasksFromLoadBalancer"]["Properties"]
    assert ingress["SourceSecurityGroupId"] == "<LoadBalancerSecurityGroup.GroupId>"
    assert (ingress["FromPort"], ingress["ToPort"]) == (8000, 8000)
