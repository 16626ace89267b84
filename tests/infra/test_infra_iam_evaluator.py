"""The policy evaluator of the infrastructure tests follows IAM's documented rules.

The tests that feed the code's requests to the roles are only as good as this evaluator, so
the rules they lean on are pinned here (IAM User Guide, "Condition operators" and "Policy
evaluation logic").
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.iam_model import condition_holds, decide, statements_of


@pytest.mark.parametrize(
    ("condition", "context", "holds"),
    [
        # ForAllValues on a missing key is vacuously true: why the templates add "Null": false.
        ({"ForAllValues:StringEquals": {"sagemaker:VpcSubnets": ["subnet-1"]}}, {}, True),
        (
            {
                "ForAllValues:StringEquals": {"sagemaker:VpcSubnets": ["subnet-1"]},
                "Null": {"sagemaker:VpcSubnets": "false"},
            },
            {},
            False,
        ),
        (
            {"ForAllValues:StringEquals": {"sagemaker:VpcSubnets": ["subnet-1", "subnet-2"]}},
            {"sagemaker:VpcSubnets": ["subnet-1", "subnet-9"]},
            False,
        ),
        (
            {"ForAllValues:StringLike": {"sagemaker:InstanceTypes": ["ml.m5.*"]}},
            {"sagemaker:InstanceTypes": ["ml.m5.xlarge"]},
            True,
        ),
        (
            {"ForAllValues:StringLike": {"sagemaker:InstanceTypes": ["ml.m5.*"]}},
            {"sagemaker:InstanceTypes": ["ml.m5d.xlarge"]},
            False,
        ),
        # A missing key fails a positive operator and satisfies a negated or IfExists one.
        ({"StringEquals": {"aws:RequestTag/Project": "p"}}, {}, False),
        ({"StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}}, {}, True),
        ({"StringEqualsIfExists": {"s3:x-amz-server-side-encryption": "aws:kms"}}, {}, True),
        ({"Null": {"aws:RequestTag/Owner": "false"}}, {"aws:RequestTag/Owner": "me"}, True),
        ({"Null": {"aws:RequestTag/Owner": "false"}}, {}, False),
        # ArnEquals only matches ARNs: a key alias never satisfies it.
        (
            {"ArnEquals": {"sagemaker:VolumeKmsKey": "arn:aws:kms:r:a:key/k"}},
            {"sagemaker:VolumeKmsKey": "arn:aws:kms:r:a:key/k"},
            True,
        ),
        (
            {"ArnEquals": {"sagemaker:VolumeKmsKey": "arn:aws:kms:r:a:key/*"}},
            {"sagemaker:VolumeKmsKey": "alias/k"},
            False,
        ),
        (
            {"Bool": {"sagemaker:NetworkIsolation": "true"}},
            {"sagemaker:NetworkIsolation": "True"},
            True,
        ),
        (
            {"NumericLessThanEquals": {"sagemaker:MaxRuntimeInSeconds": "86400"}},
            {"sagemaker:MaxRuntimeInSeconds": 86401},
            False,
        ),
        # Condition keys are case-insensitive; values are not.
        ({"StringEquals": {"aws:requesttag/project": "p"}}, {"aws:RequestTag/Project": "p"}, True),
        ({"StringEquals": {"aws:RequestTag/Project": "p"}}, {"aws:RequestTag/Project": "P"}, False),
    ],
)
def test_condition_operators(
    condition: dict[str, Any], context: dict[str, Any], holds: bool
) -> None:
    assert condition_holds(condition, context) is holds


def test_an_explicit_deny_wins_and_silence_denies() -> None:
    statements = statements_of(
        {
            "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/*"},
                {
                    "Effect": "Deny",
                    "Action": "s3:PutObject",
                    "Resource": "arn:aws:s3:::b/private/*",
                },
            ]
        },
        "p",
    )
    assert decide(statements, "s3:GetObject", "arn:aws:s3:::b/x") == "allowed"
    assert decide(statements, "S3:getobject", "arn:aws:s3:::b/x") == "allowed"  # actions: any case
    assert decide(statements, "s3:PutObject", "arn:aws:s3:::b/private/x") == "denied"
    assert decide(statements, "s3:GetObject", "arn:aws:s3:::other/x") == "implicit deny"
