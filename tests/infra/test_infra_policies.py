"""Least privilege on the policies as deployed, in both scenarios, and proof that the checks bite.

The scanners miss most of this (checkov passes ``iam:PassRole`` on ``*`` with a condition, and
has no check for tags, trust conditions or SageMaker condition keys), so these are our own.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.cfn_model import ACCOUNT, Stack
from tests.infra.iam_model import (
    Statement,
    all_statements,
    condition_key_problems,
    execution_role_problems,
    grant_problems,
    guardrail_problems,
    identity_statements,
    pass_role_problems,
    resource_policy_statements,
    role_arn,
    star_resource_problems,
    statements_of,
    trust_problems,
    trust_statements,
    unknown_action_problems,
    wildcard_action_problems,
)


def _every_statement(stacks: dict[str, Stack]) -> list[Statement]:
    return [
        *all_statements(identity_statements(stacks)),
        *all_statements(trust_statements(stacks)),
        *resource_policy_statements(stacks),
    ]


def _key_arn(stacks: dict[str, Stack]) -> str:
    value = stacks["foundation.yaml"].outputs["KeyArn"]
    assert isinstance(value, str)
    return value


# ---------------------------------------------------------------------- the templates
def test_no_allow_names_actions_by_wildcard(stacks: dict[str, Stack]) -> None:
    assert wildcard_action_problems(_every_statement(stacks)) == []


def test_no_write_permissions_or_tagging_action_on_star(stacks: dict[str, Stack]) -> None:
    statements = [
        *all_statements(identity_statements(stacks)),
        *resource_policy_statements(stacks),
    ]
    assert star_resource_problems(statements) == []


def test_every_action_exists(stacks: dict[str, Stack]) -> None:
    assert unknown_action_problems(_every_statement(stacks)) == []


def test_every_condition_key_applies_to_its_actions(stacks: dict[str, Stack]) -> None:
    assert condition_key_problems(_every_statement(stacks)) == []


def test_pass_role_is_pinned_to_the_execution_role(stacks: dict[str, Stack]) -> None:
    roles = identity_statements(stacks)
    assert pass_role_problems(all_statements(roles)) == []
    passing = {
        logical: [s for s in statements if any(a.lower() == "iam:passrole" for a in s.actions)]
        for logical, statements in roles.items()
    }
    assert {logical for logical, found in passing.items() if found} == {"ControlPlaneRole"}
    (statement,) = passing["ControlPlaneRole"]
    assert statement.resources == (role_arn(stacks, "SageMakerExecutionRole"),)
    assert statement.condition == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}
    }


def test_grants_only_for_aws_resources_and_no_role_discovery(stacks: dict[str, Stack]) -> None:
    assert grant_problems(all_statements(identity_statements(stacks))) == []


def test_every_trust_policy_carries_source_account_conditions(stacks: dict[str, Stack]) -> None:
    trusts = trust_statements(stacks)
    assert set(trusts) == {
        "SageMakerExecutionRole",
        "ServingRole",
        "ControlPlaneRole",
        "TaskExecutionRole",
    }
    assert trust_problems(all_statements(trusts), ACCOUNT) == []


def test_execution_role_is_data_plane_only(stacks: dict[str, Stack]) -> None:
    statements = identity_statements(stacks)["SageMakerExecutionRole"]
    assert execution_role_problems(statements) == []


def test_serving_role_can_only_invoke_and_read(stacks: dict[str, Stack]) -> None:
    statements = identity_statements(stacks)["ServingRole"]
    actions = {a for s in statements if s.effect == "Allow" for a in s.actions}
    assert actions == {"sagemaker:InvokeEndpoint", "s3:ListBucket", "s3:GetObject", "kms:Decrypt"}
    (invoke,) = [s for s in statements if "sagemaker:InvokeEndpoint" in s.actions]
    endpoint = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:endpoint/fraudscore-prod"
    assert invoke.resources == (endpoint, f"{endpoint}-*")


def test_task_roles_differ(stacks: dict[str, Stack]) -> None:
    task = stacks["service.yaml"].resources["TaskDefinition"]["Properties"]
    assert task["TaskRoleArn"] == role_arn(stacks, "ServingRole")
    assert task["ExecutionRoleArn"] == role_arn(stacks, "TaskExecutionRole")
    assert task["TaskRoleArn"] != task["ExecutionRoleArn"]


def test_sagemaker_creates_carry_their_guardrails(stacks: dict[str, Stack]) -> None:
    vpc = bool(stacks["roles.yaml"].parameters["SageMakerVpcId"])
    statements = identity_statements(stacks)["ControlPlaneRole"]
    assert guardrail_problems(statements, _key_arn(stacks), vpc=vpc) == []
    creates = {a for s in statements for a in s.actions if a.startswith("sagemaker:Create")}
    assert creates == {
        "sagemaker:CreateHyperParameterTuningJob",
        "sagemaker:CreateModel",
        "sagemaker:CreateEndpointConfig",
        "sagemaker:CreateEndpoint",
    }


# ---------------------------------------------------------------------- the checks bite
# The original proof of concept's policies, as the issue describes them.
ARTICLE: dict[str, Any] = {
    "Statement": [
        {
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": "*",
            "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
        },
        {
            "Effect": "Allow",
            "Action": ["sagemaker:CreateEndpoint", "sagemaker:DescribeEndpoint"],
            "Resource": "*",
        },
        {"Effect": "Allow", "Action": ["iam:ListRoles", "kms:ListAliases"], "Resource": "*"},
        {
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:CreateGrant", "kms:RevokeGrant", "kms:ListGrants"],
            "Resource": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/k",
        },
    ]
}
ARTICLE_TRUST: dict[str, Any] = {
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "sagemaker.amazonaws.com"},
            "Action": "sts:AssumeRole",
        },
        {
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::999999999999:root"},
            "Action": "sts:AssumeRole",
        },
    ]
}


def _article() -> list[Statement]:
    return statements_of(ARTICLE, "article")


def test_star_check_catches_create_endpoint_and_pass_role_on_star() -> None:
    problems = star_resource_problems(_article())
    assert any("sagemaker:CreateEndpoint (Write)" in p for p in problems)
    assert any("iam:PassRole (Permissions management)" in p for p in problems)
    # Reading on "*" (DescribeEndpoint, ListRoles) is not this check's business.
    assert not any("Describe" in p or "ListRoles" in p for p in problems)


def test_pass_role_check_catches_a_pass_role_on_star() -> None:
    assert pass_role_problems(_article()) == ["article[0]: iam:PassRole on ['*'], not one role ARN"]
    unconditioned = statements_of(
        {"Statement": [{"Effect": "Allow", "Action": "iam:PassRole", "Resource": "arn:x:role/r"}]},
        "bare",
    )
    assert "bare[0]: iam:PassRole without StringEquals iam:PassedToService" in (
        pass_role_problems(unconditioned)
    )


def test_grant_check_catches_unconditioned_grants_and_role_discovery() -> None:
    problems = grant_problems(_article())
    assert "article[3]: kms:CreateGrant without kms:GrantIsForAWSResource" in problems
    assert "article[3]: allows kms:revokegrant" in problems
    assert "article[2]: allows iam:listroles" in problems


def test_trust_check_catches_a_confused_deputy_and_a_foreign_account() -> None:
    problems = trust_problems(statements_of(ARTICLE_TRUST, "trust"), ACCOUNT)
    assert f"trust[0]: service trust without aws:SourceAccount = {ACCOUNT}" in problems
    assert "trust[1]: trusts arn:aws:iam::999999999999:root, not this account" in problems
    assert "trust[1]: account trust without aws:PrincipalArn" in problems


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("sagemaker:*", "wildcard action sagemaker:*"),
        ("s3:Put*", "wildcard action s3:Put*"),
    ],
)
def test_wildcard_check_catches_patterns(action: str, expected: str) -> None:
    fragment = {"Statement": [{"Effect": "Allow", "Action": action, "Resource": "arn:x"}]}
    assert wildcard_action_problems(statements_of(fragment, "f")) == [f"f[0]: {expected}"]


def test_wildcard_check_catches_not_action() -> None:
    fragment = {"Statement": [{"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}]}
    assert wildcard_action_problems(statements_of(fragment, "f")) == [
        "f[0]: Allow with NotAction/NotResource/NotPrincipal"
    ]


def test_unknown_action_and_condition_key_checks_catch_typos() -> None:
    fragment = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "sagemaker:CreateEndpointConfiguration",
                "Resource": "arn:x",
            },
            {
                "Effect": "Allow",
                "Action": "sagemaker:CreateEndpointConfig",
                "Resource": "arn:x",
                "Condition": {"ArnEquals": {"sagemaker:OutputKmsKey": "arn:k"}},
            },
        ]
    }
    statements = statements_of(fragment, "f")
    assert unknown_action_problems(statements) == [
        "f[0]: unknown action sagemaker:CreateEndpointConfiguration"
    ]
    # OutputKmsKey exists for training jobs, not endpoint configs: it would never match.
    assert condition_key_problems(statements) == [
        "f[1]: ArnEquals sagemaker:OutputKmsKey applies to none of "
        "('sagemaker:CreateEndpointConfig',)"
    ]


def test_guardrail_check_catches_an_endpoint_config_without_the_key() -> None:
    fragment = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "sagemaker:CreateEndpointConfig",
                "Resource": "arn:x",
                "Condition": {"StringEquals": {"aws:RequestTag/Project": "fraudscore"}},
            },
            {"Effect": "Allow", "Action": "sagemaker:AddTags", "Resource": "arn:x"},
        ]
    }
    problems = guardrail_problems(statements_of(fragment, "f"), "arn:k")
    assert (
        "f[0]: sagemaker:CreateEndpointConfig without ArnEquals sagemaker:VolumeKmsKey = arn:k"
        in (problems)
    )
    assert "f[1]: sagemaker:AddTags without StringEquals sagemaker:TaggingAction = None" in problems


def test_guardrail_check_requires_the_vpc_keys_with_null_when_a_vpc_is_configured() -> None:
    fragment = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "sagemaker:CreateModel",
                "Resource": "arn:x",
                "Condition": {
                    "Bool": {"sagemaker:NetworkIsolation": "true"},
                    "StringEquals": {
                        "aws:RequestTag/Project": "p",
                        "aws:RequestTag/Environment": "e",
                    },
                    "ForAllValues:StringEquals": {"sagemaker:VpcSubnets": ["subnet-1"]},
                },
            }
        ]
    }
    statements = statements_of(fragment, "f")
    assert guardrail_problems(statements, "arn:k") == []
    assert guardrail_problems(statements, "arn:k", vpc=True) == [
        "f[0]: sagemaker:CreateModel without ForAllValues:StringEquals "
        "sagemaker:VpcSecurityGroupIds = None",
        "f[0]: sagemaker:CreateModel without Null sagemaker:VpcSubnets = false",
        "f[0]: sagemaker:CreateModel without Null sagemaker:VpcSecurityGroupIds = false",
    ]


def test_execution_role_check_catches_control_plane_actions() -> None:
    assert execution_role_problems(_article()) == [
        "article[0]: execution role allows iam:PassRole",
        "article[1]: execution role allows sagemaker:CreateEndpoint",
        "article[1]: execution role allows sagemaker:DescribeEndpoint",
        "article[2]: execution role allows iam:ListRoles",
    ]
