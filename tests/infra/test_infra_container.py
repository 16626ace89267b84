"""The Dockerfile, .dockerignore and docker-compose.yml say what the platform expects.

No test needs Docker. The compose file's AWS profile is played without it: its seed script
runs against a moto server on 127.0.0.1 with the profile's settings, then ``fraudscore serve``
serves the seeded S3 registry, as the ``fraudscore-aws`` service does.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from tests.infra.cfn_model import INFRA, ROOT

DOCKERFILE = ROOT / "Dockerfile"


# ---------------------------------------------------------------------- Dockerfile
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, in order."""
    found: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, args))
    return found


def dockerfile_problems(text: str) -> list[str]:
    """What keeps a Dockerfile from being the image the platform expects."""
    problems = []
    built = stages(text)
    if len(built) < 2:
        problems.append("not a multi-stage build")
    for stage in built:
        image = stage[0][1].split()[0]
        if not re.fullmatch(r"python:\d+\.\d+\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image):
            problems.append(f"base {image} is not a pinned slim image")
    final = built[-1] if built else []
    final_text = " ".join(f"{k} {a}" for k, a in final)
    users = [a for k, a in final if k == "USER"]
    if not users or users[-1].split(":")[0] in ("0", "root"):
        problems.append("the final stage runs as root")
    if not any(k == "HEALTHCHECK" and "/healthz" in a for k, a in final):
        problems.append("no HEALTHCHECK on /healthz")
    problems.extend(
        f"the final stage has {build_tool}"
        for build_tool in ("gcc", "build-essential", "apt-get install", ".[dev]", "'.[dev]'")
        if build_tool in final_text
    )
    labels = " ".join(a for k, a in final if k == "LABEL")
    problems.extend(
        f"no org.opencontainers.image.{label} label"
        for label in ("title", "description", "version", "revision", "created", "licenses")
        if f"org.opencontainers.image.{label}=" not in labels
    )
    env = " ".join(a for k, a in final if k == "ENV")
    if "FRAUDSCORE_HOST=0.0.0.0" not in env:
        problems.append("FRAUDSCORE_HOST is not 0.0.0.0 (the service would listen on loopback)")
    return problems


def test_dockerfile_builds_the_expected_image() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert dockerfile_problems(text) == []
    final = stages(text)[-1]
    copies = [a for k, a in final if k == "COPY"]
    assert copies == ["--from=build /opt/fraudscore /opt/fraudscore"]  # the venv, nothing else
    (cmd,) = [json.loads(a) for k, a in final if k == "CMD"]
    assert cmd[:2] == ["/bin/sh", "-c"]
    assert "exec fraudscore serve --demo-model" in cmd[2]  # the embedded default
    assert "*://*) exec fraudscore serve ;;" in cmd[2]  # an s3:// registry is served as is
    (healthcheck,) = [a for k, a in final if k == "HEALTHCHECK"]
    assert "FRAUDSCORE_PORT" in healthcheck  # follows the port set at run time


def test_dockerfile_check_catches_a_single_stage_root_image() -> None:
    careless = (
        "FROM python:3.11\nRUN apt-get install -y gcc\nRUN pip install '.[dev]'\n"
        "CMD fraudscore serve\n"
    )
    assert dockerfile_problems(careless) == [
        "not a multi-stage build",
        "base python:3.11 is not a pinned slim image",
        "the final stage runs as root",
        "no HEALTHCHECK on /healthz",
        "the final stage has gcc",
        "the final stage has apt-get install",
        "the final stage has .[dev]",
        "the final stage has '.[dev]'",
        "no org.opencontainers.image.title label",
        "no org.opencontainers.image.description label",
        "no org.opencontainers.image.version label",
        "no org.opencontainers.image.revision label",
        "no org.opencontainers.image.created label",
        "no org.opencontainers.image.licenses label",
        "FRAUDSCORE_HOST is not 0.0.0.0 (the service would listen on loopback)",
    ]


def test_build_context_holds_exactly_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*"  # everything out, then only what the package needs back in
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    packages = {"service", "training"}
    assert allowed == {"pyproject.toml", project["readme"], *packages}
    copied = {
        a.split()[0]
        for k, a in instructions(DOCKERFILE.read_text(encoding="utf-8"))
        if k == "COPY" and not a.startswith("--from")
    }
    assert copied == {"pyproject.toml", "service", "training"}


# ---------------------------------------------------------------------- docker-compose.yml
def _compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def test_compose_serves_the_embedded_default_on_a_named_volume() -> None:
    compose = _compose()
    service = compose["services"]["fraudscore"]
    assert "profiles" not in service  # what "docker compose up" starts
    assert service["ports"] == ["127.0.0.1:8000:8000"]
    (volume,) = service["volumes"]
    name, target = volume.split(":")
    assert name in compose["volumes"]
    # The image's registry lives on the volume (and so does the demo data it is trained on).
    env = " ".join(a for k, a in instructions(DOCKERFILE.read_text()) if k == "ENV")
    assert f"FRAUDSCORE_REGISTRY={target}/registry" in env
    assert "/healthz" in " ".join(service["healthcheck"]["test"])
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]


def test_compose_aws_profile_is_optional_and_pinned() -> None:
    services = _compose()["services"]
    optional = {name for name, s in services.items() if s.get("profiles") == ["aws"]}
    assert optional == {"moto", "moto-seed", "fraudscore-aws"}
    image = services["moto"]["image"]
    assert re.fullmatch(r"motoserver/moto:\d+\.\d+\.\d+", image), image
    aws = services["fraudscore-aws"]
    assert aws["environment"]["FRAUDSCORE_REGISTRY"].startswith("s3://")
    assert aws["depends_on"] == {"moto-seed": {"condition": "service_completed_successfully"}}
    assert services["moto-seed"]["depends_on"] == {"moto": {"condition": "service_healthy"}}
    (mount,) = services["moto-seed"]["volumes"]
    source, target, mode = mount.split(":")
    assert (ROOT / source).resolve() == INFRA / "local"
    assert mode == "ro"
    (script,) = services["moto-seed"]["command"][1:]
    assert (INFRA / "local" / Path(script).relative_to(target)).is_file()
    # Published ports of every service stay on the loopback interface.
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


# ---------------------------------------------------------------------- the AWS profile, played
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def moto_server() -> Iterator[str]:
    """A moto server on 127.0.0.1 (the compose profile's "moto" service)."""
    from tests.aws_fakes import moto_server_on_loopback

    with moto_server_on_loopback() as url:
        yield url


def _profile_environment(endpoint: str) -> dict[str, str]:
    """The compose profile's environment, pointed at the test's moto server."""
    profile = _compose()["services"]["fraudscore-aws"]["environment"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUDSCORE_", "AWS_"))}
    env.update({k: str(v) for k, v in profile.items()})
    env["AWS_ENDPOINT_URL"] = endpoint
    env["SEED_ROWS"] = "4000"
    env["PYTHONPATH"] = str(ROOT)
    return env


class _Sent(Exception):
    """Raised instead of sending a request: the test only wants its URL."""


def test_aws_profile_reaches_s3_on_the_moto_host_by_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # In compose, S3 is "http://moto:5000"; "<bucket>.moto" (virtual-host addressing) would not
    # resolve. botocore uses path-style addressing for a custom endpoint: keep it that way.
    for key, value in _compose()["services"]["fraudscore-aws"]["environment"].items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_CONFIG_FILE", raising=False)
    client = boto3.session.Session().client("s3")  # as training/registry.py builds it
    urls: list[str] = []

    def capture(request: Any, **_: Any) -> None:
        urls.append(request.url)
        raise _Sent

    client.meta.events.register("before-send", capture)
    with pytest.raises(_Sent):
        client.head_object(Bucket="fraudscore-local", Key="registry/ACTIVE")
    assert urls == ["http://moto:5000/fraudscore-local/registry/ACTIVE"]


def test_aws_profile_seeds_and_serves_an_s3_registry(moto_server: str, tmp_path: Path) -> None:
    env = _profile_environment(moto_server)
    seed = [sys.executable, str(INFRA / "local" / "seed_moto.py")]
    first = subprocess.run(seed, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "trained the demo model" in first.stdout
    again = subprocess.run(seed, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already has an active model" in again.stdout

    bucket = env["FRAUDSCORE_REGISTRY"].removeprefix("s3://").split("/")[0]
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    active = s3.get_object(Bucket=bucket, Key="registry/ACTIVE")
    assert active["ServerSideEncryption"] == "aws:kms"

    port = _free_port()
    serve_env = {**env, "FRAUDSCORE_HOST": "127.0.0.1", "FRAUDSCORE_PORT": str(port)}
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        env=serve_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}", server, tmp_path / "serve.log")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/score",
            data=json.dumps(
                {
                    "transaction_id": "tx-42",
                    "amount": 4250.0,
                    "tran_code": "05",
                    "features": {
                        "channel": "ecom",
                        "hour": 3,
                        "km_from_home": 820,
                        "tx_last_24h": 9,
                        "merchant_risk": 0.7,
                    },
                }
            ).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
            decision = json.loads(response.read())
        assert decision["transaction_id"] == "tx-42"
        assert decision["backend"] == "local"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)
        log.close()


def _wait_ready(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    """Until /readyz answers 200 (a model is loaded); fails with the server's output."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"serve exited {server.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2):  # noqa: S310 (loopback)
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    pytest.fail(f"not ready within 60 s:\n{log.read_text()[-4000:]}")
