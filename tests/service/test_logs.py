"""JSON log lines: the formatter, the access log, and what never reaches the logs."""

from __future__ import annotations

import io
import json
import logging

from fastapi.testclient import TestClient

from service.logs import AccessLog, JsonFormatter
from service.main import create_app
from service.settings import Settings
from tests.service.conftest import transaction
from training.registry import Registry


def test_records_become_one_json_object_with_their_extras() -> None:
    record = logging.makeLogRecord(
        {"name": "fraudscore.x", "levelname": "ERROR", "msg": "model %s", "args": ("refused",)}
    )
    record.model_version = "m1"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "model refused"
    assert data["level"] == "ERROR"
    assert data["model_version"] == "m1"
    assert data["time"].endswith("+00:00")


def test_access_lines_carry_the_request_not_the_payload(registry: Registry) -> None:
    sink = io.BytesIO()
    settings = Settings(registry=str(registry.location), api_keys="secret-key")
    app = create_app(settings, registry=registry, access_log=AccessLog(sink))
    tx = transaction(transaction_id="card-4111111111111111")
    with TestClient(app) as c:
        c.post("/score", json=tx, headers={"x-api-key": "secret-key", "x-request-id": "r1"})
        c.post("/score", json=tx, headers={"x-api-key": "wrong-key", "x-request-id": "r2"})
        c.get("/readyz", headers={"x-request-id": "r3"})
    text = sink.getvalue().decode()
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(x["request_id"], x["route"], x["status"]) for x in lines] == [
        ("r1", "/score", 200),
        ("r2", "/score", 401),
        ("r3", "/readyz", 200),
    ]
    assert all(x["logger"] == "fraudscore.access" and x["duration_ms"] >= 0 for x in lines)
    for secret in ("4111111111111111", "secret-key", "wrong-key", "42.5"):
        assert secret not in text
