"""POST /score and /score/batch through the app factory: decisions, errors, limits, keys."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.service.conftest import ClientFactory, activate_thresholds, transaction
from training.registry import Registry, open_registry

ERROR_KEYS = {"error", "message", "details", "request_id"}


def problems(response: Any) -> dict[str, str]:
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    assert body["request_id"] == response.headers["x-request-id"]
    return {d["field"]: d["problem"] for d in body["details"]}


def test_score_returns_a_complete_decision(client: TestClient, registry: Registry) -> None:
    response = client.post("/score", json=transaction())
    assert response.status_code == 200, response.text
    body = response.json()
    pointer = registry.active()
    assert pointer is not None
    assert body["transaction_id"] == "tx-20261128-000042"
    assert body["model_version"] == pointer.model_version
    assert body["thresholds_version"] == pointer.thresholds_version
    assert body["backend"] == "local"
    assert body["score"] == pytest.approx(body["distance"] / body["threshold"])
    assert body["anomalous"] == (body["distance"] > body["threshold"] or body["rare_pattern"])
    assert 0 <= body["cluster"] < 6
    assert len(body["reasons"]) <= 3
    shares = [r["share"] for r in body["reasons"]]
    assert shares == sorted(shares, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in shares)


def test_a_far_away_amount_is_the_top_reason(client: TestClient) -> None:
    body = client.post("/score", json=transaction(amount=2_500_000.0)).json()
    top = body["reasons"][0]
    assert (top["field"], top["direction"], top["value"]) == ("amount", "above", 2_500_000.0)
    assert top["share"] > 0.5
    assert top["typical"] < 1000.0


def test_a_distance_past_the_threshold_is_anomalous(
    make_client: ClientFactory, registry: Registry
) -> None:
    version = activate_thresholds(registry, 0.5)
    with make_client() as c:
        body = c.post("/score", json=transaction(amount=2_500_000.0)).json()
    assert body["thresholds_version"] == version
    assert body["threshold"] == 0.5
    assert body["anomalous"] is True
    assert body["score"] == pytest.approx(body["distance"] / 0.5)
    assert body["score"] > 1.0


def test_a_rare_pattern_cluster_flags_even_close_rows(
    make_client: ClientFactory, registry: Registry
) -> None:
    k = registry.load_manifest(registry.active().model_version).k  # type: ignore[union-attr]
    activate_thresholds(registry, 1e6, rare=np.ones(k, dtype=bool))
    with make_client() as c:
        body = c.post("/score", json=transaction()).json()
    assert body["rare_pattern"] is True
    assert body["anomalous"] is True
    assert body["score"] == 1.0


def test_an_unseen_category_is_a_named_reason_not_an_error(client: TestClient) -> None:
    tx = transaction(tran_code="ZZ")
    body = client.post("/score", json=tx).json()
    unseen = [r for r in body["reasons"] if r["direction"] == "unseen"]
    assert [(r["field"], r["value"]) for r in unseen] == [("tran_code", "ZZ")]


def test_batch_answers_in_request_order_like_single_requests(client: TestClient) -> None:
    txs = [
        transaction(transaction_id=f"t{i}", amount=float(10 ** (i % 6)), tran_code="01")
        for i in range(25)
    ]
    response = client.post("/score/batch", json={"transactions": txs})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["transaction_id"] for r in results] == [t["transaction_id"] for t in txs]
    for tx, batched in zip(txs, results, strict=True):
        single = client.post("/score", json=tx).json()
        assert batched["cluster"] == single["cluster"]
        assert batched["anomalous"] == single["anomalous"]
        assert math.isclose(batched["distance"], single["distance"], rel_tol=1e-9)
        assert [r["field"] for r in batched["reasons"]] == [r["field"] for r in single["reasons"]]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"amount": "12.50"}, "amount", "valid number"),
        ({"amount": True}, "amount", "valid number"),
        ({"amount": None}, "amount", "valid number"),
        ({"tran_code": 5}, "tran_code", "valid string"),
        ({"transaction_id": ""}, "transaction_id", "at least 1"),
        ({"timestamp": "yesterday"}, "timestamp", "datetime"),
        ({"ammount": 3.0}, "ammount", "unknown field"),
        ({"features": {"hour": "noon"}}, "features.hour", "expected a number"),
        ({"features": {"hour": None}}, "features.hour", "number or a string"),
        ({"features": {"hour": [1]}}, "features.hour", "number or a string"),
        ({"features": "x"}, "features", "object"),
    ],
)
def test_bad_fields_are_422_naming_the_field(
    client: TestClient, change: dict[str, Any], field: str, words: str
) -> None:
    tx = transaction(**change)
    response = client.post("/score", json=tx)
    assert response.status_code == 422, response.text
    found = problems(response)
    assert field in found, found
    assert words in found[field]


def test_missing_fields_are_each_named(client: TestClient) -> None:
    tx = transaction()
    del tx["amount"]
    del tx["transaction_id"]
    found = problems(client.post("/score", json=tx))
    assert found == {"amount": "field required", "transaction_id": "field required"}


def test_fields_the_model_needs_are_named_with_their_kind(client: TestClient) -> None:
    tx = transaction(features={"channel": 3, "hour": 2})
    response = client.post("/score", json=tx)
    assert response.status_code == 422
    found = problems(response)
    assert found["features.channel"] == "expected a category string, got a number"
    assert found["features.km_from_home"] == "field required by the model (a number)"
    assert "features.hour" not in found


@pytest.mark.parametrize(
    "raw",
    [
        b'{"transaction_id": "t", "amount": NaN, "tran_code": "01"}',
        b'{"transaction_id": "t", "amount": Infinity, "tran_code": "01"}',
        b'{"transaction_id": "t", "amount": 1e999, "tran_code": "01"}',
    ],
)
def test_non_finite_numbers_are_refused(client: TestClient, raw: bytes) -> None:
    response = client.post("/score", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "amount" in problems(response) or "body" in problems(response)


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"transactions": 3}', b"x" * 100],
)
def test_malformed_bodies_are_422_on_both_routes(client: TestClient, raw: bytes) -> None:
    for route in ("/score", "/score/batch"):
        response = client.post(route, content=raw)
        assert response.status_code == 422, (route, raw, response.text)
        assert problems(response)


def test_a_batch_item_problem_names_its_index(client: TestClient) -> None:
    txs = [transaction(), transaction(amount="x"), transaction(tran_code=1)]
    found = problems(client.post("/score/batch", json={"transactions": txs}))
    assert set(found) == {"transactions[1].amount", "transactions[2].tran_code"}
    # Fields the model needs are checked once the body is valid JSON of the right shape.
    txs = [transaction(), transaction(), transaction(features={"hour": 1})]
    found = problems(client.post("/score/batch", json={"transactions": txs}))
    assert "transactions[2].features.channel" in found
    assert not any(f.startswith(("transactions[0]", "transactions[1]")) for f in found)


def test_an_empty_batch_is_422(client: TestClient) -> None:
    assert client.post("/score/batch", json={"transactions": []}).status_code == 422


def test_bodies_and_batches_over_the_limits_are_413(make_client: ClientFactory) -> None:
    with make_client(max_batch=2, max_body_bytes=4096) as c:
        response = c.post("/score/batch", json={"transactions": [transaction()] * 3})
        assert response.status_code == 413
        assert response.json()["error"] == "payload_too_large"
        assert "at most 2" in response.json()["message"]
        big = transaction(features={**transaction()["features"], "note": "x" * 5000})
        for route, body in (("/score", big), ("/score/batch", {"transactions": [big]})):
            response = c.post(route, json=body)
            assert response.status_code == 413, route
            assert "4096 bytes" in response.json()["message"]


def test_a_chunked_body_over_the_limit_is_413(make_client: ClientFactory) -> None:
    def chunks() -> Any:
        yield b'{"transaction_id": "t", "amount": 1.0, "tran_code": "01", "features": {"a": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}}'

    with make_client(max_body_bytes=4096) as c:
        assert c.post("/score", content=chunks()).status_code == 413


def test_without_a_model_scoring_is_503_with_retry_after(tmp_path: Any) -> None:
    empty = open_registry(tmp_path / "empty")
    settings = Settings(registry=str(tmp_path / "empty"), access_log=False, poll_interval_s=7)
    with TestClient(create_app(settings, registry=empty)) as c:
        for route, body in (("/score", transaction()), ("/score/batch", {"transactions": []})):
            response = c.post(route, json=body)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "7"
            assert response.json()["error"] == "not_ready"
            assert "no active model" in response.json()["message"]


def test_api_keys_guard_scoring_when_configured(make_client: ClientFactory) -> None:
    with make_client(api_keys="k-one, k-two") as c:
        for route, body in (
            ("/score", transaction()),
            ("/score/batch", {"transactions": [transaction()]}),
        ):
            assert c.post(route, json=body).status_code == 401
            wrong = c.post(route, json=body, headers={"x-api-key": "k-three"})
            assert wrong.status_code == 401
            assert wrong.json()["error"] == "unauthorized"
            assert c.post(route, json=body, headers={"x-api-key": "k-two"}).status_code == 200
        # Probes stay open for load balancers.
        assert c.get("/healthz").status_code == 200


def test_request_ids_are_echoed_or_made(client: TestClient) -> None:
    given = client.post("/score", json=transaction(), headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = client.post("/score", json=transaction())
    assert len(made.headers["x-request-id"]) == 32
    unsafe = client.get("/healthz", headers={"x-request-id": "a b\tc"})
    assert unsafe.headers["x-request-id"] != "a b\tc"
    error = client.get("/nowhere", headers={"x-request-id": "r-9"})
    assert error.headers["x-request-id"] == "r-9"
    assert error.json()["request_id"] == "r-9"


@pytest.mark.parametrize(
    ("method", "route", "status", "kind"),
    [
        ("GET", "/nowhere", 404, "not_found"),
        ("GET", "/score", 405, "method_not_allowed"),
        ("DELETE", "/healthz", 405, "method_not_allowed"),
        ("GET", "/admin/models", 403, "admin_disabled"),
    ],
)
def test_every_error_has_the_one_body_shape(
    client: TestClient, method: str, route: str, status: int, kind: str
) -> None:
    response = client.request(method, route)
    assert response.status_code == status
    assert response.json()["error"] == kind
    problems(response)


def test_the_fastapi_routes_answer_exactly_like_the_front_door(registry: Registry) -> None:
    """The front door short-cuts the scoring routes; the routes behind it must agree."""
    settings = Settings(registry=str(registry.location), access_log=False)
    front = create_app(settings, registry=registry)
    bodies = [
        transaction(),
        transaction(amount=9e6, tran_code="ZZ"),
        transaction(amount="x"),
        {"transactions": [transaction(), transaction(features={})]},
    ]
    with TestClient(front) as outer, TestClient(front.app) as inner:
        for body in bodies:
            route = "/score/batch" if "transactions" in body else "/score"
            a = outer.post(route, json=body, headers={"x-request-id": "same"})
            b = inner.post(route, json=body, headers={"x-request-id": "same"})
            assert (a.status_code, a.json()) == (b.status_code, b.json())


@pytest.mark.parametrize("route", ["/score", "/score/batch"])
@pytest.mark.parametrize("value", [1e200, -1.7976931348623157e308])
def test_a_value_too_far_out_to_score_is_422_naming_it(
    client: TestClient, route: str, value: float
) -> None:
    tx = transaction()
    tx["features"]["hour"] = value
    body = {"transactions": [transaction(), tx]} if route == "/score/batch" else tx
    response = client.post(route, json=body)
    assert response.status_code == 422
    field = "transactions[1].features.hour" if route == "/score/batch" else "features.hour"
    assert "out of range" in problems(response)[field]


def test_a_far_but_scorable_value_is_simply_anomalous(client: TestClient) -> None:
    tx = transaction()
    tx["features"]["hour"] = 1e90
    for body in (client.post("/score", json=tx).json(),):
        assert body["anomalous"] is True
        assert body["reasons"][0]["field"] == "hour"


@pytest.mark.parametrize("stamp", [0, 1.5e9, True])
def test_timestamps_must_be_text(client: TestClient, stamp: object) -> None:
    response = client.post("/score", json=transaction(timestamp=stamp))
    assert response.status_code == 422
    assert "timestamp" in problems(response)
