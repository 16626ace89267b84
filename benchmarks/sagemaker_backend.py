"""The service on ``backend=sagemaker`` against a loopback endpoint with 20 ms latency.

One service worker, 64 connections on ``POST /score``: throughput, p99 latency and
``invoke_endpoint`` calls per scored request, with micro-batching on and off. Targets
(micro-batching on): at least 0.8 x 64 / 0.020 s = 2,560 req/s, at most 0.2 calls per
request, p99 at most 2 x the endpoint latency + 10 ms. The endpoint is
``training.endpoint_emulator.EndpointEmulator`` (the kmeans:1 answer from the model's
centroids), reached by boto3 through ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``. Needs ``wrk``.

A third mode takes the boto3 call out: the same service with micro-batching on, but its
``sagemaker-runtime`` client replaced by one that waits the endpoint's latency in process and
costs nothing else (``benchmarks/_free_endpoint.py``). It shows how much of the gap to the
target is the boto3 call, and how much is everything else on the machine (HTTP, the service's
own work, batching, wrk).

Two more modes measure what this machine allows at all (``benchmarks/_latency_ceiling.py``):
apps under the same uvicorn settings that read each request, wait the endpoint's latency and
send the service's response, and do nothing else; one through the service's own
micro-batcher with its default settings (the ceiling of the service's design), one letting
every request wait alone on the event loop (the ceiling of any service behind uvicorn here).
What they fall short of 64 / latency is the HTTP round trip on loopback, wrk and the event
loop's turns, on the same cores.

Each measurement also gives the CPU the service process used meanwhile (from ``/proc``), in
cores: all its threads, and its main thread alone, the event loop that reads and answers
every request. An event loop well short of one core is not what limits the throughput: the
requests' latency is (each waits for the others of its burst, and for the hand-offs of its
call to a thread and back).

Everything shares the machine's cores (wrk, the service, the emulator): on a busy machine
the numbers move by 10-20 % from run to run. ``--rounds N`` measures N times, the five
modes in turn, and prints every measurement (with the load average it ran under) and the
medians.

    .venv/bin/python benchmarks/sagemaker_backend.py [--quick] [--duration S] [--rounds N]
        [--latency-ms MS]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
from _free_endpoint import LATENCY_VARIABLE
from _latency_ceiling import BODY_VARIABLE
from http_service import TRANSACTION, check, demo_registry, post_script, server, wrk

from training.endpoint_emulator import EndpointEmulator
from training.registry import open_registry

ENDPOINT = "fraudscore-bench"


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One wrk run against the service."""

    rps: float
    p99_ms: float
    calls_per_request: float | None  # None: no emulator counted them (the modes without boto3)
    rows_per_call: float | None
    load: float  # the machine's 1-minute load average when the run ended
    cpu: Usage | None  # the service process's, during the measurement (None: no /proc)


@dataclasses.dataclass(frozen=True)
class Usage:
    """CPU the service used during a measurement, in cores (1.0: one core all the time)."""

    process: float  # all its threads
    loop: float  # its main thread: the event loop


def _cpu_seconds(pid: int) -> tuple[float, float] | None:
    """CPU seconds process ``pid`` has used: (all threads, main thread); None without /proc."""
    tick = os.sysconf("SC_CLK_TCK")

    def used(stat: str) -> float:
        # After the command name in parentheses: state is field 3, utime 14, stime 15.
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    try:
        return used(f"/proc/{pid}/stat"), used(f"/proc/{pid}/task/{pid}/stat")
    except OSError:
        return None


def _cpu_used(pid: int, before: tuple[float, float] | None, wall_s: float) -> Usage | None:
    """The CPU process ``pid`` used since ``before`` (from :func:`_cpu_seconds`), in cores."""
    after = _cpu_seconds(pid)
    if before is None or after is None:
        return None
    return Usage((after[0] - before[0]) / wall_s, (after[1] - before[1]) / wall_s)


@dataclasses.dataclass(frozen=True)
class Mode:
    """What one measurement runs: an app of ``http_service.server``, with or without
    micro-batching, and whether its endpoint calls reach the emulator through boto3."""

    kind: str
    batching: bool
    boto3: bool


TARGET_MODE = "micro-batching on"  # the mode the targets are for
MODES = {
    TARGET_MODE: Mode("service", batching=True, boto3=True),
    "micro-batching off": Mode("service", batching=False, boto3=True),
    "on, free client": Mode("free-endpoint", batching=True, boto3=False),
    # The machine's ceilings: apps that only wait the latency (benchmarks/_latency_ceiling.py).
    "only waits, batched": Mode("wait-batched", batching=True, boto3=False),
    "only waits, alone": Mode("wait-alone", batching=False, boto3=False),
}


def service_env(latency_s: float, batching: bool) -> dict[str, str]:
    """The service's environment in every mode (the emulator's URL is added with boto3)."""
    return {
        "FRAUDSCORE_BACKEND": "sagemaker",
        "FRAUDSCORE_ENDPOINT_NAME": ENDPOINT,
        "FRAUDSCORE_AWS_REGION": "eu-west-1",
        "FRAUDSCORE_MICRO_BATCH": str(batching).lower(),
        "FRAUDSCORE_BACKEND_THREADS": "64",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        LATENCY_VARIABLE: str(latency_s),
    }


def service_answer(registry: Path, work: Path, latency_s: float) -> bytes:
    """The service's response body to the benchmark's transaction (the ceilings send it)."""
    env = service_env(latency_s, batching=True)
    with server("free-endpoint", 1, registry, work / "server.log", env) as running:
        return check(running.url + "/score", json.dumps(TRANSACTION).encode())


def measure(
    registry: Path,
    work: Path,
    centroids: npt.NDArray[np.float32],
    mode: Mode,
    *,
    answer: bytes,
    latency_s: float,
    duration_s: float,
    connections: int,
) -> Measurement:
    """Start an endpoint (with boto3) and one worker of the mode's app, warm up, then
    measure with wrk. The ceilings answer with ``answer``."""
    script = post_script(work, "score", json.dumps(TRANSACTION).encode())
    env = service_env(latency_s, mode.batching)
    env[BODY_VARIABLE] = answer.decode()
    with contextlib.ExitStack() as stack:
        ep: EndpointEmulator | None = None
        if mode.boto3:
            ep = stack.enter_context(
                EndpointEmulator(centroids, endpoint_name=ENDPOINT, latency_s=latency_s)
            )
            env["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = ep.url
        running = stack.enter_context(server(mode.kind, 1, registry, work / "server.log", env))
        url = running.url + "/score"
        wrk(url, script, 1.0, connections)  # warm-up
        calls_before, rows_before = (ep.calls, ep.rows) if ep is not None else (0, 0)
        cpu_before, start = _cpu_seconds(running.pid), time.perf_counter()
        rps, p99 = wrk(url, script, duration_s, connections)
        cpu = _cpu_used(running.pid, cpu_before, time.perf_counter() - start)
        per_request = per_call = None
        if ep is not None:
            calls, rows = ep.calls - calls_before, ep.rows - rows_before
            per_request, per_call = calls / (rps * duration_s), rows / max(calls, 1)
    return Measurement(rps, p99, per_request, per_call, os.getloadavg()[0], cpu)


def _calls(m: Measurement) -> str:
    if m.calls_per_request is None or m.rows_per_call is None:
        return "calls not counted"
    return (
        f"{m.calls_per_request:.3f} calls per request (target <= 0.2), "
        f"{m.rows_per_call:.1f} rows per call"
    )


def _cpu(m: Measurement) -> str:
    if m.cpu is None:
        return ""
    return (
        f", service CPU {m.cpu.process:.2f} cores (event loop {m.cpu.loop:.2f}, "
        f"{m.cpu.process / m.rps * 1e6:.0f} µs per request)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="endpoint latency")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each mode")
    parser.add_argument("--registry", type=Path, help="registry to serve (default: demo model)")
    parser.add_argument("--quick", action="store_true", help="3 s per measurement")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark needs wrk (Debian package 'wrk')")
    if args.quick:
        args.duration = 3.0
    latency = args.latency_ms / 1000.0
    limit = 2 * args.latency_ms + 10
    ideal = args.connections / latency
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        registry = args.registry or demo_registry(work)
        pointer = open_registry(registry).active()
        assert pointer is not None
        centroids = open_registry(registry).load_centroids(pointer.model_version)
        print(
            f"endpoint latency {args.latency_ms:g} ms, {args.connections} connections, "
            f"{args.duration:g} s, one worker"
        )
        answer = service_answer(registry, work, latency)
        results: dict[str, list[Measurement]] = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode, how in MODES.items():
                m = measure(
                    registry,
                    work,
                    centroids,
                    how,
                    answer=answer,
                    latency_s=latency,
                    duration_s=args.duration,
                    connections=args.connections,
                )
                results[mode].append(m)
                target = "; target >= 0.8" if mode == TARGET_MODE else ""
                print(
                    f"{mode:<19}: {m.rps:>7.0f} req/s "
                    f"({m.rps / ideal:.2f}x of {ideal:.0f}{target}), "
                    f"mean {args.connections / m.rps * 1000:.1f} ms, "
                    f"p99 {m.p99_ms:.1f} ms (limit {limit:.0f}), {_calls(m)}{_cpu(m)}, "
                    f"load {m.load:.1f}",
                    flush=True,
                )
        if args.rounds > 1:
            for mode, runs in results.items():
                rps = statistics.median(m.rps for m in runs)
                counted = [m.calls_per_request for m in runs if m.calls_per_request is not None]
                calls = f", {statistics.median(counted):.3f} calls per request" if counted else ""
                print(
                    f"median, {mode:<19}: {rps:>7.0f} req/s ({rps / ideal:.2f}x), "
                    f"p99 {statistics.median(m.p99_ms for m in runs):.1f} ms{calls}"
                )


if __name__ == "__main__":
    main()
