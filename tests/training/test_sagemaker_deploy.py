"""Deploying to an endpoint: moto for create (emulated SageMaker control plane), moto with
an added ``update_endpoint`` for blue/green updates, Stubber for failures and rollbacks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws
from moto.sagemaker.exceptions import ValidationError as MotoValidationError
from moto.sagemaker.responses import SageMakerResponse

from training import lambda_handler
from training.sagemaker_deploy import DeployError, Deployment, deploy, wait_in_service
from training.sagemaker_requests import SageMakerConfigError, config_from_environment

REGION = "us-east-1"
ENV = {
    "FRAUDSCORE_AWS_REGION": REGION,
    "FRAUDSCORE_S3_BUCKET": "fraudscore-data",
    "FRAUDSCORE_S3_PREFIX": "fraudscore",
    "FRAUDSCORE_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/fraudscore-execution",
    "FRAUDSCORE_KMS_KEY_ID": "arn:aws:kms:us-east-1:123456789012:key/abcd",
    "FRAUDSCORE_TAGS": json.dumps({"Project": "fraudscore", "Environment": "test"}),
}
URL = "s3://fraudscore-data/fraudscore/output/job-1/output/model.tar.gz"
WHEN = datetime(2026, 11, 28, 10, 15, 0, tzinfo=UTC)


pytestmark = pytest.mark.usefixtures("fake_aws")


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def sagemaker() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("sagemaker", region_name=REGION)


def _update_endpoint(self: SageMakerResponse) -> str:
    """moto lacks UpdateEndpoint: switch the endpoint to the new config (a successful update)."""
    name = self._get_param("EndpointName")
    config = self._get_param("EndpointConfigName")
    if config not in self.sagemaker_backend.endpoint_configs:
        raise MotoValidationError(message=f"Could not find endpoint configuration '{config}'.")
    endpoint = self.sagemaker_backend.endpoints[name]
    endpoint.endpoint_config_name = config
    return json.dumps({"EndpointArn": endpoint.arn})


def test_a_first_deploy_creates_everything_tagged_and_waits(sagemaker: Any) -> None:
    config = config_from_environment(ENV)
    messages: list[str] = []
    done = deploy(
        sagemaker, config, model_data_url=URL, endpoint_name="fraudscore", when=WHEN,
        progress=messages.append, sleep=lambda _: None,
    )  # fmt: skip
    assert done == Deployment(
        "fraudscore-model-20261128-101500", "fraudscore-config-20261128-101500", "fraudscore", False
    )
    endpoint = sagemaker.describe_endpoint(EndpointName="fraudscore")
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == done.endpoint_config_name
    endpoint_config = sagemaker.describe_endpoint_config(
        EndpointConfigName=done.endpoint_config_name
    )
    assert endpoint_config["KmsKeyId"] == ENV["FRAUDSCORE_KMS_KEY_ID"]
    model = sagemaker.describe_model(ModelName=done.model_name)
    assert model["PrimaryContainer"]["ModelDataUrl"] == URL
    for arn in (endpoint["EndpointArn"], endpoint_config["EndpointConfigArn"], model["ModelArn"]):
        tags = {t["Key"]: t["Value"] for t in sagemaker.list_tags(ResourceArn=arn)["Tags"]}
        assert tags["Project"] == "fraudscore"
        assert tags["Environment"] == "test"
        assert "ResourceName" in tags
    assert "endpoint fraudscore: InService" in messages


def test_a_second_deploy_updates_the_endpoint(
    sagemaker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SageMakerResponse, "update_endpoint", _update_endpoint, raising=False)
    config = config_from_environment(ENV)
    deploy(sagemaker, config, model_data_url=URL, endpoint_name="fraudscore", when=WHEN)
    later = datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC)
    second = deploy(sagemaker, config, model_data_url=URL, endpoint_name="fraudscore", when=later)
    assert second.updated is True
    serving = sagemaker.describe_endpoint(EndpointName="fraudscore")["EndpointConfigName"]
    assert serving == second.endpoint_config_name


def test_a_rolled_back_update_is_a_failure_even_though_the_endpoint_is_in_service() -> None:
    client = boto3.client("sagemaker", region_name=REGION)
    deployment = Deployment("m-2", "cfg-2", "fraudscore", updated=True)
    with Stubber(client) as stubber:
        for status in ("Updating", "RollingBack", "InService"):
            stubber.add_response(
                "describe_endpoint",
                {
                    "EndpointName": "fraudscore",
                    "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/fraudscore",
                    "EndpointConfigName": "cfg-1",
                    "EndpointStatus": status,
                    "FailureReason": "alarm fraudscore-invocation-5xx fired",
                    "CreationTime": WHEN,
                    "LastModifiedTime": WHEN,
                },
                {"EndpointName": "fraudscore"},
            )
        with pytest.raises(DeployError, match="InService on config cfg-1, not cfg-2") as caught:
            wait_in_service(client, deployment, poll_s=0, sleep=lambda _: None)
    assert caught.value.step == "verify"
    assert "5xx fired" in str(caught.value)


def test_a_failed_endpoint_and_a_refused_step_say_which_step() -> None:
    client = boto3.client("sagemaker", region_name=REGION)
    with Stubber(client) as stubber:
        stubber.add_client_error(
            "create_model", "ResourceLimitExceeded", "too many models", http_status_code=400
        )
        with pytest.raises(DeployError, match="at create_model: ResourceLimitExceeded"):
            deploy(
                client, config_from_environment(ENV), model_data_url=URL,
                endpoint_name="fraudscore", when=WHEN,
            )  # fmt: skip
    with Stubber(client) as stubber:
        stubber.add_response(
            "describe_endpoint",
            {
                "EndpointName": "e",
                "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/e",
                "EndpointStatus": "Failed",
                "FailureReason": "model.tar.gz is not a kmeans model",
                "CreationTime": WHEN,
                "LastModifiedTime": WHEN,
            },
        )
        with pytest.raises(DeployError, match=r"endpoint is Failed: model\.tar\.gz is not"):
            wait_in_service(client, Deployment("m", "c", "e", False), sleep=lambda _: None)


def test_waiting_gives_up_after_the_timeout() -> None:
    client = boto3.client("sagemaker", region_name=REGION)
    ticks = iter([0.0, 10.0, 20.0, 30.0])
    with Stubber(client) as stubber:
        for _ in range(2):
            stubber.add_response(
                "describe_endpoint",
                {
                    "EndpointName": "e",
                    "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/e",
                    "EndpointStatus": "Creating",
                    "CreationTime": WHEN,
                    "LastModifiedTime": WHEN,
                },
            )
        with pytest.raises(DeployError, match="still Creating after 15 s"):
            wait_in_service(
                client, Deployment("m", "c", "e", False), timeout_s=15, poll_s=0,
                sleep=lambda _: None, clock=lambda: next(ticks),
            )  # fmt: skip


@pytest.mark.parametrize("missing", ["FRAUDSCORE_SAGEMAKER_ROLE_ARN", "FRAUDSCORE_KMS_KEY_ID"])
def test_a_missing_setting_is_named(missing: str) -> None:
    env = {k: v for k, v in ENV.items() if k != missing}
    with pytest.raises(SageMakerConfigError, match=f"{missing} is not set"):
        config_from_environment(env)


def test_the_lambda_handler_deploys_with_the_same_code(sagemaker: Any) -> None:
    result = lambda_handler.handler(
        {"model_data_url": URL, "endpoint_name": "fraudscore-lambda"}, None, client=sagemaker
    )
    assert result["endpoint_name"] == "fraudscore-lambda"
    assert result["updated"] is False
    status = sagemaker.describe_endpoint(EndpointName="fraudscore-lambda")["EndpointStatus"]
    assert status == "InService"
    with pytest.raises(SageMakerConfigError, match="'model_data_url' is required"):
        lambda_handler.handler({"endpoint_name": "x"}, None, client=sagemaker)
