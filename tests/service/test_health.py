"""Probes, the serving model's description and the Prometheus metrics."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.main import create_app
from service.settings import Settings
from tests.service.conftest import transaction
from training.registry import Registry, open_registry


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_healthz_answers_without_a_model(tmp_path: Path) -> None:
    settings = Settings(registry=str(tmp_path / "none"), access_log=False)
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_503_with_the_reason_until_a_model_is_loaded(
    tmp_path: Path, registry: Registry
) -> None:
    empty = open_registry(tmp_path / "empty")
    settings = Settings(registry=str(tmp_path / "empty"), access_log=False)
    app = create_app(settings, registry=empty)
    with TestClient(app) as c:
        response = c.get("/readyz")
        assert response.status_code == 503
        assert response.json()["error"] == "not_ready"
        assert "no active model" in response.json()["message"]
        assert response.headers["retry-after"] == "5"
        assert c.get("/model").status_code == 503
        # A model appears: the next poll loads it (called directly here, not waited for).
        pointer = registry.active()
        assert pointer is not None
        bundle = registry.load_bundle(pointer.model_version)
        empty.save_model(bundle.manifest, bundle.centroids, bundle.calibration)
        empty.save_thresholds(bundle.thresholds)
        empty.activate(pointer.model_version, 1)
        assert app.app.state.watcher.refresh() is True
        ready = c.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "ready": True,
            "reason": None,
            "model_version": pointer.model_version,
            "thresholds_version": 1,
            "backend": "local",
        }


def test_model_lists_where_each_field_goes(client: TestClient, registry: Registry) -> None:
    body = client.get("/model").json()
    pointer = registry.active()
    assert pointer is not None
    assert body["model_version"] == pointer.model_version
    assert body["k"] == 6
    where = {f["name"]: (f["kind"], f["location"]) for f in body["fields"]}
    assert where["amount"] == ("numeric", "amount")
    assert where["tran_code"] == ("categorical", "tran_code")
    assert where["hour"] == ("numeric", "features.hour")
    codes = next(f for f in body["fields"] if f["name"] == "tran_code")["categories"]
    assert "05" in codes


def test_metrics_count_requests_decisions_errors_and_the_model(
    client: TestClient, registry: Registry
) -> None:
    for _ in range(3):
        assert client.post("/score", json=transaction()).status_code == 200
    batch = {"transactions": [transaction(amount=float(10**i)) for i in range(5)]}
    assert client.post("/score/batch", json=batch).status_code == 200
    assert client.post("/score", json=transaction(amount="x")).status_code == 422
    assert client.get("/nowhere").status_code == 404
    found = samples(client)

    def requests(route: str, method: str, status: str) -> float:
        key = (
            "fraudscore_http_requests_total",
            (("method", method), ("route", route), ("status", status)),
        )
        return found.get(key, 0.0)

    assert requests("/score", "POST", "200") == 3
    assert requests("/score/batch", "POST", "200") == 1
    assert requests("/score", "POST", "422") == 1
    assert requests("unmatched", "GET", "404") == 1
    latency = (
        "fraudscore_http_request_duration_seconds_count",
        (("route", "/score"), ("status", "200")),
    )
    assert found[latency] == 3
    decisions = sum(v for (name, _), v in found.items() if name == "fraudscore_decisions_total")
    assert decisions == 3 + 5
    assert found[("fraudscore_errors_total", (("kind", "invalid_request"),))] == 1
    assert found[("fraudscore_errors_total", (("kind", "not_found"),))] == 1
    pointer = registry.active()
    assert pointer is not None
    info = (
        "fraudscore_model_info",
        (
            ("backend", "local"),
            ("model_version", pointer.model_version),
            ("thresholds_version", str(pointer.thresholds_version)),
        ),
    )
    assert found[info] == 1.0


def test_the_openapi_document_and_docs_are_served(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/score", "/score/batch", "/healthz", "/readyz", "/metrics", "/model"} <= set(
        spec["paths"]
    )
    assert client.get("/docs").status_code == 200
