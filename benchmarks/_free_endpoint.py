"""The SageMaker benchmark's ceiling: the service whose endpoint calls cost no client CPU.

Run by ``benchmarks/sagemaker_backend.py`` under the same uvicorn settings as
``fraudscore serve``. ``app()`` is the service as ``serve`` builds it from the environment
(``backend=sagemaker``, micro-batching, worker threads, metrics, access log), with one
change: the ``sagemaker-runtime`` client is replaced by :class:`FreeClient`, which waits the
endpoint's latency on the calling thread and answers as the endpoint would, with no request
built, signed or sent. What the service reaches here bounds what any client could reach on
the same machine.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any

from service.logs import configure_logging
from service.main import create_app
from service.sagemaker_backend import SageMakerBackend
from service.settings import Settings
from training.endpoint_emulator import EndpointEmulator
from training.registry import open_registry

LATENCY_VARIABLE = "FRAUDSCORE_BENCH_ENDPOINT_LATENCY_S"


class FreeClient:
    """Answers ``invoke_endpoint`` in process, after the endpoint's latency."""

    def __init__(self, answers: EndpointEmulator, latency_s: float) -> None:
        self.answers = answers
        self.latency_s = latency_s

    def invoke_endpoint(self, *, Body: bytes, **_: Any) -> dict[str, Any]:  # boto3 names
        """The endpoint's JSON answer for ``Body``, as boto3 returns it."""
        time.sleep(self.latency_s)
        return {"Body": io.BytesIO(self.answers.predict(Body))}


def app() -> Any:
    """The service with :class:`FreeClient` (uvicorn factory); settings from the environment."""
    settings = Settings()
    configure_logging(settings.log_level)
    registry = open_registry(settings.registry)
    pointer = registry.active()
    if pointer is None:
        raise SystemExit(f"no active model in {settings.registry}")
    # Only its answer is used: the emulator's socket is bound but never served.
    answers = EndpointEmulator(registry.load_centroids(pointer.model_version))
    client = FreeClient(answers, float(os.environ[LATENCY_VARIABLE]))
    backend = SageMakerBackend(client, settings.endpoint_name or "", fallback=False)
    return create_app(settings, registry=registry, backend=backend)
