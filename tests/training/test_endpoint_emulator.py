"""The loopback kmeans:1 endpoint, reached by boto3's ``sagemaker-runtime`` as the service
reaches it: answers, injected failures, and the latency held on every answer."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.aws_fakes import isolate_from_aws
from training.endpoint_emulator import EndpointEmulator

CENTROIDS = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=np.float32)
NAME = "emulated"


@pytest.fixture
def endpoint() -> Iterator[EndpointEmulator]:
    with EndpointEmulator(CENTROIDS, endpoint_name=NAME) as running:
        yield running


@pytest.fixture(autouse=True)
def no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_from_aws(monkeypatch, region="eu-west-1")


def runtime(url: str) -> object:
    # One attempt: a retry would hide (and consume) the failures injected here.
    config = Config(retries={"mode": "standard", "total_max_attempts": 1})
    return boto3.client("sagemaker-runtime", endpoint_url=url, config=config)


def invoke(url: str, body: str, name: str = NAME) -> dict[str, object]:
    answer = runtime(url).invoke_endpoint(  # type: ignore[attr-defined]
        EndpointName=name, ContentType="text/csv", Body=body.encode()
    )
    decoded: dict[str, object] = json.loads(answer["Body"].read())
    return decoded


def error_code(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response = excinfo.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def test_it_answers_like_the_container_and_counts_calls_and_rows(
    endpoint: EndpointEmulator,
) -> None:
    answer = invoke(endpoint.url, "9,1\n0,-3\n1,12\n")
    assert answer == {
        "predictions": [
            {"closest_cluster": 1.0, "distance_to_cluster": pytest.approx(2**0.5)},
            {"closest_cluster": 0.0, "distance_to_cluster": 3.0},
            {"closest_cluster": 2.0, "distance_to_cluster": pytest.approx(5**0.5)},
        ]
    }
    assert (endpoint.calls, endpoint.rows) == (1, 3)


def test_injected_failures_come_back_as_the_runtime_api_errors_in_order(
    endpoint: EndpointEmulator,
) -> None:
    endpoint.failures = [(429, "ThrottlingException", "slow down"), (503, "ServiceUnavailable", "")]
    with pytest.raises(ClientError) as first:
        invoke(endpoint.url, "0,0\n")
    with pytest.raises(ClientError) as second:
        invoke(endpoint.url, "0,0\n")
    assert error_code(first) == (429, "ThrottlingException")
    assert "slow down" in str(first.value)
    assert error_code(second) == (503, "ServiceUnavailable")
    assert invoke(endpoint.url, "0,0\n")["predictions"]  # both consumed
    assert endpoint.calls == 1  # failed calls never reached the model


def test_bad_rows_and_unknown_endpoints_are_client_errors(endpoint: EndpointEmulator) -> None:
    with pytest.raises(ClientError) as wrong_width:
        invoke(endpoint.url, "1,2,3\n")
    with pytest.raises(ClientError) as unknown:
        invoke(endpoint.url, "1,2\n", name="elsewhere")
    assert error_code(wrong_width) == (424, "ModelError")
    assert "rows have 3 columns, the model expects 2" in str(wrong_width.value)
    assert error_code(unknown) == (400, "ValidationError")
    assert "Endpoint elsewhere" in str(unknown.value)
    assert endpoint.calls == 0


def test_ping_answers_for_health_checks(endpoint: EndpointEmulator) -> None:
    with urllib.request.urlopen(endpoint.url + "/ping", timeout=5) as answer:  # noqa: S310 (loopback)
        assert answer.status == 200


def test_the_latency_holds_every_answer_back_errors_included() -> None:
    latency = 0.15
    with EndpointEmulator(CENTROIDS, endpoint_name=NAME, latency_s=latency) as slow:
        slow.failures = [(503, "ServiceUnavailable", "")]
        start = time.monotonic()
        with pytest.raises(ClientError):
            invoke(slow.url, "0,0\n")
        failed = time.monotonic() - start
        start = time.monotonic()
        invoke(slow.url, "0,0\n")
        answered = time.monotonic() - start
    # Counted from the request's arrival at the endpoint: the client's own time adds to it.
    assert failed >= latency
    assert answered >= latency
