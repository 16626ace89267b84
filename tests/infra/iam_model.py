"""IAM policies of the resolved stacks: where they are, what they allow, what is wrong with them.

Two halves. The checks (``*_problems``) read statements and return what is wrong, one line
each, so a test can show they catch a bad fragment. The evaluator (:func:`decide`) answers
whether a set of statements allows one request, for the condition operators these templates
use: the tests feed it the requests the fraudscore code really makes.

Access levels and condition keys come from the Service Authorization Reference as bundled by
policy_sentry, not from lists kept here.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from policy_sentry.querying.actions import get_action_data, get_actions_for_service

from tests.infra.cfn_model import ACCOUNT, Stack

# Access levels that change something: never on Resource "*".
MUTATING_LEVELS = frozenset({"Write", "Permissions management", "Tagging"})


@dataclass(frozen=True)
class Statement:
    """One policy statement, normalised (lists everywhere), and where it comes from."""

    where: str
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    condition: Mapping[str, Mapping[str, Any]]
    principal: Any = None
    not_actions: tuple[str, ...] = ()
    not_resources: tuple[str, ...] = ()
    not_principal: Any = None
    sid: str = ""


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return (str(value),)


def statements_of(document: Mapping[str, Any], where: str) -> list[Statement]:
    """The statements of one policy document."""
    raw = document.get("Statement", [])
    if isinstance(raw, dict):
        raw = [raw]
    out = []
    for i, s in enumerate(raw):
        sid = str(s.get("Sid", ""))
        out.append(
            Statement(
                where=f"{where}[{sid or i}]",
                effect=str(s["Effect"]),
                actions=_strings(s.get("Action")),
                resources=_strings(s.get("Resource")),
                condition=s.get("Condition", {}),
                principal=s.get("Principal"),
                not_actions=_strings(s.get("NotAction")),
                not_resources=_strings(s.get("NotResource")),
                not_principal=s.get("NotPrincipal"),
                sid=sid,
            )
        )
    return out


# ---------------------------------------------------------------------- where policies are
def identity_statements(stacks: Mapping[str, Stack]) -> dict[str, list[Statement]]:
    """Every role's identity-policy statements (inline and attached), by role logical id."""
    roles: dict[str, list[Statement]] = {}
    for stack in stacks.values():
        for logical, resource in stack.resources.items():
            props = resource["Properties"]
            if resource["Type"] == "AWS::IAM::Role":
                found = roles.setdefault(logical, [])
                for policy in props.get("Policies", []):
                    where = f"{stack.name}/{logical}/{policy['PolicyName']}"
                    found.extend(statements_of(policy["PolicyDocument"], where))
            elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
                for role in props.get("Roles", []):
                    role_logical = _logical_role(stacks, role)
                    where = f"{stack.name}/{logical}"
                    roles.setdefault(role_logical, []).extend(
                        statements_of(props["PolicyDocument"], where)
                    )
    return roles


def _logical_role(stacks: Mapping[str, Stack], role_name: str) -> str:
    for stack in stacks.values():
        for logical, resource in stack.resources.items():
            if resource["Type"] == "AWS::IAM::Role" and (
                resource["Properties"].get("RoleName") == role_name
            ):
                return logical
    raise AssertionError(f"policy attached to unknown role {role_name}")


def trust_statements(stacks: Mapping[str, Stack]) -> dict[str, list[Statement]]:
    """Every role's trust policy statements, by role logical id."""
    return {
        logical: statements_of(
            resource["Properties"]["AssumeRolePolicyDocument"], f"{stack.name}/{logical}/trust"
        )
        for stack in stacks.values()
        for logical, resource in stack.resources.items()
        if resource["Type"] == "AWS::IAM::Role"
    }


def resource_policy_statements(stacks: Mapping[str, Stack]) -> list[Statement]:
    """Key policies and bucket policies."""
    out = []
    for stack in stacks.values():
        for logical, resource in stack.resources.items():
            props = resource["Properties"]
            if resource["Type"] == "AWS::KMS::Key":
                out.extend(statements_of(props["KeyPolicy"], f"{stack.name}/{logical}/key-policy"))
            elif resource["Type"] == "AWS::S3::BucketPolicy":
                out.extend(statements_of(props["PolicyDocument"], f"{stack.name}/{logical}"))
    return out


def role_arn(stacks: Mapping[str, Stack], logical: str) -> str:
    """The ARN of a role of the stacks."""
    for stack in stacks.values():
        if logical in stack.resources:
            name = stack.resources[logical]["Properties"]["RoleName"]
            return f"arn:aws:iam::{ACCOUNT}:role/{name}"
    raise KeyError(logical)


# ---------------------------------------------------------------------- the reference data
@cache
def action_info(action: str) -> tuple[str, frozenset[str]]:
    """``(access level, condition keys)`` of ``service:Action``; KeyError if AWS has no such."""
    service, _, name = action.partition(":")
    entries = get_action_data(service.lower(), name).get(service.lower(), [])
    if not entries:
        raise KeyError(f"unknown action {action}")
    keys = frozenset(k.lower() for entry in entries for k in entry["condition_keys"])
    return str(entries[0]["access_level"]), keys


@cache
def _service_actions(service: str) -> tuple[str, ...]:
    return tuple(get_actions_for_service(service.lower()))


def expand(action: str) -> list[str]:
    """The real actions an action pattern names (``s3:*`` is every S3 action)."""
    if "*" not in action and "?" not in action:
        return [action]
    service = action.partition(":")[0]
    return [a for a in _service_actions(service) if fnmatch.fnmatchcase(a.lower(), action.lower())]


def _key_pattern(key: str) -> re.Pattern[str]:
    # aws:RequestTag/${TagKey}, kms:EncryptionContext:${EncryptionContextKey}, s3:...Tag/<key>
    parts = re.split(r"\$\{[^}]+\}|<[^>]+>", key)
    return re.compile(".+".join(re.escape(p) for p in parts), re.IGNORECASE)


def condition_key_known(key: str, actions: Iterable[str]) -> bool:
    """Whether ``key`` is global or documented for one of ``actions``."""
    if key.lower().startswith("aws:"):
        return True
    for action in actions:
        for real in expand(action):
            _, keys = action_info(real)
            if any(_key_pattern(k).fullmatch(key) for k in keys):
                return True
    return False


# ---------------------------------------------------------------------- checks
def _is_key_root_delegation(statement: Statement) -> bool:
    return (
        "key-policy" in statement.where
        and statement.effect == "Allow"
        and statement.actions == ("kms:*",)
        and isinstance(statement.principal, dict)
        and str(statement.principal.get("AWS", "")).endswith(":root")
        and not statement.condition
    )


def wildcard_action_problems(statements: Iterable[Statement]) -> list[str]:
    """Allow statements naming actions by pattern (or by exclusion) instead of by name.

    The one exception is the key policy's delegation to the account (``kms:*`` to root),
    which is what lets IAM policies grant key use at all. Deny statements may be broad.
    """
    problems = []
    for s in statements:
        if s.effect != "Allow" or _is_key_root_delegation(s):
            continue
        if s.not_actions or s.not_resources or s.not_principal is not None:
            problems.append(f"{s.where}: Allow with NotAction/NotResource/NotPrincipal")
        problems.extend(
            f"{s.where}: wildcard action {action}"
            for action in s.actions
            if "*" in action or "?" in action
        )
    return problems


def star_resource_problems(statements: Iterable[Statement]) -> list[str]:
    """Allow statements granting a Write, Permissions-management or Tagging action on "*"."""
    problems = []
    for s in statements:
        if s.effect != "Allow" or "*" not in s.resources or _is_key_root_delegation(s):
            continue
        if "key-policy" in s.where:
            continue  # in a key policy "*" means this key (checked by the key-policy tests)
        for action in s.actions:
            for real in expand(action):
                level, _ = action_info(real)
                if level in MUTATING_LEVELS:
                    problems.append(f'{s.where}: {real} ({level}) on Resource "*"')
    return problems


def unknown_action_problems(statements: Iterable[Statement]) -> list[str]:
    """Actions AWS does not have (a typo grants nothing and hides the intent)."""
    problems = []
    for s in statements:
        for action in s.actions + s.not_actions:
            if action == "*" or not expand(action):
                problems.append(f"{s.where}: {action} matches no action")
                continue
            for real in expand(action):
                try:
                    action_info(real)
                except KeyError:
                    problems.append(f"{s.where}: unknown action {real}")
    return problems


def condition_key_problems(statements: Iterable[Statement]) -> list[str]:
    """Condition keys that none of the statement's actions supports (they never match)."""
    problems: list[str] = []
    for s in statements:
        problems.extend(
            f"{s.where}: {operator} {key} applies to none of {s.actions}"
            for operator, keys in s.condition.items()
            for key in keys
            if not condition_key_known(key, s.actions)
        )
    return problems


def _condition_value(s: Statement, operator: str, key: str) -> Any:
    for op, keys in s.condition.items():
        if op.lower() == operator.lower():
            for k, v in keys.items():
                if k.lower() == key.lower():
                    return v
    return None


def pass_role_problems(statements: Iterable[Statement]) -> list[str]:
    """``iam:PassRole`` must name one role ARN and the one service it may be passed to."""
    problems = []
    for s in statements:
        if s.effect != "Allow" or not any(
            fnmatch.fnmatchcase("iam:passrole", a.lower()) for a in s.actions
        ):
            continue
        if len(s.resources) != 1 or any(ch in s.resources[0] for ch in "*?"):
            problems.append(f"{s.where}: iam:PassRole on {list(s.resources)}, not one role ARN")
        elif ":role/" not in s.resources[0]:
            problems.append(f"{s.where}: iam:PassRole on {s.resources[0]}, not a role")
        service = _condition_value(s, "StringEquals", "iam:PassedToService")
        if not isinstance(service, str) or not service.endswith(".amazonaws.com"):
            problems.append(f"{s.where}: iam:PassRole without StringEquals iam:PassedToService")
    return problems


def grant_problems(statements: Iterable[Statement]) -> list[str]:
    """Identity policies: CreateGrant only for AWS resources; no RevokeGrant, no ListRoles."""
    problems = []
    for s in statements:
        if s.effect != "Allow":
            continue
        actions = {a.lower() for action in s.actions for a in expand(action)}
        if "kms:creategrant" in actions and (
            str(_condition_value(s, "Bool", "kms:GrantIsForAWSResource")).lower() != "true"
        ):
            problems.append(f"{s.where}: kms:CreateGrant without kms:GrantIsForAWSResource")
        problems.extend(
            f"{s.where}: allows {forbidden}"
            for forbidden in ("kms:revokegrant", "iam:listroles")
            if forbidden in actions
        )
    return problems


def trust_problems(statements: Iterable[Statement], account: str) -> list[str]:
    """Every trust statement names who may assume the role, from this account only.

    A service principal needs ``aws:SourceAccount`` (and ``aws:SourceArn``) against confused
    deputies; an AWS principal must be this account, narrowed by ``aws:PrincipalArn``.
    """
    problems = []
    for s in statements:
        if s.effect != "Allow":
            continue
        principal = s.principal if isinstance(s.principal, dict) else {"AWS": s.principal}
        if "Service" in principal:
            if _condition_value(s, "StringEquals", "aws:SourceAccount") != account:
                problems.append(f"{s.where}: service trust without aws:SourceAccount = {account}")
            source_arn = _condition_value(s, "ArnLike", "aws:SourceArn") or _condition_value(
                s, "ArnEquals", "aws:SourceArn"
            )
            if not isinstance(source_arn, str) or f":{account}:" not in source_arn:
                problems.append(f"{s.where}: service trust without aws:SourceArn in {account}")
        if "AWS" in principal:
            problems.extend(
                f"{s.where}: trusts {who}, not this account"
                for who in _strings(principal["AWS"])
                if who != f"arn:aws:iam::{account}:root"
            )
            if not _condition_value(s, "ArnLike", "aws:PrincipalArn") and not _condition_value(
                s, "ArnEquals", "aws:PrincipalArn"
            ):
                problems.append(f"{s.where}: account trust without aws:PrincipalArn")
        if set(principal) - {"Service", "AWS"}:
            problems.append(f"{s.where}: unexpected principal {principal}")
    return problems


def execution_role_problems(statements: Iterable[Statement]) -> list[str]:
    """The SageMaker execution role is data plane only: no iam:*, no sagemaker:* at all."""
    problems = []
    for s in statements:
        if s.effect != "Allow":
            continue
        for action in s.actions:
            service = action.partition(":")[0].lower()
            if service in ("iam", "sts", "sagemaker", "organizations"):
                problems.append(f"{s.where}: execution role allows {action}")
    return problems


# Guardrails each SageMaker create must carry (iac-security.md §4.7): (operator, key, value);
# value None means "any value", "KEY" the key ARN.
GUARDRAILS: Mapping[str, Sequence[tuple[str, str, str | None]]] = {
    "sagemaker:createhyperparametertuningjob": (
        ("ArnEquals", "sagemaker:VolumeKmsKey", "KEY"),
        ("ArnEquals", "sagemaker:OutputKmsKey", "KEY"),
        ("Bool", "sagemaker:NetworkIsolation", "true"),
        ("Bool", "sagemaker:InterContainerTrafficEncryption", "true"),
        ("ForAllValues:StringLike", "sagemaker:InstanceTypes", None),
        ("Null", "sagemaker:InstanceTypes", "false"),
        ("StringEquals", "aws:RequestTag/Project", None),
        ("StringEquals", "aws:RequestTag/Environment", None),
    ),
    "sagemaker:createtrainingjob": (
        ("ArnEquals", "sagemaker:VolumeKmsKey", "KEY"),
        ("ArnEquals", "sagemaker:OutputKmsKey", "KEY"),
        ("Bool", "sagemaker:NetworkIsolation", "true"),
        ("StringEquals", "aws:RequestTag/Project", None),
    ),
    "sagemaker:createmodel": (
        ("Bool", "sagemaker:NetworkIsolation", "true"),
        ("StringEquals", "aws:RequestTag/Project", None),
        ("StringEquals", "aws:RequestTag/Environment", None),
    ),
    "sagemaker:createendpointconfig": (
        ("ArnEquals", "sagemaker:VolumeKmsKey", "KEY"),
        ("Null", "sagemaker:InstanceTypes", "false"),
        ("StringEquals", "aws:RequestTag/Project", None),
        ("StringEquals", "aws:RequestTag/Environment", None),
    ),
    "sagemaker:createendpoint": (
        ("StringEquals", "aws:RequestTag/Project", None),
        ("StringEquals", "aws:RequestTag/Environment", None),
    ),
    "sagemaker:addtags": (("StringEquals", "sagemaker:TaggingAction", None),),
}
VPC_GUARDRAILS = (
    ("ForAllValues:StringEquals", "sagemaker:VpcSubnets", None),
    ("ForAllValues:StringEquals", "sagemaker:VpcSecurityGroupIds", None),
    ("Null", "sagemaker:VpcSubnets", "false"),
    ("Null", "sagemaker:VpcSecurityGroupIds", "false"),
)
_VPC_ACTIONS = (
    "sagemaker:createhyperparametertuningjob",
    "sagemaker:createtrainingjob",
    "sagemaker:createmodel",
)


def guardrail_problems(
    statements: Iterable[Statement], key_arn: str, *, vpc: bool = False
) -> list[str]:
    """SageMaker create (and tag) Allows that lack one of their guardrail conditions."""
    problems = []
    for s in statements:
        if s.effect != "Allow":
            continue
        for action in s.actions:
            for real in expand(action):
                required = list(GUARDRAILS.get(real.lower(), ()))
                if vpc and real.lower() in _VPC_ACTIONS:
                    required += VPC_GUARDRAILS
                for operator, key, expected in required:
                    value = _condition_value(s, operator, key)
                    wanted = key_arn if expected == "KEY" else expected
                    if value is None or (
                        wanted is not None and str(value).lower() != wanted.lower()
                    ):
                        problems.append(f"{s.where}: {real} without {operator} {key} = {wanted}")
    return problems


# ---------------------------------------------------------------------- the evaluator
Context = Mapping[str, Any]


def _context_value(context: Context, key: str) -> Any:
    for k, v in context.items():
        if k.lower() == key.lower():
            return v
    return None


def _matches(operator: str, policy_value: str, value: str) -> bool:
    base = operator.removesuffix("IfExists")
    if base in ("StringEquals", "StringNotEquals"):
        return value == policy_value
    if base in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        return value.lower() == policy_value.lower()
    if base in ("StringLike", "StringNotLike"):
        return fnmatch.fnmatchcase(value, policy_value)
    if base in ("ArnEquals", "ArnLike", "ArnNotEquals", "ArnNotLike"):
        return value.startswith("arn:") and fnmatch.fnmatchcase(value, policy_value)
    if base == "Bool":
        return value.lower() == policy_value.lower()
    numeric = {
        "NumericEquals": lambda a, b: a == b,
        "NumericLessThan": lambda a, b: a < b,
        "NumericLessThanEquals": lambda a, b: a <= b,
        "NumericGreaterThan": lambda a, b: a > b,
        "NumericGreaterThanEquals": lambda a, b: a >= b,
    }
    if base in numeric:
        return bool(numeric[base](float(value), float(policy_value)))
    raise AssertionError(f"operator {operator} is not modelled")


def _holds(operator: str, wanted: list[str], value: str, *, negated: bool) -> bool:
    # Negated operators (StringNotEquals, ArnNotLike, ...) hold for a value that matches none
    # of the policy's values.
    hit = any(_matches(operator, w, value) for w in wanted)
    return not hit if negated else hit


def condition_holds(condition: Mapping[str, Mapping[str, Any]], context: Context) -> bool:
    """Whether every operator block of a Condition holds for ``context``."""
    for full_operator, keys in condition.items():
        qualifier, _, operator = full_operator.rpartition(":")
        negated = "Not" in operator.removesuffix("IfExists")
        for key, raw in keys.items():
            wanted = [str(v) for v in raw] if isinstance(raw, list) else [str(raw)]
            actual = _context_value(context, key)
            if operator == "Null":
                if (actual is None) != (wanted[0].lower() == "true"):
                    return False
                continue
            if actual is None:
                # A missing key: IfExists, ForAllValues (vacuously) and negated operators
                # ("the key is not matched") hold; the others do not (IAM User Guide,
                # "Condition operators").
                if operator.endswith("IfExists") or qualifier == "ForAllValues" or negated:
                    continue
                return False
            values = [str(v) for v in actual] if isinstance(actual, list) else [str(actual)]
            held = [_holds(operator, wanted, value, negated=negated) for value in values]
            # ForAllValues: every value of the request; otherwise one value (or ForAnyValue).
            ok = all(held) if qualifier == "ForAllValues" else any(held)
            if not ok:
                return False
    return True


def _applies(s: Statement, action: str, resource: str, context: Context) -> bool:
    if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in s.actions):
        return False
    if not any(fnmatch.fnmatchcase(resource, r) for r in s.resources):
        return False
    return condition_holds(s.condition, context)


def decide(
    statements: Iterable[Statement], action: str, resource: str, context: Context | None = None
) -> str:
    """``"allowed"``, ``"denied"`` (an explicit Deny) or ``"implicit deny"`` for one request."""
    ctx = context or {}
    found = list(statements)
    if any(s.effect == "Deny" and _applies(s, action, resource, ctx) for s in found):
        return "denied"
    if any(s.effect == "Allow" and _applies(s, action, resource, ctx) for s in found):
        return "allowed"
    return "implicit deny"


def all_statements(roles: Mapping[str, list[Statement]]) -> Iterator[Statement]:
    """Every statement of every role."""
    for found in roles.values():
        yield from found
