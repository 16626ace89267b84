"""The service on ``backend=sagemaker`` against a loopback endpoint with 20 ms latency.

One service worker, 64 connections on ``POST /score``: throughput, p99 latency and
``invoke_endpoint`` calls per scored request, with micro-batching on and off. Targets
(micro-batching on): at least 0.8 x 64 / 0.020 s = 2,560 req/s, at most 0.2 calls per
request, p99 at most 2 x the endpoint latency + 10 ms. The endpoint is
``training.endpoint_emulator.EndpointEmulator`` (the kmeans:1 answer from the model's
centroids), reached by boto3 through ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``. Needs ``wrk``.

    .venv/bin/python benchmarks/sagemaker_backend.py [--quick] [--duration S] [--latency-ms MS]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from http_service import TRANSACTION, demo_registry, post_script, server, wrk

from training.endpoint_emulator import EndpointEmulator
from training.registry import open_registry

ENDPOINT = "fraudscore-bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="endpoint latency")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--registry", type=Path, help="registry to serve (default: demo model)")
    parser.add_argument("--quick", action="store_true", help="3 s per measurement")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark needs wrk (Debian package 'wrk')")
    if args.quick:
        args.duration = 3.0
    latency = args.latency_ms / 1000.0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        registry = args.registry or demo_registry(work)
        pointer = open_registry(registry).active()
        assert pointer is not None
        centroids = open_registry(registry).load_centroids(pointer.model_version)
        script = post_script(work, "score", json.dumps(TRANSACTION).encode())
        print(
            f"endpoint latency {args.latency_ms:g} ms, {args.connections} connections, "
            f"{args.duration:g} s, one worker"
        )
        for batching in (True, False):
            with EndpointEmulator(centroids, endpoint_name=ENDPOINT, latency_s=latency) as ep:
                env = {
                    "FRAUDSCORE_BACKEND": "sagemaker",
                    "FRAUDSCORE_ENDPOINT_NAME": ENDPOINT,
                    "FRAUDSCORE_AWS_REGION": "eu-west-1",
                    "FRAUDSCORE_MICRO_BATCH": str(batching).lower(),
                    "FRAUDSCORE_BACKEND_THREADS": "64",
                    "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": ep.url,
                    "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench",
                }
                with server("service", 1, registry, work / "server.log", env) as url:
                    wrk(url + "/score", script, 1.0, args.connections)  # warm-up
                    calls_before = ep.calls
                    rps, p99 = wrk(url + "/score", script, args.duration, args.connections)
                    calls = (ep.calls - calls_before) / (rps * args.duration)
            limit = 2 * args.latency_ms + 10
            ideal = args.connections / latency
            print(
                f"micro-batching {'on ' if batching else 'off'}: {rps:>7.0f} req/s "
                f"({rps / ideal:.2f}x of {ideal:.0f}; target >= 0.8 with batching), "
                f"p99 {p99:.1f} ms (limit {limit:.0f}), {calls:.3f} calls per request "
                f"(target <= 0.2)"
            )


if __name__ == "__main__":
    main()
