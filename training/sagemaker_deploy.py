"""Deploy a model artifact to a SageMaker endpoint: model, endpoint config, create or update.

The steps run in order and stop at the first failure with a :class:`DeployError` that names
the step; nothing that serves traffic changes before the endpoint itself is created or
updated, and a failed update leaves SageMaker's blue/green fleet on the old config. After
the endpoint is ``InService`` its config is checked: SageMaker reports ``InService`` after an
automatic rollback too, on the old config.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from training.errors import FraudscoreError
from training.sagemaker_requests import (
    SageMakerConfig,
    create_endpoint,
    create_endpoint_config,
    create_model,
    put_object,
    resource_name,
    update_endpoint,
)

_FAILED = ("Failed", "UpdateRollbackFailed", "OutOfService")
_SETTLED = ("InService", *_FAILED)


class DeployError(FraudscoreError):
    """A deployment step failed; ``step`` names it."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"deploy failed at {step}: {reason}")
        self.step = step
        self.reason = reason


@dataclass(frozen=True)
class Deployment:
    """What a deployment created and where the endpoint stands."""

    model_name: str
    endpoint_config_name: str
    endpoint_name: str
    updated: bool  # an existing endpoint was updated (blue/green), not created


def deploy(
    client: Any,
    config: SageMakerConfig,
    *,
    model_data_url: str,
    endpoint_name: str,
    when: datetime,
    wait: bool = True,
    poll_s: float = 30.0,
    timeout_s: float = 3600.0,
    progress: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Deployment:
    """Create model and endpoint config, then create or update ``endpoint_name`` and wait.

    ``client`` is a boto3 ``sagemaker`` client. Raises DeployError naming the failed step.
    """
    say = progress or (lambda _message: None)
    model = resource_name(config.name_prefix, "model", when)
    endpoint_config = resource_name(config.name_prefix, "config", when)
    _step("create_model", client.create_model, create_model(config, model, model_data_url))
    say(f"model {model} created")
    _step(
        "create_endpoint_config",
        client.create_endpoint_config,
        create_endpoint_config(config, endpoint_config, model),
    )
    say(f"endpoint config {endpoint_config} created")
    exists = _endpoint_exists(client, endpoint_name)
    if exists:
        request = update_endpoint(config, endpoint_name, endpoint_config)
        _step("update_endpoint", client.update_endpoint, request)
    else:
        request = create_endpoint(config, endpoint_name, endpoint_config)
        _step("create_endpoint", client.create_endpoint, request)
    say(f"endpoint {endpoint_name} {'updating' if exists else 'creating'}")
    deployment = Deployment(model, endpoint_config, endpoint_name, updated=exists)
    if wait:
        wait_in_service(
            client, deployment, poll_s=poll_s, timeout_s=timeout_s, progress=say, sleep=sleep
        )
    return deployment


def wait_in_service(
    client: Any,
    deployment: Deployment,
    *,
    poll_s: float = 30.0,
    timeout_s: float = 3600.0,
    progress: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Poll until the endpoint is ``InService`` on the deployed config; DeployError otherwise."""
    say = progress or (lambda _message: None)
    deadline = clock() + timeout_s
    last = ""
    while True:
        described = _step(
            "describe_endpoint",
            client.describe_endpoint,
            {"EndpointName": deployment.endpoint_name},
        )
        status = str(described.get("EndpointStatus", ""))
        if status != last:
            say(f"endpoint {deployment.endpoint_name}: {status}")
            last = status
        if status in _SETTLED:
            break
        if clock() >= deadline:
            raise DeployError("wait", f"still {status} after {timeout_s:.0f} s")
        sleep(poll_s)
    reason = described.get("FailureReason")
    if status in _FAILED:
        raise DeployError("wait", f"endpoint is {status}: {reason or 'no reason given'}")
    serving = described.get("EndpointConfigName")
    if serving != deployment.endpoint_config_name:
        raise DeployError(
            "verify",
            f"endpoint is InService on config {serving}, not {deployment.endpoint_config_name} "
            f"(rolled back: {reason or 'no reason given'})",
        )


def _endpoint_exists(client: Any, name: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        message = str(exc.response.get("Error", {}).get("Message", ""))
        if "Could not find endpoint" in message:
            return False
        raise DeployError("describe_endpoint", _describe(exc)) from None
    return True


def _step(step: str, call: Callable[..., Any], request: dict[str, Any]) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call(**request)
    except ClientError as exc:
        raise DeployError(step, _describe(exc)) from None
    except BotoCoreError as exc:
        raise DeployError(step, str(exc)) from None


def _describe(exc: Any) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'Unknown')}: {error.get('Message', '')}".rstrip(": ")


def artifact_request(config: SageMakerConfig, model_version: str, data: bytes) -> dict[str, Any]:
    """``PutObject`` of a registered model's ``model.tar.gz``, SSE-KMS under the key."""
    return put_object(config, config.s3_key("models", model_version, "model.tar.gz"), data)


def deployment_plan(
    config: SageMakerConfig, model_version: str, data: bytes, *, endpoint_name: str, when: datetime
) -> list[dict[str, Any]]:
    """Every request :func:`deploy_version` would send, in order, for ``--dry-run``."""
    upload = artifact_request(config, model_version, data)
    url = f"s3://{upload['Bucket']}/{upload['Key']}"
    return [
        {"operation": "PutObject", "request": {**upload, "Body": f"<{len(data)} bytes>"}},
        *endpoint_plan(config, url, endpoint_name=endpoint_name, when=when),
    ]


def endpoint_plan(
    config: SageMakerConfig, model_data_url: str, *, endpoint_name: str, when: datetime
) -> list[dict[str, Any]]:
    """The requests of :func:`deploy`, in order (create or update, whichever applies)."""
    model = resource_name(config.name_prefix, "model", when)
    endpoint_config = resource_name(config.name_prefix, "config", when)
    return [
        {"operation": "CreateModel", "request": create_model(config, model, model_data_url)},
        {
            "operation": "CreateEndpointConfig",
            "request": create_endpoint_config(config, endpoint_config, model),
        },
        {
            "operation": "CreateEndpoint",
            "when": "the endpoint does not exist yet",
            "request": create_endpoint(config, endpoint_name, endpoint_config),
        },
        {
            "operation": "UpdateEndpoint",
            "when": "the endpoint exists",
            "request": update_endpoint(config, endpoint_name, endpoint_config),
        },
    ]


def deploy_version(
    s3: Any,
    sagemaker: Any,
    config: SageMakerConfig,
    model_version: str,
    data: bytes,
    *,
    endpoint_name: str,
    when: datetime,
    wait: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Deployment:
    """Upload a registered model's artifact (SSE-KMS) and deploy it to ``endpoint_name``."""
    upload = artifact_request(config, model_version, data)
    _step("upload", s3.put_object, upload)
    return deploy(
        sagemaker,
        config,
        model_data_url=f"s3://{upload['Bucket']}/{upload['Key']}",
        endpoint_name=endpoint_name,
        when=when,
        wait=wait,
        progress=progress,
    )
