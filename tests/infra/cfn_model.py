"""The CloudFormation templates under ``infra/`` as data, and as three deployed stacks.

Templates are parsed with cfn-lint's decoder (so ``!Sub`` and friends become ``Fn::Sub``).
:func:`deploy` resolves the intrinsic functions of foundation, roles and service in order,
for given parameters, feeding each stack's exports to the next one's ``Fn::ImportValue``:
the result is what CloudFormation would hand to AWS, concrete enough to evaluate policies on.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from cfnlint.decode import decode_str

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
TEMPLATE_NAMES = ("foundation.yaml", "roles.yaml", "service.yaml")
STANDARD_TAGS = ("Project", "Environment", "Owner", "CostCenter", "DataClassification", "ManagedBy")

PARTITION = "aws"
REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK_NAMES = {
    "foundation.yaml": "fraudscore-foundation",
    "roles.yaml": "fraudscore-roles",
    "service.yaml": "fraudscore-service",
}


class _NoValue:
    """``AWS::NoValue``: removed from the list or mapping that holds it."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()
_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


def parse_template(text: str, *, where: str = "<template>") -> dict[str, Any]:
    """A template's text as plain dicts and lists; AssertionError on a parse error."""
    template, matches = decode_str(text)
    assert not matches, f"{where}: {[str(m) for m in matches]}"
    assert template is not None
    plain: dict[str, Any] = json.loads(json.dumps(template))
    return plain


@cache
def _template(name: str) -> str:
    return (INFRA / name).read_text(encoding="utf-8")


def load_template(name: str) -> dict[str, Any]:
    """``infra/<name>`` parsed (a fresh copy each call: tests may mutate it)."""
    return parse_template(_template(name), where=f"infra/{name}")


def load_templates() -> dict[str, dict[str, Any]]:
    """Every template under ``infra/`` by file name."""
    return {name: load_template(name) for name in TEMPLATE_NAMES}


@dataclass
class Stack:
    """One template resolved for one set of parameters."""

    name: str
    template: dict[str, Any]
    parameters: dict[str, Any]
    conditions: dict[str, bool]
    resources: dict[str, dict[str, Any]]  # only those whose Condition holds, fully resolved
    outputs: dict[str, Any]
    exports: dict[str, Any] = field(default_factory=dict)


class Resolver:
    """Evaluates the intrinsic functions of one template for given parameters and imports."""

    def __init__(
        self,
        template: Mapping[str, Any],
        parameters: Mapping[str, Any],
        imports: Mapping[str, Any],
        stack_name: str,
    ) -> None:
        self.template = template
        self.stack_name = stack_name
        self.imports = imports
        self.parameters: dict[str, Any] = {}
        declared = template.get("Parameters", {})
        unknown = set(parameters) - set(declared)
        assert not unknown, f"{stack_name}: unknown parameters {sorted(unknown)}"
        for name, spec in declared.items():
            if name in parameters:
                value = parameters[name]
            elif "Default" in spec:
                value = spec["Default"]
            else:
                raise AssertionError(f"{stack_name}: parameter {name} has no value")
            kind = spec.get("Type", "String")
            if kind == "CommaDelimitedList" or kind.startswith("List<"):
                if isinstance(value, str):
                    value = [part.strip() for part in value.split(",")] if value else [""]
            else:
                value = str(value)
            self.parameters[name] = value
        self._conditions: dict[str, bool] = {}

    # ------------------------------------------------------------------ conditions
    def condition(self, name: str) -> bool:
        """A named condition's value."""
        if name not in self._conditions:
            self._conditions[name] = self._condition_value(self.template["Conditions"][name])
        return self._conditions[name]

    def all_conditions(self) -> dict[str, bool]:
        """Every condition of the template, evaluated."""
        return {name: self.condition(name) for name in self.template.get("Conditions", {})}

    def _condition_value(self, node: Any) -> bool:
        (function, args), *rest = node.items()
        assert not rest, node
        if function == "Condition":
            return self.condition(args)
        if function == "Fn::Equals":
            left, right = (self.value(arg) for arg in args)
            return bool(left == right)
        if function == "Fn::Not":
            return not self._condition_value(args[0])
        if function == "Fn::Or":
            return any(self._condition_value(arg) for arg in args)
        if function == "Fn::And":
            return all(self._condition_value(arg) for arg in args)
        raise AssertionError(f"unsupported condition function {function}")

    # ------------------------------------------------------------------ values
    def value(self, node: Any) -> Any:
        """``node`` with every intrinsic function evaluated; AWS::NoValue removed."""
        if isinstance(node, list):
            values = [self.value(item) for item in node]
            return [value for value in values if value is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, args),) = node.items()
            function = _FUNCTIONS.get(key)
            if function is not None:
                return function(self, args)
        items = {key: self.value(item) for key, item in node.items()}
        return {key: item for key, item in items.items() if item is not NO_VALUE}

    def ref(self, name: str) -> Any:
        """``Ref``: a parameter, a pseudo parameter or a resource's primary identifier."""
        pseudo = {
            "AWS::Partition": PARTITION,
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::StackName": self.stack_name,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": NO_VALUE,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        resource = self.template["Resources"][name]
        return _resource_ref(self, name, resource)

    def get_att(self, name: str, attribute: str) -> Any:
        """``Fn::GetAtt`` for the attributes these templates use."""
        resource = self.template["Resources"][name]
        kind = resource["Type"]
        props = resource.get("Properties", {})
        arns = {
            "AWS::IAM::Role": lambda: (
                f"arn:{PARTITION}:iam::{ACCOUNT}:role/{self.value(props['RoleName'])}"
            ),
            "AWS::KMS::Key": lambda: f"arn:{PARTITION}:kms:{REGION}:{ACCOUNT}:key/{name.lower()}",
            "AWS::S3::Bucket": lambda: f"arn:{PARTITION}:s3:::{self.ref(name)}",
            "AWS::Logs::LogGroup": lambda: (
                f"arn:{PARTITION}:logs:{REGION}:{ACCOUNT}:log-group:{self.ref(name)}:*"
            ),
            "AWS::ECR::Repository": lambda: (
                f"arn:{PARTITION}:ecr:{REGION}:{ACCOUNT}:repository/{self.ref(name)}"
            ),
        }
        if attribute == "Arn" and kind in arns:
            return arns[kind]()
        if kind == "AWS::ECS::Service" and attribute == "Name":
            return self.value(props["ServiceName"])
        return f"<{name}.{attribute}>"

    def sub(self, text: str, variables: Mapping[str, Any]) -> str:
        """``Fn::Sub`` of one string."""

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                value = variables[name]
            elif "." in name and not name.startswith("AWS::"):
                resource, attribute = name.split(".", 1)
                value = self.get_att(resource, attribute)
            else:
                value = self.ref(name)
            assert isinstance(value, str), f"${{{name}}} is not a string: {value!r}"
            return value

        return _SUB_VARIABLE.sub(replace, text).replace("${!", "${")


def _resource_ref(resolver: Resolver, name: str, resource: Mapping[str, Any]) -> Any:
    props = resource.get("Properties", {})
    names = {
        "AWS::S3::Bucket": "BucketName",
        "AWS::Logs::LogGroup": "LogGroupName",
        "AWS::IAM::Role": "RoleName",
        "AWS::ECR::Repository": "RepositoryName",
        "AWS::ECS::Cluster": "ClusterName",
        "AWS::KMS::Alias": "AliasName",
    }
    prop = names.get(resource["Type"])
    if prop is not None and prop in props:
        return resolver.value(props[prop])
    return f"<{name}>"


def _sub(resolver: Resolver, args: Any) -> str:
    if isinstance(args, str):
        return resolver.sub(args, {})
    text, variables = args
    return resolver.sub(text, {k: resolver.value(v) for k, v in variables.items()})


def _if(resolver: Resolver, args: Any) -> Any:
    name, when_true, when_false = args
    return resolver.value(when_true if resolver.condition(name) else when_false)


def _import(resolver: Resolver, args: Any) -> Any:
    name = resolver.value(args)
    assert name in resolver.imports, f"{resolver.stack_name}: no stack exports {name!r}"
    return resolver.imports[name]


def _find_in_map(resolver: Resolver, args: Any) -> Any:
    mapping, first, second = (resolver.value(arg) for arg in args)
    return resolver.template["Mappings"][mapping][first][second]


def _join(resolver: Resolver, args: Any) -> str:
    separator, items = args
    return str(separator).join(str(item) for item in resolver.value(items))


def _select(resolver: Resolver, args: Any) -> Any:
    index, items = args
    return resolver.value(items)[int(resolver.value(index))]


def _split(resolver: Resolver, args: Any) -> list[str]:
    separator, text = args
    return str(resolver.value(text)).split(separator)


def _get_att(resolver: Resolver, args: Any) -> Any:
    name, attribute = args.split(".", 1) if isinstance(args, str) else args
    return resolver.get_att(name, attribute)


_FUNCTIONS: dict[str, Callable[[Resolver, Any], Any]] = {
    "Ref": lambda resolver, args: resolver.ref(args),
    "Fn::Sub": _sub,
    "Fn::If": _if,
    "Fn::ImportValue": _import,
    "Fn::FindInMap": _find_in_map,
    "Fn::Join": _join,
    "Fn::Select": _select,
    "Fn::Split": _split,
    "Fn::GetAtt": _get_att,
}


def resolve(
    name: str,
    template: Mapping[str, Any],
    parameters: Mapping[str, Any],
    imports: Mapping[str, Any],
) -> Stack:
    """One template as CloudFormation would deploy it with these parameters and imports."""
    stack_name = STACK_NAMES.get(name, name)
    resolver = Resolver(template, parameters, imports, stack_name)
    conditions = resolver.all_conditions()
    resources = {}
    for logical, resource in template["Resources"].items():
        condition = resource.get("Condition")
        if condition is not None and not conditions[condition]:
            continue
        resolved = copy.deepcopy(dict(resource))
        resolved["Properties"] = resolver.value(resource.get("Properties", {}))
        resources[logical] = resolved
    outputs, exports = {}, {}
    for key, output in template.get("Outputs", {}).items():
        outputs[key] = resolver.value(output["Value"])
        if "Export" in output:
            exports[resolver.value(output["Export"]["Name"])] = outputs[key]
    return Stack(
        stack_name, dict(template), resolver.parameters, conditions, resources, outputs, exports
    )


# Parameters every stack needs (no defaults), then the two scenarios the tests deploy.
REQUIRED = {
    "foundation.yaml": {
        "Environment": "prod",
        "KeyAdminRoleArn": f"arn:aws:iam::{ACCOUNT}:role/key-admin",
        "DeployRoleArn": f"arn:aws:iam::{ACCOUNT}:role/cloudformation-deploy",
        "Owner": "fraud-platform",
        "CostCenter": "cc-4711",
    },
    "roles.yaml": {"Environment": "prod", "Owner": "fraud-platform", "CostCenter": "cc-4711"},
    "service.yaml": {
        "Environment": "prod",
        "Owner": "fraud-platform",
        "CostCenter": "cc-4711",
        "VpcId": "vpc-0a1b2c3d",
        "ServiceSubnetIds": "subnet-0a1,subnet-0b2",
        "LoadBalancerSubnetIds": "subnet-0c3,subnet-0d4",
        "CertificateArn": f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/0f1e2d3c",
        "ImageUri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fraudscore-prod:0.1.0",
    },
}
SCENARIOS: dict[str, dict[str, dict[str, Any]]] = {
    # Every optional feature off: no VPC for SageMaker, no extra caller, no secrets.
    "defaults": {},
    # Every optional feature on, so every Fn::If branch is deployed in one of the two.
    "everything": {
        "foundation.yaml": {"CreateTrainingJobsLogGroup": "false"},
        "roles.yaml": {
            "SageMakerVpcId": "vpc-0a1b2c3d",
            "SageMakerSubnetIds": "subnet-0a1,subnet-0b2",
            "SageMakerSecurityGroupIds": "sg-0sagemaker",
            "ControlPlaneCallerArn": f"arn:aws:iam::{ACCOUNT}:role/ci-deploy",
        },
        "service.yaml": {
            "Backend": "sagemaker",
            "ApiKeysSecretArn": (
                f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:fraudscore/prod/api-keys-AbCdEf"
            ),
            "EnableEndpointAutoScaling": "true",
        },
    },
}


def deploy(
    scenario: str, templates: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Stack]:
    """The three stacks of a scenario, in deploy order, each importing the previous exports."""
    sources = templates if templates is not None else load_templates()
    exports: dict[str, Any] = {}
    stacks = {}
    for name in TEMPLATE_NAMES:
        parameters = {**REQUIRED[name], **SCENARIOS[scenario].get(name, {})}
        stack = resolve(name, sources[name], parameters, exports)
        duplicate = set(stack.exports) & set(exports)
        assert not duplicate, f"exported twice: {duplicate}"
        exports.update(stack.exports)
        stacks[name] = stack
    return stacks
