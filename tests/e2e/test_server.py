"""End to end: a real ``fraudscore serve`` process over real HTTP.

Scoring, request ids, probes, metrics and docs; hot swaps of the active version while
requests are in flight; broken versions refused while the old one keeps serving; SIGTERM;
and two worker processes behind one port.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.live_server import (
    POLL_INTERVAL_S,
    LiveServer,
    http_client,
    is_json_object,
    running_server,
)
from tests.factories import make_thresholds
from tests.service.conftest import activate_thresholds, transaction
from training.registry import Registry

Versions = tuple[str, int]
# How long a change of ACTIVE may take to show in responses: many poll intervals.
SWAP_DEADLINE_S = 5.0


def active_versions(registry: Registry) -> Versions:
    pointer = registry.active()
    assert pointer is not None
    return pointer.model_version, pointer.thresholds_version


def versions_of(body: dict[str, Any]) -> Versions:
    return body["model_version"], body["thresholds_version"]


def batch(n: int, prefix: str = "t") -> dict[str, Any]:
    return {
        "transactions": [
            transaction(transaction_id=f"{prefix}{i}", amount=float(10 ** (i % 5)))
            for i in range(n)
        ]
    }


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None when there is no such sample."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def wait_for_versions(server: LiveServer, expected: Versions) -> dict[str, Any]:
    """Poll POST /score until ``expected`` decides; fails after SWAP_DEADLINE_S."""
    deadline = time.monotonic() + SWAP_DEADLINE_S
    seen = []
    with http_client(server.base_url) as client:
        while True:
            response = client.post("/score", json=transaction())
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if versions_of(body) == expected:
                return body
            seen.append(versions_of(body))
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{expected} did not serve within {SWAP_DEADLINE_S} s (last {seen[-1]}); "
                    f"stderr:\n{server.stderr()[-4000:]}"
                )
            time.sleep(0.02)


def write_active(registry: Registry, pointer: dict[str, Any]) -> None:
    """Point ACTIVE at ``pointer`` by hand (no validation), atomically: temp file + rename."""
    root = Path(registry.location)
    temp = root / ".ACTIVE.e2e-tmp"
    temp.write_text(json.dumps(pointer))
    os.replace(temp, root / "ACTIVE")


# -- scoring over HTTP -----------------------------------------------------------------------


def test_score_and_batch_return_the_active_versions_and_echo_the_request_id(
    server: LiveServer, registry: Registry
) -> None:
    active = active_versions(registry)
    with http_client(server.base_url) as client:
        one = client.post(
            "/score", json=transaction(transaction_id="e2e-1"), headers={"X-Request-ID": "e2e-a.1"}
        )
        many = client.post("/score/batch", json=batch(7), headers={"X-Request-ID": "e2e-b:2"})

    assert one.status_code == 200, one.text
    assert one.headers["content-type"] == "application/json"
    assert one.headers["x-request-id"] == "e2e-a.1"
    body = one.json()
    assert body["transaction_id"] == "e2e-1"
    assert versions_of(body) == active
    assert body["backend"] == "local"
    assert body["score"] == pytest.approx(body["distance"] / body["threshold"])

    assert many.status_code == 200, many.text
    assert many.headers["x-request-id"] == "e2e-b:2"
    results = many.json()["results"]
    assert [r["transaction_id"] for r in results] == [f"t{i}" for i in range(7)]
    assert {versions_of(r) for r in results} == {active}


def test_errors_carry_the_request_id_in_header_and_body(server: LiveServer) -> None:
    with http_client(server.base_url) as client:
        bad = client.post(
            "/score",
            json=transaction(amount="12.50"),
            headers={"X-Request-ID": "e2e-bad-amount"},
        )
        unplain = client.post("/score", json=transaction(), headers={"X-Request-ID": "a b/c"})
        missing = client.get("/no/such/route")

    assert bad.status_code == 422, bad.text
    assert bad.headers["x-request-id"] == "e2e-bad-amount"
    error = bad.json()
    assert error["error"] == "invalid_request"
    assert error["request_id"] == "e2e-bad-amount"
    assert [d["field"] for d in error["details"]] == ["amount"]

    # An id that is not short and plain is replaced by a fresh one, never echoed.
    assert unplain.status_code == 200, unplain.text
    fresh = unplain.headers["x-request-id"]
    assert fresh != "a b/c"
    assert len(fresh) == 32
    int(fresh, 16)

    assert missing.status_code == 404
    assert missing.json()["request_id"] == missing.headers["x-request-id"]


def test_probes_metrics_and_docs_answer(server: LiveServer, registry: Registry) -> None:
    with http_client(server.base_url) as client:
        for i in range(3):
            assert (
                client.post("/score", json=transaction(transaction_id=f"m{i}")).status_code == 200
            )
        health = client.get("/healthz")
        ready = client.get("/readyz")
        model = client.get("/model")
        metrics = client.get("/metrics")
        docs = client.get("/docs")
        openapi = client.get("/openapi.json")

    assert health.status_code == 200
    assert health.json() == {"status": "ok"}

    assert ready.status_code == 200
    model_version, thresholds_version = active_versions(registry)
    assert ready.json() == {
        "ready": True,
        "reason": None,
        "model_version": model_version,
        "thresholds_version": thresholds_version,
        "backend": "local",
    }
    assert model.status_code == 200
    assert model.json()["k"] == 6

    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    requests_total = metric_value(
        metrics.text, "fraudscore_http_requests_total", route="/score", method="POST", status="200"
    )
    assert requests_total == 3.0, metrics.text
    info = metric_value(metrics.text, "fraudscore_model_info")
    assert info == 1.0

    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in docs.text
    assert "/openapi.json" in docs.text

    assert openapi.status_code == 200
    assert {"/score", "/score/batch", "/healthz", "/readyz"} <= set(openapi.json()["paths"])

    # The banner on stdout says where; the logs on stderr are JSON lines, one per request too.
    assert server.stdout().startswith(
        f"fraudscore: serving {registry.location} on {server.base_url}"
    )
    access = server.wait_for_log("request", path="/metrics")
    assert access["status"] == 200
    assert access["request_id"] == metrics.headers["x-request-id"]
    lines = server.stderr_lines()
    assert [line for line in lines if not is_json_object(line)] == []


# -- hot swap ----------------------------------------------------------------------------------


class BatchTraffic:
    """A thread that sends batches until stopped, noting each batch's set of versions."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.seen: list[frozenset[Versions]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BatchTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        body = batch(50)
        with http_client(self.base_url) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/score/batch", json=body)
                except Exception as exc:  # reported by the test, not lost in the thread
                    self.failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text}")
                    continue
                results = response.json()["results"]
                if len(results) != 50:
                    self.failures.append(f"{len(results)} results for 50 transactions")
                self.seen.append(frozenset(versions_of(r) for r in results))


def test_a_new_thresholds_version_is_swapped_in_while_serving(
    server: LiveServer, registry: Registry
) -> None:
    old = active_versions(registry)
    with BatchTraffic(server.base_url) as traffic:
        deadline = time.monotonic() + SWAP_DEADLINE_S
        while not traffic.seen and not traffic.failures:  # requests are in flight
            assert time.monotonic() < deadline, "the batch traffic got no answer"
            time.sleep(0.01)
        version = activate_thresholds(registry, 0.5)
        new = (old[0], version)
        body = wait_for_versions(server, new)
        # Keep the traffic going until it has seen the new version too.
        deadline = time.monotonic() + SWAP_DEADLINE_S
        while frozenset({new}) not in traffic.seen and not traffic.failures:
            assert time.monotonic() < deadline, "the batch traffic never saw the new version"
            time.sleep(0.02)

    assert body["threshold"] == 0.5
    assert not traffic.failures, traffic.failures[:5]
    assert traffic.seen
    # Every batch was answered by exactly one version, the old or the new one.
    assert all(len(versions) == 1 for versions in traffic.seen), traffic.seen
    order = [next(iter(versions)) for versions in traffic.seen]
    assert set(order) == {old, new}
    # One worker: once the new version answered, the old one never did again.
    first_new = order.index(new)
    assert all(v == new for v in order[first_new:]), order
    loaded = server.wait_for_log("model loaded", thresholds_version=version)
    assert versions(loaded["replaced"]) == old
    with http_client(server.base_url) as client:
        assert client.get("/readyz").json()["thresholds_version"] == version


# -- broken versions -----------------------------------------------------------------------------


def corrupt_thresholds(registry: Registry) -> dict[str, Any]:
    """A new thresholds file of the active model that is not valid JSON, made active by hand."""
    model_version, _ = active_versions(registry)
    version = registry.list_thresholds(model_version)[-1] + 1
    path = Path(registry.location) / "models" / model_version / "thresholds" / f"{version}.json"
    path.write_text('{"version": ' + str(version) + ', "model_version": "' + model_version)
    pointer = {"model_version": model_version, "thresholds_version": version}
    write_active(registry, pointer)
    return pointer


def truncated_model(registry: Registry) -> dict[str, Any]:
    """A copy of the active model version whose model.tar.gz is cut in half, made active."""
    model_version, thresholds_version = active_versions(registry)
    models = Path(registry.location) / "models"
    broken = f"{model_version}-truncated"
    source, target = models / model_version, models / broken
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("manifest.json"))
    for path in (target / "thresholds").glob("*.json"):
        data = json.loads(path.read_text())
        data["model_version"] = broken
        path.write_text(json.dumps(data))
    artifact = target / "model.tar.gz"
    content = artifact.read_bytes()
    artifact.write_bytes(content[: len(content) // 2])
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["model_version"] = broken
    (target / "manifest.json").write_text(json.dumps(manifest))  # last: the version exists now
    pointer = {"model_version": broken, "thresholds_version": thresholds_version}
    write_active(registry, pointer)
    return pointer


@pytest.mark.parametrize(
    "break_registry", [corrupt_thresholds, truncated_model], ids=["corrupt-thresholds", "truncated"]
)
def test_a_broken_version_is_refused_while_the_old_one_keeps_serving(
    server: LiveServer,
    registry: Registry,
    break_registry: Callable[[Registry], dict[str, Any]],
) -> None:
    old = active_versions(registry)
    pointer = break_registry(registry)

    refused = server.wait_for_log("model refused", **pointer)
    assert refused["level"] == "ERROR"
    assert versions(refused["serving"]) == old
    assert refused["reason"]
    with http_client(server.base_url) as client:
        for i in range(5):
            response = client.post("/score", json=transaction(transaction_id=f"r{i}"))
            assert response.status_code == 200, response.text
            assert versions_of(response.json()) == old
        many = client.post("/score/batch", json=batch(5))
        assert many.status_code == 200, many.text
        assert {versions_of(r) for r in many.json()["results"]} == {old}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert (ready.json()["model_version"], ready.json()["thresholds_version"]) == old
        metrics = client.get("/metrics").text
    assert metric_value(metrics, "fraudscore_model_loads_total", result="refused") == 1.0

    # The watcher is not stuck on the refused version: a good one is still picked up.
    k = registry.load_manifest(old[0]).k
    stored = registry.save_thresholds(
        make_thresholds(old[0], k, values=np.full(k, 0.75), parent=old[1])
    )
    registry.activate(old[0], stored.version)
    body = wait_for_versions(server, (old[0], stored.version))
    assert body["threshold"] == 0.75
    # The broken version was refused once, not again at every poll.
    refusals = [r for r in server.log_records() if r.get("message") == "model refused"]
    assert len(refusals) == 1, refusals


# -- stopping -------------------------------------------------------------------------------------


def test_sigterm_stops_the_server_gracefully_with_exit_code_0(server: LiveServer) -> None:
    with http_client(server.base_url) as client:
        assert client.post("/score", json=transaction()).status_code == 200

    code = server.terminate(timeout_s=10.0)

    assert code is not None, "the server did not exit within 10 s of SIGTERM"
    messages = [r.get("message") for r in server.log_records()]
    assert "Application shutdown complete." in messages, server.stderr()[-2000:]
    assert code == 0, f"exit code {code} after SIGTERM; stderr:\n{server.stderr()[-2000:]}"


# -- several workers ------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """Every process below ``root``: pid -> start time."""
    parents: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                parents.setdefault(stat[1], []).append((int(entry.name), stat[2]))
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for pid, started in parents.get(todo.pop(), []):
            found[pid] = started
            todo.append(pid)
    return found


def _alive(pid: int, started: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[2] == started and stat[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


@pytest.mark.skipif(sys.platform != "linux", reason="reads the process tree from /proc")
def test_two_workers_serve_and_sigterm_stops_them_all(registry: Registry, tmp_path: Path) -> None:
    active = active_versions(registry)
    with running_server(
        registry.location,
        tmp_path / "logs",
        workers=2,
        env={"FRAUDSCORE_POLL_INTERVAL_S": str(POLL_INTERVAL_S)},
    ) as server:
        # Both workers load the model; the second may still be starting when /readyz answers.
        server.wait_for_log("model loaded")
        deadline = time.monotonic() + 20.0
        while len([r for r in server.log_records() if r.get("message") == "model loaded"]) < 2:
            assert time.monotonic() < deadline, server.stderr()[-4000:]
            time.sleep(0.05)
        children = _descendants(server.pid)
        workers = [pid for pid in children if "spawn_main" in _cmdline(pid)]
        assert len(workers) == 2, {pid: _cmdline(pid) for pid in children}
        assert all(_alive(pid, children[pid]) for pid in workers)

        # Many requests, each on a new connection: the kernel spreads them over the workers.
        for i in range(40):
            with http_client(server.base_url) as client:
                response = client.post("/score", json=transaction(transaction_id=f"w{i}"))
            assert response.status_code == 200, response.text
            assert versions_of(response.json()) == active
        with http_client(server.base_url) as client:
            response = client.post("/score/batch", json=batch(20))
        assert response.status_code == 200, response.text
        assert {versions_of(r) for r in response.json()["results"]} == {active}

        code = server.terminate(timeout_s=10.0)
        assert code is not None, "the supervisor did not exit within 10 s of SIGTERM"
        assert code == 0, f"exit code {code}; stderr:\n{server.stderr()[-2000:]}"
        deadline = time.monotonic() + 5.0
        while left := [pid for pid, started in children.items() if _alive(pid, started)]:
            assert time.monotonic() < deadline, {pid: _cmdline(pid) for pid in left}
            time.sleep(0.05)


def versions(pointer: dict[str, Any]) -> tuple[str, int]:
    """The model and thresholds versions of a logged pointer (its activation number aside)."""
    return pointer["model_version"], pointer["thresholds_version"]
