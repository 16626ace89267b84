"""Two real service processes sharing one registry, scored continuously through the lifecycle.

While load runs against both replicas, an operator retrains (auto promotion), recalibrates,
promotes the old model back and rolls back, alternating between the replicas' admin APIs.
Every response must be a 200 decided by one whole model and thresholds version that was
active at some point, and both replicas must serve each change within one poll interval
(plus the time to load a model). The same convergence holds on an S3 registry (moto server).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx2
import pytest

from service.schemas import TRANSACTION_EXAMPLE
from tests.aws_fakes import moto_server_on_loopback
from tests.e2e.live_server import POLL_INTERVAL_S, LiveServer, http_client, running_server
from training.demo import DEMO_FEATURES, LABEL_COLUMN, DemoConfig, generate, write_csv
from training.registry import Registry, open_registry

TOKEN = "replica-admin-token"  # noqa: S105 - a test token
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {
    "FRAUDSCORE_POLL_INTERVAL_S": str(POLL_INTERVAL_S),
    "FRAUDSCORE_ADMIN_TOKEN": TOKEN,
    "FRAUDSCORE_PROMOTION_MAX_MSD_INCREASE": "10",
}
# A change must be served by both replicas within one poll interval; loading and validating
# a model version on a busy 2-core machine takes a moment more.
CONVERGE_S = POLL_INTERVAL_S + 1.0
BATCH = [TRANSACTION_EXAMPLE, {**TRANSACTION_EXAMPLE, "amount": 5000.0}] * 4


@dataclass
class Load:
    """Background scoring against several servers; keeps every answer."""

    urls: list[str]
    answers: list[tuple[int, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, url: str) -> None:
        with http_client(url, timeout=10.0) as client:
            while not self.stop.is_set():
                try:
                    response = client.post("/score/batch", json={"transactions": BATCH})
                    self.answers.append((response.status_code, response.json()))
                except (httpx2.HTTPError, ValueError) as exc:
                    self.failures.append(repr(exc))

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        threads = [threading.Thread(target=self.run, args=(u,), daemon=True) for u in self.urls]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=15)


def serving(server: LiveServer) -> tuple[str, int]:
    with http_client(server.base_url) as client:
        model = client.get("/model").json()
    return model["model_version"], model["thresholds_version"]


def converge(servers: list[LiveServer], registry: Registry) -> float:
    """Seconds until every server serves the registry's ACTIVE pointer."""
    pointer = registry.active()
    assert pointer is not None
    want = (pointer.model_version, pointer.thresholds_version)
    start = time.monotonic()
    while any(serving(s) != want for s in servers):
        waited = time.monotonic() - start
        assert waited < 10 * CONVERGE_S, [serving(s) for s in servers]
        time.sleep(0.02)
    return time.monotonic() - start


def admin(server: LiveServer, method: str, path: str, **kwargs: Any) -> httpx2.Response:
    with http_client(server.base_url, timeout=30.0) as client:
        return client.request(method, path, headers=AUTH, **kwargs)


def wait_for_job(server: LiveServer, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while True:
        job: dict[str, Any] = admin(server, "GET", f"/admin/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def check_whole_versions(load: Load, registry: Registry) -> set[tuple[str, int]]:
    """Every answer is a 200 from one version whose stored thresholds it used."""
    assert not load.failures, load.failures[:5]
    assert load.answers
    bad = [(status, body) for status, body in load.answers if status != 200]
    assert not bad, bad[:3]
    seen: dict[tuple[str, int], Any] = {}
    for _, body in load.answers:
        results = body["results"]
        versions = {(r["model_version"], r["thresholds_version"]) for r in results}
        assert len(versions) == 1, versions
        version = versions.pop()
        if version not in seen:
            seen[version] = registry.load_thresholds(*version).values
        for result in results:
            assert result["threshold"] == pytest.approx(seen[version][result["cluster"]])
    return set(seen)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replica-data") / "transactions.csv"
    write_csv(generate(DemoConfig(rows=3000, seed=23)), path)
    return path


def test_two_replicas_score_without_errors_through_the_whole_lifecycle(
    registry: Registry, data_file: Path, tmp_path: Path
) -> None:
    original = registry.active()
    assert original is not None
    with (
        running_server(registry.location, tmp_path / "a", env=ENV) as a,
        running_server(registry.location, tmp_path / "b", env=ENV) as b,
    ):
        servers = [a, b]
        waits: dict[str, float] = {}
        with Load([a.base_url, b.base_url]).running() as load:
            time.sleep(0.5)
            body = {
                "data": str(data_file),
                "label_column": LABEL_COLUMN,
                "features": DEMO_FEATURES,
                "k": 6,
            }
            started = admin(a, "POST", "/admin/retrain", json=body)
            assert started.status_code == 202, started.text
            # the other replica sees the job and refuses a second one
            assert admin(b, "POST", "/admin/retrain", json=body).status_code == 409
            job = wait_for_job(b, started.json()["job_id"])
            assert job["state"] == "succeeded", job
            assert job["result"]["promoted"], job
            waits["retrain"] = converge(servers, registry)

            recalibrated = admin(b, "POST", "/admin/recalibrate", json={"quantile": 0.98})
            assert recalibrated.status_code == 200, recalibrated.text
            waits["recalibrate"] = converge(servers, registry)

            promoted = admin(a, "POST", f"/admin/models/{original.model_version}/promote")
            assert promoted.status_code == 200, promoted.text
            waits["promote"] = converge(servers, registry)

            rolled = admin(b, "POST", "/admin/rollback")
            assert rolled.status_code == 200, rolled.text
            waits["rollback"] = converge(servers, registry)
            time.sleep(0.5)
        versions = check_whole_versions(load, registry)
        for server in servers:
            assert server.process.poll() is None
    new_model = job["result"]["model_version"]
    assert (original.model_version, original.thresholds_version) in versions
    assert any(model == new_model for model, _ in versions)
    assert registry.active() is not None
    assert registry.active().model_version == new_model  # type: ignore[union-attr]
    assert all(wait <= CONVERGE_S for wait in waits.values()), waits
    logging.getLogger(__name__).info("replicas converged in %s s", waits)


@pytest.fixture
def moto_s3(fake_aws: None) -> Iterator[tuple[str, str]]:  # noqa: ARG001 - fake credentials first
    """A moto server on 127.0.0.1 with a bucket and a KMS key: (endpoint URL, key id)."""
    with moto_server_on_loopback() as url:
        s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=url)
        s3.create_bucket(Bucket="fraudscore-registry")
        kms = boto3.client("kms", region_name="us-east-1", endpoint_url=url)
        yield url, kms.create_key()["KeyMetadata"]["KeyId"]


def test_replicas_on_an_s3_registry_follow_promote_recalibrate_and_rollback(
    registry: Registry,
    moto_s3: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, key = moto_s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("FRAUDSCORE_KMS_KEY_ID", key)
    location = "s3://fraudscore-registry/prod"
    remote = open_registry(location)
    for name in registry.storage.list(""):
        remote.storage.write(name, registry.storage.read(name))
    original = remote.active()
    assert original is not None
    env = {**ENV, "AWS_ENDPOINT_URL": url, "FRAUDSCORE_KMS_KEY_ID": key}
    with (
        running_server(location, tmp_path / "a", env=env) as a,
        running_server(location, tmp_path / "b", env=env) as b,
    ):
        servers = [a, b]
        with Load([a.base_url, b.base_url]).running() as load:
            recalibrated = admin(a, "POST", "/admin/recalibrate", json={"target_alert_rate": 0.03})
            assert recalibrated.status_code == 200, recalibrated.text
            first = converge(servers, remote)
            promoted = admin(
                b,
                "POST",
                f"/admin/models/{original.model_version}/promote",
                json={"thresholds_version": original.thresholds_version},
            )
            assert promoted.status_code == 200, promoted.text
            second = converge(servers, remote)
            rolled = admin(a, "POST", "/admin/rollback")
            assert rolled.status_code == 200, rolled.text
            third = converge(servers, remote)
        check_whole_versions(load, remote)
    pointer = remote.active()
    assert pointer is not None
    assert (pointer.model_version, pointer.thresholds_version) == (
        original.model_version,
        original.thresholds_version + 1,
    )
    assert max(first, second, third) <= CONVERGE_S, (first, second, third)
    logging.getLogger(__name__).info(
        "S3 replicas converged in %s s",
        {"recalibrate": first, "promote": second, "rollback": third},
    )


def test_a_job_whose_service_was_killed_ends_failed_and_frees_the_lock(
    registry: Registry, data_file: Path, tmp_path: Path
) -> None:
    before = registry.active()
    body = {
        "data": str(data_file),
        "features": DEMO_FEATURES,
        "k": 6,
        "tuning": {"max_jobs": 500, "max_parallel": 1},
    }
    with running_server(registry.location, tmp_path / "a", env=ENV) as a:
        started = admin(a, "POST", "/admin/retrain", json=body)
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        deadline = time.monotonic() + 60
        while admin(a, "GET", f"/admin/jobs/{job_id}").json()["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        a.process.kill()  # the service only: the job process runs in its own session
        a.process.wait(timeout=10)
    with running_server(registry.location, tmp_path / "b", env=ENV) as b:
        deadline = time.monotonic() + 15
        while (job := admin(b, "GET", f"/admin/jobs/{job_id}").json())["state"] == "running":
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["state"] == "failed", job
        assert "stopped" in job["error"] or "gone" in job["error"], job["error"]
        again = admin(b, "POST", "/admin/retrain", json={**body, "tuning": None})
        assert again.status_code == 202, again.text
        # the killed job never touched ACTIVE; the next one promoted its own model
        assert registry.active() == before
        finished = wait_for_job(b, again.json()["job_id"])
        assert finished["state"] == "succeeded", finished
    pointer = registry.active()
    assert pointer is not None
    assert pointer.model_version == finished["result"]["model_version"]
