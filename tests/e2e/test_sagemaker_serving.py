"""The real service with ``backend=sagemaker`` against a loopback kmeans:1 endpoint.

The endpoint is :class:`training.endpoint_emulator.EndpointEmulator` (emulated: it answers
the runtime API from the registry's centroids); boto3 reaches it through
``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``, as it would reach any emulator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.e2e.live_server import http_client, running_server
from tests.service.conftest import transaction
from training.endpoint_emulator import EndpointEmulator
from training.registry import Registry

ENDPOINT = "fraudscore-e2e"


def aws_env(url: str) -> dict[str, str]:
    return {
        "FRAUDSCORE_BACKEND": "sagemaker",
        "FRAUDSCORE_ENDPOINT_NAME": ENDPOINT,
        "FRAUDSCORE_AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }


def test_the_endpoint_decides_like_the_local_backend_and_falls_back(
    registry: Registry, tmp_path: Path
) -> None:
    pointer = registry.active()
    assert pointer is not None
    centroids = registry.load_centroids(pointer.model_version)
    txs = [
        transaction(transaction_id=f"t{i}", amount=float(3 ** (i % 12)), tran_code=code)
        for i, code in enumerate(["01", "05", "07", "12", "ZZ"] * 6)
    ]
    with TestClient(create_app(Settings(registry=str(registry.location)), registry=registry)) as c:
        local = c.post("/score/batch", json={"transactions": txs}).json()["results"]
    with (
        EndpointEmulator(centroids, endpoint_name=ENDPOINT) as endpoint,
        running_server(registry.location, tmp_path / "logs", env=aws_env(endpoint.url)) as live,
        http_client(live.base_url) as client,
    ):
        assert endpoint.calls >= 1  # the parity check at load
        remote = client.post("/score/batch", json={"transactions": txs}).json()["results"]
        single = client.post("/score", json=txs[0]).json()
        # The endpoint fails: the service answers from the model's centroids, and says so.
        endpoint.failures = [(503, "ServiceUnavailable", "try again")] * 10
        fallback = client.post("/score", json=txs[1]).json()
        endpoint.failures = []
        ready = client.get("/readyz")
        metrics = client.get("/metrics").text
    assert {r["backend"] for r in remote} == {"sagemaker"}
    assert single["backend"] == "sagemaker"
    for a, b in zip(remote, local, strict=True):
        assert (a["cluster"], a["anomalous"]) == (b["cluster"], b["anomalous"])
        # The endpoint computes in float32.
        assert np.isclose(a["distance"], b["distance"], rtol=1e-4, atol=1e-5)
        assert [r["field"] for r in a["reasons"]] == [r["field"] for r in b["reasons"]]
    assert fallback["backend"] == "local-fallback"
    assert fallback["cluster"] == local[1]["cluster"]
    assert ready.status_code == 200
    assert 'fraudscore_backend_rows_total{backend="local-fallback"} 1.0' in metrics


def test_an_endpoint_serving_another_model_is_not_ready(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    pointer = registry.active()
    assert pointer is not None
    other = np.ascontiguousarray(registry.load_centroids(pointer.model_version)[::-1])
    with EndpointEmulator(other, endpoint_name=ENDPOINT) as endpoint:
        for key, value in aws_env(endpoint.url).items():
            monkeypatch.setenv(key, value)
        settings = Settings(registry=str(registry.location), access_log=False)
        with TestClient(create_app(settings, registry=registry)) as c:
            ready = c.get("/readyz")
            scored = c.post("/score", json=transaction())
    assert ready.status_code == 503
    assert "does not serve model" in ready.json()["message"]
    assert scored.status_code == 503
