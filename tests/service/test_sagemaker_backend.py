"""The SageMaker backend on a real sagemaker-runtime client under botocore's Stubber:
request shape, parsing, error mapping, fallback, circuit breaker and parity."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import numpy.typing as npt
import pytest
from botocore.exceptions import ReadTimeoutError
from botocore.stub import Stubber
from fastapi.testclient import TestClient

from service.main import create_app
from service.models import load_active
from service.sagemaker_backend import (
    FALLBACK_NAME,
    CircuitBreaker,
    EndpointRejected,
    EndpointTimeout,
    EndpointUnavailable,
    SageMakerBackend,
    csv_body,
    parse_predictions,
    split_rows,
)
from service.scoring import ScoringModel
from service.settings import Settings
from tests.service.conftest import transaction
from training.registry import Registry

ENDPOINT = "fraudscore-endpoint"


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Stubber]]:
    """A real sagemaker-runtime client with fake credentials, stubbed."""
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "eu-west-1"),
    ):
        monkeypatch.setenv(name, value)
    client = boto3.client("sagemaker-runtime", region_name="eu-west-1")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def model(registry: Registry) -> ScoringModel:
    return load_active(registry)


def answer(model: ScoringModel, x: npt.NDArray[np.float64], *, shift: int = 0) -> dict[str, Any]:
    """What kmeans:1 answers for rows ``x`` (float cluster ids, float32 distances)."""
    clusters, distances = model.nearest.assign(x.astype(np.float32).astype(np.float64))
    predictions = [
        {
            "closest_cluster": float((c + shift) % model.k),
            "distance_to_cluster": float(np.float32(d)),
        }
        for c, d in zip(clusters, distances, strict=True)
    ]
    body = json.dumps({"predictions": predictions}).encode()
    return {"Body": io.BytesIO(body), "ContentType": "application/json"}


def expect_call(stubber: Stubber, model: ScoringModel, x: npt.NDArray[np.float64]) -> None:
    stubber.add_response(
        "invoke_endpoint",
        answer(model, x),
        {
            "EndpointName": ENDPOINT,
            "Body": csv_body(x),
            "ContentType": "text/csv",
            "Accept": "application/json",
        },
    )


def rows(model: ScoringModel, n: int = 5) -> npt.NDArray[np.float64]:
    return model.centroids[np.arange(n) % model.k] + 0.1


def test_rows_go_as_csv_and_predictions_come_back_as_arrays(
    runtime: tuple[Any, Stubber], model: ScoringModel
) -> None:
    client, stubber = runtime
    x = rows(model)
    expect_call(stubber, model, x)
    clusters, distances, who = SageMakerBackend(client, ENDPOINT).assign(model, x)
    local_clusters, local_distances = model.nearest.assign(x)
    assert who == "sagemaker"
    assert clusters.tolist() == local_clusters.tolist()
    np.testing.assert_allclose(distances, local_distances, rtol=1e-5)


def test_bodies_are_split_under_the_payload_limit(
    runtime: tuple[Any, Stubber], model: ScoringModel
) -> None:
    client, stubber = runtime
    x = rows(model, 40)
    limit = len(csv_body(x)) // 3
    parts = split_rows(x, limit)
    assert len(parts) >= 3
    assert all(len(p) <= limit for p in parts)
    assert b"".join(parts) == csv_body(x)
    start = 0
    for part in parts:
        n = part.count(b"\n")
        expect_call(stubber, model, x[start : start + n])
        start += n
    clusters, _, _ = SageMakerBackend(client, ENDPOINT, max_payload_bytes=limit).assign(model, x)
    assert len(clusters) == 40


@pytest.mark.parametrize(
    ("code", "status", "extra", "error", "words"),
    [
        ("ModelError", 424, {"OriginalStatusCode": 500}, EndpointRejected, "model failed"),
        ("ValidationError", 400, {}, EndpointRejected, "not found"),
        ("ThrottlingException", 400, {}, EndpointUnavailable, "busy"),
        ("ServiceUnavailable", 503, {}, EndpointUnavailable, "busy"),
        ("InternalFailure", 500, {}, EndpointUnavailable, "InternalFailure"),
    ],
)
def test_endpoint_errors_become_domain_errors(
    runtime: tuple[Any, Stubber],
    model: ScoringModel,
    code: str,
    status: int,
    extra: dict[str, Any],
    error: type[Exception],
    words: str,
) -> None:
    client, stubber = runtime
    stubber.add_client_error(
        "invoke_endpoint",
        service_error_code=code,
        service_message=f"Endpoint {ENDPOINT} of account 1 not found."
        if code == "ValidationError"
        else "x",
        http_status_code=status,
        response_meta=extra,
    )
    backend = SageMakerBackend(client, ENDPOINT, fallback=False)
    with pytest.raises(error, match=words):
        backend.assign(model, rows(model))


def test_a_malformed_answer_is_rejected(runtime: tuple[Any, Stubber], model: ScoringModel) -> None:
    client, stubber = runtime
    stubber.add_response("invoke_endpoint", {"Body": io.BytesIO(b'{"scores": []}')})
    with pytest.raises(EndpointRejected, match="not kmeans predictions"):
        SageMakerBackend(client, ENDPOINT, fallback=False).assign(model, rows(model))
    two = {"predictions": [{"closest_cluster": 1.0, "distance_to_cluster": 1.0}] * 2}
    with pytest.raises(EndpointRejected, match="2 predictions for 3 rows"):
        parse_predictions(json.dumps(two).encode(), 3)
    half = {"predictions": [{"closest_cluster": 1.5, "distance_to_cluster": 1.0}]}
    with pytest.raises(EndpointRejected, match="not a whole number"):
        parse_predictions(json.dumps(half).encode(), 1)


def test_a_timeout_is_a_timeout(model: ScoringModel) -> None:
    class SlowClient:
        def invoke_endpoint(self, **_: Any) -> Any:
            raise ReadTimeoutError(endpoint_url=f"https://runtime/endpoints/{ENDPOINT}")

    with pytest.raises(EndpointTimeout, match="timed out"):
        SageMakerBackend(SlowClient(), ENDPOINT, fallback=False).assign(model, rows(model))


def test_the_fallback_answers_with_the_models_centroids(
    runtime: tuple[Any, Stubber], model: ScoringModel
) -> None:
    client, stubber = runtime
    stubber.add_client_error("invoke_endpoint", "ServiceUnavailable", http_status_code=503)
    backend = SageMakerBackend(client, ENDPOINT, fallback=True)
    x = rows(model)
    clusters, _, who = backend.assign(model, x)
    assert who == FALLBACK_NAME
    assert clusters.tolist() == model.nearest.assign(x)[0].tolist()


def test_the_circuit_opens_after_failures_and_probes_again_later(
    runtime: tuple[Any, Stubber], model: ScoringModel
) -> None:
    client, stubber = runtime
    now = [0.0]
    breaker = CircuitBreaker(failures=2, reset_s=30.0, clock=lambda: now[0])
    backend = SageMakerBackend(client, ENDPOINT, fallback=False, breaker=breaker)
    x = rows(model)
    for _ in range(2):
        stubber.add_client_error("invoke_endpoint", "ServiceUnavailable", http_status_code=503)
        with pytest.raises(EndpointUnavailable):
            backend.assign(model, x)
    # Open: no call reaches the endpoint (the stubber has nothing queued and would fail).
    with pytest.raises(EndpointUnavailable, match="calls are paused"):
        backend.assign(model, x)
    assert breaker.open
    now[0] = 31.0
    expect_call(stubber, model, x)
    assert backend.assign(model, x)[2] == "sagemaker"
    assert not breaker.open


def test_parity_fails_when_the_endpoint_serves_another_model(
    runtime: tuple[Any, Stubber], model: ScoringModel
) -> None:
    client, stubber = runtime
    probe = model.centroids + 0.25
    stubber.add_response("invoke_endpoint", answer(model, probe))
    backend = SageMakerBackend(client, ENDPOINT)
    assert backend.check(model) is None
    stubber.add_response("invoke_endpoint", answer(model, probe, shift=1))
    problem = backend.check(model)
    assert problem is not None
    assert "does not serve model" in problem


def test_the_service_answers_through_the_endpoint_and_maps_its_errors(
    runtime: tuple[Any, Stubber], model: ScoringModel, registry: Registry
) -> None:
    client, stubber = runtime
    backend = SageMakerBackend(client, ENDPOINT, fallback=False)
    settings = Settings(registry=str(registry.location), access_log=False)
    probe = model.centroids + 0.25
    stubber.add_response("invoke_endpoint", answer(model, probe))  # parity at load
    app = create_app(settings, registry=registry, backend=backend)
    tx = transaction()
    x = model.spec.transform(
        {
            "amount": [tx["amount"]],
            "tran_code": [tx["tran_code"]],
            **{k: [v] for k, v in tx["features"].items()},
        }
    ).X
    with TestClient(app) as c:
        expect_call(stubber, model, x)
        remote = c.post("/score", json=tx).json()
        stubber.add_client_error("invoke_endpoint", "ThrottlingException", http_status_code=400)
        busy = c.post("/score", json=tx)
        stubber.add_client_error("invoke_endpoint", "ModelError", http_status_code=424)
        failed = c.post("/score/batch", json={"transactions": [tx]})
        metrics = c.get("/metrics").text
    local = TestClient(create_app(settings, registry=registry))
    with local:
        expected = local.post("/score", json=tx).json()
    assert remote["backend"] == "sagemaker"
    assert remote["cluster"] == expected["cluster"]
    assert remote["anomalous"] == expected["anomalous"]
    assert remote["distance"] == pytest.approx(expected["distance"], rel=1e-5)
    assert (busy.status_code, busy.json()["error"], busy.headers["retry-after"]) == (
        503,
        "backend_busy",
        "1",
    )
    assert (failed.status_code, failed.json()["error"]) == (502, "backend_unavailable")
    assert 'fraudscore_backend_rows_total{backend="sagemaker"} 1.0' in metrics


def test_csv_rows_are_written_as_numpy_savetxt_writes_them() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((17, 6)) * np.array([1e-8, 1e-3, 1.0, 1e3, 1e6, 1e30])
    x[0, :3] = [0.0, -0.0, 1e-45]
    x[1, :3] = [np.inf, -np.inf, np.nan]
    out = io.StringIO()
    np.savetxt(out, x.astype(np.float32), delimiter=",", fmt="%.9g")
    assert csv_body(x) == out.getvalue().encode()
    assert csv_body(np.zeros((0, 6))) == b""
