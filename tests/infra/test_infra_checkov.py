"""checkov on the templates and the Dockerfile: no failed check, every skip justified.

checkov pins an old boto3, so it lives in a virtual environment of its own under
``var/tools/`` (git-ignored), made on the first run from the package index and reused after.
Without the index that first run fails here, loudly: a security scan that did not run must not
look like one that passed. The scan itself runs offline (no guideline download, no version
check, no platform mapping).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra.cfn_model import INFRA, ROOT, TEMPLATE_NAMES, load_template

# A scanner upgrade brings new checks: bump this on purpose, not by accident.
CHECKOV = "checkov==3.3.30"
TOOLS = ROOT / "var" / "tools"
OFFLINE = {
    "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
    "BC_SKIP_MAPPING": "TRUE",
    "BC_API_KEY": "",
}

# Installing on a fresh machine takes a minute or two; the scan a few seconds.
pytestmark = pytest.mark.timeout(1200)


def _bin(environment: Path, name: str) -> Path:
    return environment / "bin" / name


@pytest.fixture(scope="session")
def checkov() -> Path:
    """The checkov executable of its own environment, installed once and then reused."""
    TOOLS.mkdir(parents=True, exist_ok=True)
    # Two test runs at once (a developer's and make test) must not both build it; closing the
    # file releases the lock.
    with (TOOLS / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _installed(TOOLS / CHECKOV.replace("==", "-"))


def _installed(environment: Path) -> Path:
    marker = environment / ".installed"
    executable = _bin(environment, "checkov")
    if marker.is_file() and marker.read_text(encoding="utf-8") == CHECKOV and executable.exists():
        return executable
    shutil.rmtree(environment, ignore_errors=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(environment)
    try:
        install = subprocess.run(
            [
                str(_bin(environment, "python")),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                CHECKOV,
            ],
            capture_output=True,
            text=True,
            timeout=1100,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"installing {CHECKOV} took too long", pytrace=False)
    if install.returncode != 0 or not executable.exists():
        tail = "\n".join((install.stdout + install.stderr).splitlines()[-20:])
        pytest.fail(
            f"could not install {CHECKOV} into {environment} (needs the package index once):\n"
            f"{tail}",
            pytrace=False,
        )
    marker.write_text(CHECKOV, encoding="utf-8")
    return executable


BAD_TEMPLATE = """AWSTemplateFormatVersion: "2010-09-09"
Resources:
  Logs:
    Type: AWS::Logs::LogGroup
    Properties:
      LogGroupName: /bad
  Key:
    Type: AWS::KMS::Key
    Properties:
      KeyPolicy:
        Statement:
          - {Effect: Allow, Principal: "*", Action: "kms:*", Resource: "*"}
"""


@pytest.fixture(scope="session")
def scan(checkov: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One offline checkov run over the templates, the Dockerfile and a known-bad template."""
    bad = tmp_path_factory.mktemp("checkov") / "bad.yaml"
    bad.write_text(BAD_TEMPLATE, encoding="utf-8")
    files = [*(INFRA / name for name in TEMPLATE_NAMES), ROOT / "Dockerfile", bad]
    args = [str(checkov), "--framework", "cloudformation", "dockerfile"]
    for path in files:
        args += ["-f", str(path)]
    args += ["--skip-download", "--compact", "--output", "json"]
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, **OFFLINE},
        cwd=ROOT,
    )
    # Exit status 1 is "failed checks" (the bad template has some); anything else is a crash.
    assert result.returncode in (0, 1), result.stderr[-4000:]
    reports = json.loads(result.stdout)
    if isinstance(reports, dict):
        reports = [reports]
    checks: dict[str, list[dict[str, Any]]] = {"passed": [], "failed": [], "skipped": []}
    for report in reports:
        for kind in checks:
            checks[kind] += report["results"][f"{kind}_checks"]
    return {"checks": checks, "bad": bad, "stderr": result.stderr}


def _ours(checks: list[dict[str, Any]], bad: Path) -> Iterator[dict[str, Any]]:
    return (c for c in checks if Path(c["file_abs_path"]) != bad)


def _describe(check: dict[str, Any]) -> str:
    return f"{check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}"


def test_checkov_finds_nothing_in_the_templates_and_the_dockerfile(scan: dict[str, Any]) -> None:
    checks, bad = scan["checks"], scan["bad"]
    assert [_describe(c) for c in _ours(checks["failed"], bad)] == []
    scanned = {Path(c["file_abs_path"]).name for c in _ours(checks["passed"], bad)}
    assert scanned == {*TEMPLATE_NAMES, "Dockerfile"}
    assert sum(1 for _ in _ours(checks["passed"], bad)) > 100


def test_checkov_still_fails_a_bad_template(scan: dict[str, Any]) -> None:
    failed = {
        c["check_id"] for c in scan["checks"]["failed"] if c["file_abs_path"] == str(scan["bad"])
    }
    # Log group without KMS key or retention; key without rotation, open to everyone.
    assert {"CKV_AWS_158", "CKV_AWS_66", "CKV_AWS_7", "CKV_AWS_33"} <= failed


def _declared_skips() -> dict[tuple[str, str], str]:
    """Every checkov skip in the templates' resource Metadata, with its justification."""
    skips = {}
    for name in TEMPLATE_NAMES:
        for logical, resource in load_template(name)["Resources"].items():
            for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
                skips[(skip["id"], f"{resource['Type']}.{logical}")] = str(skip.get("comment", ""))
    return skips


def test_every_skip_is_declared_with_a_reason() -> None:
    for (check, resource), comment in _declared_skips().items():
        assert len(comment.split()) >= 8, f"{check} on {resource}: say why it does not apply"
    # Skips belong in the templates, next to the resource, never in the Dockerfile or flags.
    assert "checkov:skip" not in (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_checkov_skipped_exactly_the_declared_checks(scan: dict[str, Any]) -> None:
    skipped = {
        (c["check_id"], c["resource"]) for c in _ours(scan["checks"]["skipped"], scan["bad"])
    }
    assert skipped == set(_declared_skips()), "a skip was not used (remove it) or not declared"


def test_the_scan_ran_offline(scan: dict[str, Any]) -> None:
    # checkov logs a connection error when it tries to reach its platform or the index.
    for marker in ("MaxRetryError", "ConnectionError", "Failed to establish"):
        assert marker not in scan["stderr"]
