"""AWS Lambda entry point that deploys a model artifact to an endpoint.

For accounts where only a dedicated role may create SageMaker endpoints (as in the original
proof of concept): the Lambda runs under that role and calls the same deployment code as
``fraudscore``. The event names the artifact and the endpoint; everything else comes from
the ``FRAUDSCORE_*`` environment of the function.

Event: ``{"model_data_url": "s3://…/model.tar.gz", "endpoint_name": "fraudscore",
"wait": true, "timeout_s": 840}``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from training.sagemaker_deploy import deploy
from training.sagemaker_requests import SageMakerConfigError, config_from_environment

# Lambda stops a function after at most 15 minutes; stop waiting a minute before that.
DEFAULT_TIMEOUT_S = 840.0


def handler(
    event: dict[str, Any],
    context: Any,  # noqa: ARG001 (the Lambda runtime passes it)
    *,
    client: Any = None,
) -> dict[str, Any]:
    """Deploy and return the names created; raises on any failure (Lambda reports it)."""
    for key in ("model_data_url", "endpoint_name"):
        if not isinstance(event.get(key), str) or not event[key]:
            raise SageMakerConfigError(f"event field '{key}' is required")
    config = config_from_environment(os.environ)
    if client is None:
        import boto3

        client = boto3.client("sagemaker", region_name=config.region)
    deployment = deploy(
        client,
        config,
        model_data_url=event["model_data_url"],
        endpoint_name=event["endpoint_name"],
        when=datetime.now(UTC),
        wait=bool(event.get("wait", True)),
        timeout_s=float(event.get("timeout_s", DEFAULT_TIMEOUT_S)),
        poll_s=15.0,
    )
    return {
        "model_name": deployment.model_name,
        "endpoint_config_name": deployment.endpoint_config_name,
        "endpoint_name": deployment.endpoint_name,
        "updated": deployment.updated,
    }
