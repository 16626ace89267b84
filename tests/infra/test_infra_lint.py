"""The linters, offline: cfn-lint on the templates, hadolint on the Dockerfile, the compose file
against the Compose Specification's JSON schema kept in ``infra/schema/``.

Each linter is also shown a broken input, so a linter that silently checks nothing fails here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.infra.cfn_model import INFRA, ROOT, TEMPLATE_NAMES

COMPOSE_SCHEMA = INFRA / "schema" / "compose-spec.json"


def tool(name: str) -> str:
    """A console script of the project's environment (installed with the dev extras)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'", pytrace=False)
    return found


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, check=False
    )


# ---------------------------------------------------------------------- cfn-lint
def test_cfn_lint_is_clean_on_every_template() -> None:
    # --include-checks I: the informational rules too (e.g. I3011, stateful resources retained).
    result = run(
        tool("cfn-lint"), "--include-checks", "I", "--", *(INFRA / n for n in TEMPLATE_NAMES)
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_catches_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        """AWSTemplateFormatVersion: "2010-09-09"
Resources:
  Config:
    Type: AWS::SageMaker::EndpointConfig
    Properties:
      KmsKeyID: alias/x
      ProductionVariants:
        - {VariantName: a, ModelName: m, InitialInstanceCount: 1, InstanceType: ml.m5.larg}
  Role:
    Type: AWS::IAM::Role
    Properties:
      AssumeRolePolicyDocument:
        Statement:
          - {Effect: Allow, Principal: {Service: sagemaker.amazonaws.com}, Action: sts:AssumeRole}
      Policies:
        - PolicyName: p
          PolicyDocument:
            Statement: [{Effect: Allow, Action: sagemaker:CreateEndpont, Resource: "*"}]
""",
        encoding="utf-8",
    )
    result = run(tool("cfn-lint"), "--", broken)
    assert result.returncode != 0
    assert "KmsKeyID" in result.stdout  # unknown property (the key is KmsKeyId)
    assert "ml.m5.larg" in result.stdout  # not an instance type
    assert "W3037" in result.stdout  # not an action (reported lower-cased)
    assert "createendpont" in result.stdout.lower()


# ---------------------------------------------------------------------- hadolint
def test_hadolint_is_clean_on_the_dockerfile() -> None:
    result = run(tool("hadolint"), ROOT / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y gcc\n"
        "RUN pip install fraudscore\nCMD fraudscore serve\n",
        encoding="utf-8",
    )
    result = run(tool("hadolint"), careless)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013", "DL3025"):
        assert rule in result.stdout, rule


# ---------------------------------------------------------------------- compose schema
def _compose_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(document: Any) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in _compose_validator().iter_errors(document)
    ]


def _compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def test_compose_file_follows_the_compose_specification() -> None:
    assert _errors(_compose()) == []


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("services", "fraudscore", "ports"), "127.0.0.1:8000:8000"),  # must be a list
        (("services", "fraudscore", "volumes"), "registry:/var/lib/fraudscore"),
        (("services", "fraudscore", "cap_drop"), {"all": True}),
        (("services", "fraudscore", "restart_policy"), "always"),  # no such key
    ],
)
def test_compose_schema_catches_mistakes(where: tuple[str, ...], value: Any) -> None:
    document = _compose()
    node = document
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = value
    assert _errors(document) != []
