"""Admin lifecycle routes: retrain jobs, cancel, recalibrate, promote, rollback, audit, recovery.

Retrains run for real: a ``training.job_runner`` process per job, on a small demo file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.auth import token_id
from tests.service.conftest import ClientFactory
from training.demo import DEMO_FEATURES, LABEL_COLUMN, DemoConfig, generate, write_csv
from training.jobs import JobStore
from training.registry import Registry

TOKEN = "admin-secret-token"  # noqa: S105 - a test token
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CALLER = token_id(TOKEN.encode())
JOB_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled demo file like the one the test registry was trained on."""
    path = tmp_path_factory.mktemp("admin-data") / "transactions.csv"
    write_csv(generate(DemoConfig(rows=3000, seed=11)), path)
    return path


@pytest.fixture
def admin(make_client: ClientFactory) -> Iterator[TestClient]:
    """A client of an app with admin routes on and a lenient promotion gate."""
    with make_client(admin_token=TOKEN, promotion_max_msd_increase=10.0) as client:
        yield client


def retrain_body(data: Path, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "data": str(data),
        "label_column": LABEL_COLUMN,
        "features": DEMO_FEATURES,
        "k": 6,
    }
    body.update(overrides)
    return body


def wait_for_job(client: TestClient, job_id: str, *states: str) -> dict[str, Any]:
    """Poll a job until it is in one of ``states`` (default: any end state)."""
    wanted = states or ("succeeded", "failed", "cancelled")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        job = client.get(f"/admin/jobs/{job_id}", headers=AUTH).json()
        if job["state"] in wanted:
            return job
        assert time.monotonic() < deadline, f"job still {job['state']}: {job}"
        time.sleep(0.1)


def active(registry: Registry) -> tuple[str, int]:
    pointer = registry.active()
    assert pointer is not None
    return pointer.model_version, pointer.thresholds_version


# -- auth ---------------------------------------------------------------------------------------

ROUTES = [
    ("POST", "/admin/retrain", {"data": "x.csv"}),
    ("GET", "/admin/jobs", None),
    ("GET", "/admin/jobs/20261128T120000Z-1a2b3c4d", None),
    ("POST", "/admin/jobs/20261128T120000Z-1a2b3c4d/cancel", None),
    ("POST", "/admin/recalibrate", {"quantile": 0.99}),
    ("POST", "/admin/models/v1/promote", None),
    ("POST", "/admin/rollback", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_admin_routes_need_the_bearer_token(
    admin: TestClient, registry: Registry, method: str, path: str, body: Any
) -> None:
    before = active(registry)
    missing = admin.request(method, path, json=body)
    wrong = admin.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
    for response in (missing, wrong):
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert active(registry) == before
    assert JobStore(registry.storage).list() == []


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_admin_routes_are_disabled_without_a_configured_token(
    make_client: ClientFactory, method: str, path: str, body: Any
) -> None:
    with make_client() as client:
        response = client.request(method, path, json=body, headers=AUTH)
    assert response.status_code == 403
    assert response.json()["error"] == "admin_disabled"
    assert "FRAUDSCORE_ADMIN_TOKEN" in response.json()["message"]


# -- retrain jobs -------------------------------------------------------------------------------


def test_retrain_runs_as_a_job_and_promotes_through_the_gate(
    admin: TestClient, registry: Registry, data_file: Path
) -> None:
    before = active(registry)
    response = admin.post("/admin/retrain", json=retrain_body(data_file), headers=AUTH)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/admin/jobs/{job['job_id']}"
    assert job["state"] in ("queued", "running")
    assert job["requested_by"] == CALLER

    done = wait_for_job(admin, job["job_id"])
    assert done["state"] == "succeeded", done
    result = done["result"]
    assert result["promoted"] is True, result
    assert result["gate"]["passed"] is True
    assert active(registry) == (result["model_version"], result["thresholds_version"])
    assert active(registry) != before
    assert set(result["metrics"]) >= {"test:msd", "test:ssd"}
    assert done["started_at"]
    assert done["finished_at"]
    # the app serves it within one poll interval
    deadline = time.monotonic() + 5
    while admin.get("/model").json()["model_version"] != result["model_version"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    models = admin.get("/admin/models", headers=AUTH).json()["models"]
    assert [m["model_version"] for m in models if m["active"]] == [result["model_version"]]


def test_a_failed_gate_registers_the_model_inactive_and_says_why(
    make_client: ClientFactory, registry: Registry, data_file: Path
) -> None:
    before = active(registry)
    # No alert rate can be exactly the policy's aim: the gate cannot pass.
    with make_client(admin_token=TOKEN, promotion_alert_rate_tolerance=0.0) as client:
        job = client.post("/admin/retrain", json=retrain_body(data_file), headers=AUTH).json()
        done = wait_for_job(client, job["job_id"])
    assert done["state"] == "succeeded", done
    assert done["result"]["promoted"] is False
    assert done["result"]["gate"]["passed"] is False
    assert "alert rate" in done["result"]["reason"]
    assert active(registry) == before
    assert done["result"]["model_version"] in registry.model_versions()


def test_manual_promotion_then_promote_and_rollback(
    admin: TestClient, registry: Registry, data_file: Path
) -> None:
    before = active(registry)
    body = retrain_body(data_file, promotion="manual")
    job = admin.post("/admin/retrain", json=body, headers=AUTH).json()
    done = wait_for_job(admin, job["job_id"])
    assert done["state"] == "succeeded", done
    assert done["result"]["promoted"] is False
    assert "manual" in done["result"]["reason"]
    assert active(registry) == before
    new = done["result"]["model_version"]

    promoted = admin.post(f"/admin/models/{new}/promote", headers=AUTH)
    assert promoted.status_code == 200, promoted.text
    change = promoted.json()
    assert change["previous"]["model_version"] == before[0]
    assert change["active"]["model_version"] == new
    assert active(registry) == (new, 1)

    back = admin.post("/admin/rollback", headers=AUTH)
    assert back.status_code == 200, back.text
    assert back.json()["active"]["model_version"] == before[0]
    assert active(registry) == before
    history = [registry.activation(n).action for n in range(1, 4)]
    assert history[-2:] == ["promote", "rollback"]


def test_a_second_retrain_is_refused_naming_the_running_one_and_cancel_frees_it(
    admin: TestClient, registry: Registry, data_file: Path
) -> None:
    before = active(registry)
    slow = retrain_body(data_file, tuning={"max_jobs": 200, "max_parallel": 1})
    first = admin.post("/admin/retrain", json=slow, headers=AUTH).json()
    second = admin.post("/admin/retrain", json=retrain_body(data_file), headers=AUTH)
    assert second.status_code == 409
    assert first["job_id"] in second.json()["message"]
    assert second.json()["details"] == [{"field": "job_id", "problem": first["job_id"]}]
    # the refused request left no job behind
    assert [j["job_id"] for j in admin.get("/admin/jobs", headers=AUTH).json()["jobs"]] == [
        first["job_id"]
    ]

    running = wait_for_job(admin, first["job_id"], "running")
    assert running["owner"].rpartition(":")[2].isdigit()  # host:pid of the job process
    # progress: trials done out of the total, and the best test:msd so far
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while running["progress"].get("trials_done", 0) < 1:
        assert time.monotonic() < deadline, running
        time.sleep(0.1)
        running = admin.get(f"/admin/jobs/{first['job_id']}", headers=AUTH).json()
    assert running["step"] == "tuning"
    assert running["progress"]["trials_total"] == 200
    assert running["progress"]["best_test_msd"] > 0
    cancelled = admin.post(f"/admin/jobs/{first['job_id']}/cancel", headers=AUTH)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["result"]["cancelled_by"] == CALLER
    assert active(registry) == before
    again = admin.post(f"/admin/jobs/{first['job_id']}/cancel", headers=AUTH)
    assert again.status_code == 409
    assert "already ended" in again.json()["message"]
    # the lock is free again
    third = admin.post("/admin/retrain", json=retrain_body(data_file), headers=AUTH)
    assert third.status_code == 202, third.text
    wait_for_job(admin, third.json()["job_id"])


def test_a_failed_job_keeps_the_active_model_and_names_the_problem(
    admin: TestClient, registry: Registry, data_file: Path, tmp_path: Path
) -> None:
    before = active(registry)
    bad = tmp_path / "bad.csv"
    lines = data_file.read_text().splitlines()
    header = [name.strip('"') for name in lines[0].split(",")]
    row = lines[5].split(",")
    row[header.index("amount")] = "twelve"
    bad.write_text("\n".join([lines[0], *lines[1:5], ",".join(row), *lines[6:]]) + "\n")
    job = admin.post("/admin/retrain", json=retrain_body(bad), headers=AUTH).json()
    done = wait_for_job(admin, job["job_id"])
    assert done["state"] == "failed"
    assert "amount" in done["error"]
    assert "bad.csv" in done["error"]
    assert active(registry) == before


def test_killing_the_job_process_marks_the_job_failed(
    admin: TestClient, registry: Registry, data_file: Path
) -> None:
    before = active(registry)
    slow = retrain_body(data_file, tuning={"max_jobs": 200, "max_parallel": 1})
    job = admin.post("/admin/retrain", json=slow, headers=AUTH).json()
    store = JobStore(registry.storage)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while store.load(job["job_id"]).state != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = int(store.load(job["job_id"]).owner.rpartition(":")[2])
    os.killpg(pid, signal.SIGKILL)
    done = wait_for_job(admin, job["job_id"])
    assert done["state"] == "failed"
    assert "signal 9" in done["error"]
    assert active(registry) == before
    assert store.holder("retrain") is None


def test_a_job_left_running_by_a_dead_process_is_failed_at_the_next_start(
    make_client: ClientFactory, registry: Registry
) -> None:
    store = JobStore(registry.storage)
    record = store.new(
        "retrain", {"data": "x.csv"}, requested_by=CALLER, owner=f"{socket.gethostname()}:999999"
    )
    assert store.acquire("retrain", record.job_id) is None
    with make_client(admin_token=TOKEN) as client:
        job = client.get(f"/admin/jobs/{record.job_id}", headers=AUTH).json()
    assert job["state"] == "failed"
    assert "is gone" in job["error"]
    assert store.holder("retrain") is None


def test_retrain_input_errors_are_422_naming_the_field(admin: TestClient, tmp_path: Path) -> None:
    cases = [
        ({"data": str(tmp_path / "missing.csv")}, "data"),
        ({"data": "x.csv", "k": 1}, "k"),
        ({"data": "x.csv", "mode": "cloud"}, "mode"),
        ({"data": "x.csv", "promotion": "sometimes"}, "promotion"),
        ({"data": "x.csv", "tuning": {"max_jobs": 0}}, "tuning.max_jobs"),
        ({"data": "x.csv", "surprise": 1}, "surprise"),
        ({}, "data"),
    ]
    for body, field in cases:
        response = admin.post("/admin/retrain", json=body, headers=AUTH)
        assert response.status_code == 422, (body, response.text)
        assert field in [d["field"] for d in response.json()["details"]], response.json()


def test_jobs_unknown_and_malformed_ids(admin: TestClient) -> None:
    unknown = admin.get("/admin/jobs/20261128T120000Z-1a2b3c4d", headers=AUTH)
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found"
    malformed = admin.get("/admin/jobs/..%2F..%2FACTIVE", headers=AUTH)
    assert malformed.status_code in (404, 422)
    assert admin.post("/admin/jobs/not-a-job/cancel", headers=AUTH).status_code == 422
    assert admin.get("/admin/jobs", headers=AUTH).json() == {"jobs": []}


# -- recalibrate --------------------------------------------------------------------------------


def test_recalibrate_dry_run_reports_and_changes_nothing(
    admin: TestClient, registry: Registry
) -> None:
    before = active(registry)
    response = admin.post(
        "/admin/recalibrate", json={"target_alert_rate": 0.05, "dry_run": True}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["dry_run"] is True
    assert report["new_thresholds_version"] is None
    assert report["old_thresholds_version"] == before[1]
    assert report["policy"]["kind"] == "target_alert_rate"
    assert report["policy"]["value"] == 0.05
    assert len(report["clusters"]) == 6
    assert sum(c["count"] for c in report["clusters"]) == report["overall"]["rows"]
    # a 5 % budget flags more than the 1 % the model was calibrated for
    assert report["overall"]["new_alert_rate"] > report["overall"]["old_alert_rate"]
    # the stored sample has the training labels: metrics before and after
    assert set(report["overall"]["old"]) == {"precision", "recall", "pr_auc"}
    assert report["overall"]["new"]["recall"] >= report["overall"]["old"]["recall"]
    assert active(registry) == before
    assert registry.list_thresholds(before[0]) == [before[1]]


def test_recalibrate_writes_and_activates_a_new_thresholds_version(
    admin: TestClient, registry: Registry
) -> None:
    model, version = active(registry)
    response = admin.post("/admin/recalibrate", json={"quantile": 0.95}, headers=AUTH)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["new_thresholds_version"] == version + 1
    assert active(registry) == (model, version + 1)
    stored = registry.load_thresholds(model, version + 1)
    assert stored.parent == version
    assert stored.policy.kind == "quantile"
    assert stored.policy.value == 0.95
    for cluster in report["clusters"]:
        assert cluster["new_threshold"] == pytest.approx(stored.values[cluster["cluster"]])
    deadline = time.monotonic() + 5
    while admin.get("/model").json()["thresholds_version"] != version + 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_recalibrate_on_a_data_file_with_labels(admin: TestClient, data_file: Path) -> None:
    response = admin.post(
        "/admin/recalibrate",
        json={
            "target_alert_rate": 0.02,
            "data": str(data_file),
            "label_column": LABEL_COLUMN,
            "dry_run": True,
        },
        headers=AUTH,
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["overall"]["rows"] == 3000
    assert report["sample"] == f"file {data_file.name}"
    assert report["overall"]["new"]["precision"] is not None


def test_recalibrate_sets_the_outlying_weight_and_keeps_it_after(
    admin: TestClient, registry: Registry
) -> None:
    model, version = active(registry)
    assert registry.load_thresholds(model, version).policy.outlying_weight == 1.0
    body = {"target_alert_rate": 0.01, "outlying_weight": 0.0}
    response = admin.post("/admin/recalibrate", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["policy"]["outlying_weight"] == 0.0
    flat = registry.load_thresholds(model, version + 1)
    # Weight 0: thresholds no longer depend on where a cluster lies, as they did before.
    assert flat.policy.outlying_weight == 0.0
    assert max(flat.extra["outlyingness"]) > 0.5
    again = admin.post("/admin/recalibrate", json={"target_alert_rate": 0.02}, headers=AUTH)
    assert again.status_code == 200, again.text
    assert registry.load_thresholds(model, version + 2).policy.outlying_weight == 0.0
    # The thresholds in force before differ from these by exp(-outlyingness) and one cut
    # (to float32 rounding: training calibrated on float64 distances, the sample keeps float32).
    weighted = registry.load_thresholds(model, version)
    scaled = weighted.values / flat.values * np.exp(flat.extra["outlyingness"])
    np.testing.assert_allclose(scaled, scaled[0], rtol=1e-6)


def test_a_retrain_keeps_the_policy_in_force(
    admin: TestClient, registry: Registry, data_file: Path
) -> None:
    body = {"target_alert_rate": 0.02, "outlying_weight": 0.5}
    assert admin.post("/admin/recalibrate", json=body, headers=AUTH).status_code == 200
    in_force = registry.load_thresholds(*active(registry)).policy
    job = admin.post("/admin/retrain", json=retrain_body(data_file), headers=AUTH).json()
    done = wait_for_job(admin, job["job_id"])
    assert done["state"] == "succeeded", done
    result = done["result"]
    new = registry.load_thresholds(result["model_version"], result["thresholds_version"])
    assert new.policy == in_force
    assert (new.policy.value, new.policy.outlying_weight) == (0.02, 0.5)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"target_alert_rate": 0.01, "outlying_weight": -1}, "outlying_weight"),
        ({"target_alert_rate": 0.01, "outlying_weight": "much"}, "outlying_weight"),
        ({"quantile": 0.9, "target_alert_rate": 0.01}, "body"),
        ({"quantile": 1.5}, "quantile"),
        ({"target_alert_rate": 0}, "target_alert_rate"),
        ({"quantile": 0.99, "data": "/no/such/file.csv"}, "data"),
        ({"quantile": 0.99, "label_column": "is_fraud"}, "data"),
        ({"quantile": 0.99, "dry_run": "yes please"}, "dry_run"),
    ],
)
def test_recalibrate_input_errors_are_422(
    admin: TestClient, registry: Registry, body: dict[str, Any], field: str
) -> None:
    before = active(registry)
    response = admin.post("/admin/recalibrate", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert field in [d["field"] for d in response.json()["details"]], response.json()
    assert active(registry) == before


# -- promote and rollback -----------------------------------------------------------------------


def test_promote_errors(admin: TestClient, registry: Registry) -> None:
    model, version = active(registry)
    unknown = admin.post("/admin/models/no-such-model/promote", headers=AUTH)
    assert unknown.status_code == 404
    assert "no-such-model" in unknown.json()["message"]
    no_thresholds = admin.post(
        f"/admin/models/{model}/promote", json={"thresholds_version": 9}, headers=AUTH
    )
    assert no_thresholds.status_code == 404
    assert no_thresholds.json()["details"][0]["field"] == "thresholds_version"
    bad = admin.post(f"/admin/models/{model}/promote", json={"thresholds_version": 0}, headers=AUTH)
    assert bad.status_code == 422
    same = admin.post(
        f"/admin/models/{model}/promote", json={"thresholds_version": version}, headers=AUTH
    )
    assert same.status_code == 200
    assert active(registry) == (model, version)


def test_rollback_walks_back_and_stops_at_the_first_activation(
    admin: TestClient, registry: Registry
) -> None:
    model, first = active(registry)
    for quantile in (0.9, 0.95):
        response = admin.post("/admin/recalibrate", json={"quantile": quantile}, headers=AUTH)
        assert response.is_success
    assert active(registry) == (model, first + 2)
    assert admin.post("/admin/rollback", headers=AUTH).json()["active"]["thresholds_version"] == (
        first + 1
    )
    assert admin.post("/admin/rollback", headers=AUTH).json()["active"]["thresholds_version"] == (
        first
    )
    refused = admin.post("/admin/rollback", headers=AUTH)
    assert refused.status_code == 409
    assert "nothing to roll back to" in refused.json()["message"]
    assert active(registry) == (model, first)


# -- audit --------------------------------------------------------------------------------------


def test_every_admin_action_writes_one_audit_line_without_the_token(
    admin: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fraudscore.audit")
    admin.post("/admin/recalibrate", json={"quantile": 0.97, "dry_run": True}, headers=AUTH)
    admin.post("/admin/rollback", headers={"Authorization": "Bearer wrong-token"})
    admin.get("/admin/jobs/20261128T120000Z-1a2b3c4d", headers=AUTH)
    lines = [r for r in caplog.records if r.name == "fraudscore.audit"]
    assert len(lines) == 3
    ok, refused, missing = (vars(r) for r in lines)
    assert (ok["who"], ok["action"], ok["status"], ok["result"]) == (
        CALLER,
        "recalibrate",
        200,
        "ok",
    )
    assert (refused["who"], refused["action"], refused["status"]) == (
        "unauthenticated",
        "rollback",
        401,
    )
    assert refused["error"] == "unauthorized"
    assert (missing["status"], missing["target"]) == (
        404,
        {"job_id": "20261128T120000Z-1a2b3c4d"},
    )
    text = json.dumps([{k: str(v) for k, v in vars(r).items()} for r in lines])
    assert TOKEN not in text
    assert "wrong-token" not in text
