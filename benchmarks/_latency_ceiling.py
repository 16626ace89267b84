"""What the SageMaker benchmark could reach on this machine at best: apps that only wait.

Run by ``benchmarks/sagemaker_backend.py`` under the same uvicorn settings as the service.
Each app reads the request, waits the endpoint's latency and answers with the body the
service gives the benchmark's transaction; nothing is parsed, validated, scored or sent.

- ``batched()``: the requests go through the service's own :class:`MicroBatcher`, with the
  service's default settings and a thread pool as large as ``serve`` gives it; each call
  sleeps the latency on its thread. It bounds the service with micro-batching: the same
  coalescing and hand-offs, with no work around them.
- ``alone()``: every request waits on the event loop by itself (one call per request, no
  thread). It bounds any service behind uvicorn, batched or not, on this machine.

What these reach below ``connections / latency`` is the cost of HTTP on loopback, the load
generator and the event loop's turns, shared by every app on the same cores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _free_endpoint import LATENCY_VARIABLE
from _raw_asgi import BODY, App, answering

from service.main import micro_batch_settings
from service.micro_batching import Columns, MicroBatcher
from service.model_state import ServingModel
from service.settings import Settings
from service.transactions import Decisions

BODY_VARIABLE = "FRAUDSCORE_BENCH_RESPONSE_BODY"


def _answering(wait: Callable[[], Awaitable[None]]) -> App:
    """The raw app answering with the body in ``BODY_VARIABLE``, after ``wait()``."""
    return answering(os.environ.get(BODY_VARIABLE, BODY.decode()).encode(), wait)


def alone() -> App:
    """Each request waits the latency on the event loop (uvicorn factory)."""
    latency_s = float(os.environ[LATENCY_VARIABLE])

    async def wait() -> None:
        await asyncio.sleep(latency_s)

    return _answering(wait)


def batched() -> App:
    """Requests coalesced by the service's micro-batcher, each call a sleep (uvicorn factory)."""
    latency_s = float(os.environ[LATENCY_VARIABLE])
    settings = Settings()
    shape = micro_batch_settings(settings)  # the service's, from the same environment
    if shape is None:
        raise SystemExit("FRAUDSCORE_MICRO_BATCH is off: this app measures the micro-batcher")

    def call(_: ServingModel, __: Columns, ids: Sequence[str]) -> Decisions:
        time.sleep(latency_s)
        n = len(ids)
        return Decisions(bodies=[{}] * n, clusters=[0] * n, anomalous=[False] * n, backend="")

    executor = ThreadPoolExecutor(settings.backend_threads)
    batcher = MicroBatcher(call, executor, **dataclasses.asdict(shape))
    serving: Any = object()  # one model version: the batcher only compares it by identity
    columns: Columns = {"amount": [0.0]}

    async def wait() -> None:
        await batcher.submit(serving, columns, ("t",))

    return _answering(wait)
