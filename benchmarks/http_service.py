"""HTTP throughput and latency of the service against a bare ASGI app, on loopback, with wrk.

Measured in one run, alternating baseline and service so both see the same machine:

- ``/score`` (one transaction, full pipeline: validation, features, distance, threshold,
  reasons, metrics, request id, access log), one worker, 16 connections: throughput and
  p99 latency against a raw ASGI app returning constant JSON under the same uvicorn
  (uvloop + httptools, one worker). Targets: at least 0.33x the raw throughput, p99 at
  most 2x raw + 2 ms.
- ``/score/batch`` with 1000 transactions: transactions per second per worker (at least 50,000).
- Two workers against one, for both routes (at least 1.6x on two cores).

Needs ``wrk`` (Debian package ``wrk``). The load generator shares the machine's cores.

    .venv/bin/python benchmarks/http_service.py [--quick] [--duration S] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service.schemas import TRANSACTION_EXAMPLE

ROOT = Path(__file__).resolve().parent.parent
TRANSACTION = TRANSACTION_EXAMPLE  # the documented example: every demo model field
# Apps in benchmarks/ that uvicorn runs like the service: kind -> (target, is a factory).
BENCHMARK_APPS = {
    "raw": ("_raw_asgi:app", False),  # constant JSON: the HTTP baseline
    "free-endpoint": ("_free_endpoint:app", True),  # the service, endpoint calls cost nothing
    "wait-batched": ("_latency_ceiling:batched", True),  # only waits, batched like the service
    "wait-alone": ("_latency_ceiling:alone", True),  # only waits, each request by itself
}


@dataclass(frozen=True)
class Running:
    """A server started by :func:`server`: its base URL and process id."""

    url: str
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 (loopback)
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"no answer from {url} within {timeout_s:.0f} s")


@contextmanager
def server(
    kind: str, workers: int, registry: Path, log: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[Running]:
    """Start a benchmark app (``BENCHMARK_APPS``) or the service on a free loopback port;
    yield its URL and process (with one worker, the process that serves)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(extra_env or {}))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    if kind in BENCHMARK_APPS:
        target, factory = BENCHMARK_APPS[kind]
        command = [
            sys.executable, "-m", "uvicorn", target, "--app-dir", str(ROOT / "benchmarks"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
            *(["--factory", "--no-server-header"] if factory else []),
        ]  # fmt: skip
        probe = "/"
        if factory:  # the service's app factory, configured as `serve` would configure it
            env["FRAUDSCORE_REGISTRY"] = str(registry)
            env["FRAUDSCORE_ACCESS_LOG"] = "true"
            probe = "/readyz"
    else:
        command = [
            sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers), "--registry", str(registry),
        ]  # fmt: skip
        env["FRAUDSCORE_ACCESS_LOG"] = "true"
        probe = "/readyz"
    with log.open("ab") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=sink)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + probe, process)
        yield Running(url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def post_script(directory: Path, name: str, body: bytes) -> Path:
    path = directory / f"{name}.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
    )
    return path


def check(url: str, body: bytes) -> bytes:
    """One request before the load: the route must answer 200 with a decision (returned)."""
    request = urllib.request.Request(  # noqa: S310 (loopback)
        url, data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        if response.status != 200:
            raise SystemExit(f"{url} answered {response.status}")
        answer: bytes = response.read()
        json.loads(answer)
        return answer


def wrk(url: str, script: Path, seconds: float, connections: int) -> tuple[float, float]:
    """Requests per second and p99 latency in ms."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script)]
    out = subprocess.run(
        [*command, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"errors under load at {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert p99 is not None
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return rps, float(p99.group(1)) * scale


def demo_registry(directory: Path) -> Path:
    """A registry with the demo model, trained here (a few seconds)."""
    registry = directory / "registry"
    subprocess.run(
        [sys.executable, "-m", "service.cli", "--no-progress", "demo", "--registry", str(registry)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=True,
        capture_output=True,
    )
    return registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--registry", type=Path, help="registry to serve (default: demo model)")
    parser.add_argument("--quick", action="store_true", help="3 s per measurement, one round")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark needs wrk (Debian package 'wrk')")
    if args.quick:
        args.duration, args.rounds = 3.0, 1
    single = json.dumps(TRANSACTION).encode()
    batch = json.dumps(
        {"transactions": [dict(TRANSACTION, transaction_id=f"tx-{i}") for i in range(1000)]}
    ).encode()
    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        registry = args.registry or demo_registry(work)
        scripts = {
            "score": post_script(work, "score", single),
            "batch": post_script(work, "batch", batch),
        }
        log = work / "server.log"
        plan = [
            ("raw 1w /score", "raw", 1, "/score", "score"),
            ("service 1w /score", "service", 1, "/score", "score"),
            ("service 1w /score/batch", "service", 1, "/score/batch", "batch"),
            ("raw 2w /score", "raw", 2, "/score", "score"),
            ("service 2w /score", "service", 2, "/score", "score"),
            ("service 2w /score/batch", "service", 2, "/score/batch", "batch"),
        ]
        for round_ in range(args.rounds):
            for label, kind, workers, route, script in plan:
                with server(kind, workers, registry, log) as running:
                    url = running.url
                    body = single if script == "score" else batch
                    if kind == "service":
                        check(url + route, body)
                    wrk(url + route, scripts[script], 1.0, args.connections)  # warm-up
                    measured = wrk(url + route, scripts[script], args.duration, args.connections)
                results.setdefault(label, []).append(measured)
                print(
                    f"round {round_ + 1}: {label:<26} {measured[0]:>9.0f} req/s  "
                    f"p99 {measured[1]:.2f} ms",
                    flush=True,
                )

    def med(label: str) -> tuple[float, float]:
        runs = results[label]
        return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)

    raw_rps, raw_p99 = med("raw 1w /score")
    one_rps, one_p99 = med("service 1w /score")
    batch_rps, _ = med("service 1w /score/batch")
    raw2_rps, _ = med("raw 2w /score")
    two_rps, _ = med("service 2w /score")
    batch2_rps, _ = med("service 2w /score/batch")
    print()
    print(
        f"medians over {args.rounds} round(s) of {args.duration:g} s, "
        f"{args.connections} connections"
    )
    print(f"raw ASGI, 1 worker:      {raw_rps:>9.0f} req/s   p99 {raw_p99:.2f} ms")
    print(
        f"/score, 1 worker:        {one_rps:>9.0f} req/s   p99 {one_p99:.2f} ms   "
        f"throughput {one_rps / raw_rps:.2f}x raw (target >= 0.33), "
        f"p99 limit {2 * raw_p99 + 2:.2f} ms ({'met' if one_p99 <= 2 * raw_p99 + 2 else 'MISSED'})"
    )
    print(
        f"/score/batch, 1 worker:  {batch_rps * 1000:>9.0f} transactions/s "
        f"({batch_rps:.1f} batches of 1000; target >= 50000)"
    )
    print(
        f"2 workers vs 1:          /score {two_rps / one_rps:.2f}x, "
        f"/score/batch {batch2_rps / batch_rps:.2f}x (target >= 1.6), "
        f"raw app {raw2_rps / raw_rps:.2f}x"
    )


if __name__ == "__main__":
    main()
