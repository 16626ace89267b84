"""The composition root: :func:`create_app` builds the whole service from settings.

Nothing here talks to a registry or AWS at import time; the lifespan loads the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from service.api import admin, health, score
from service.asgi import FrontDoor, request_id_of
from service.auth import AdminToken, ApiKeys
from service.backends import ClusterBackend, LocalBackend
from service.dataplane import DataPlane, MicroBatchSettings
from service.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ServiceError,
    error_body,
    error_headers,
    status_of,
)
from service.jobs import JobManager
from service.logs import AccessLog
from service.metrics import ServiceMetrics
from service.model_state import ModelHolder, RegistryWatcher
from service.schemas import Transaction
from service.settings import Settings
from training.errors import FraudscoreError
from training.promotion import PromotionGate
from training.registry import Registry, open_registry

VERSION = "0.1.0"
# How often each replica looks for jobs abandoned by a dead runner (anywhere).
JOB_RECOVERY_INTERVAL_S = 10.0
DESCRIPTION = """\
Scores card transactions against a K-Means model with learned per-cluster thresholds.

**How to call it.** Send one transaction to `POST /score`, or up to the batch limit to
`POST /score/batch` (one model version answers the whole batch, in order). Put `amount`
and `tran_code` at the top level and every other field the model uses in `features`
(`GET /model` lists them). A transaction is `anomalous` when its `distance` to its
`cluster` is above that cluster's `threshold`, or when the cluster is a rare pattern;
`score` = distance / threshold, so above 1 means flagged. `reasons` name the fields
that pulled it away, with their share of the distance. Every decision carries the
`model_version` and `thresholds_version` that made it.

**Errors** have one body on every route: `error` (a code), `message`, `details`
(`field` and `problem` per bad field) and `request_id`. 422: invalid input (never
guessed); 413: body or batch too large; 401: API key missing or wrong (when keys are
configured); 503 + `Retry-After`: no model ready yet.

**Tracing.** Send `X-Request-ID` to correlate logs; it comes back in the response.
"""

log = logging.getLogger("fraudscore.service")


def micro_batch_settings(settings: Settings) -> MicroBatchSettings | None:
    """How ``settings`` coalesce calls to a blocking backend; None when micro-batching is off.

    No more calls are in flight than the backend has threads to run them.
    """
    if not settings.micro_batch:
        return None
    return MicroBatchSettings(
        max_rows=settings.micro_batch_max_rows,
        max_wait_s=settings.micro_batch_wait_ms / 1000.0,
        max_in_flight=min(settings.micro_batch_in_flight, settings.backend_threads),
    )


def create_app(
    settings: Settings,
    *,
    registry: Registry | None = None,
    backend: ClusterBackend | None = None,
    access_log: AccessLog | None = None,
    jobs: JobManager | None = None,
) -> FrontDoor:
    """The ASGI application: the FastAPI app behind the front door, wired to one registry.

    ``registry`` and ``backend`` default to the ones ``settings`` name; tests pass fakes.
    Access lines go to ``access_log`` (default: stderr) when ``settings.access_log`` is on.
    ``jobs`` runs admin jobs (default: runner processes on this machine).
    """
    if access_log is None and settings.access_log:
        access_log = AccessLog()
    registry = registry if registry is not None else open_registry(settings.registry)
    backend = backend if backend is not None else _backend(settings)
    # A blocking backend's calls wait on I/O: many at once. An embedded backend's large
    # batches are CPU work: one at a time, in arrival order, off the event loop.
    executor = (
        ThreadPoolExecutor(settings.backend_threads, thread_name_prefix="backend")
        if backend.blocking
        else ThreadPoolExecutor(1, thread_name_prefix="batch-scoring")
    )
    if jobs is None:
        jobs = JobManager(
            registry,
            gate=PromotionGate(
                max_msd_increase=settings.promotion_max_msd_increase,
                alert_rate_tolerance=settings.promotion_alert_rate_tolerance,
            ),
            stale_after_s=settings.job_stale_s,
        )
    metrics = ServiceMetrics()
    holder = ModelHolder()
    watcher = RegistryWatcher(
        registry, holder, backend, metrics, interval_s=settings.poll_interval_s
    )
    dataplane = DataPlane(
        holder,
        backend,
        metrics,
        max_batch=settings.max_batch,
        reasons=settings.reasons,
        retry_after_s=settings.retry_after_s,
        executor=executor,
        micro_batch=micro_batch_settings(settings),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(watcher.refresh)
        await asyncio.to_thread(_recover_jobs, jobs)
        if holder.current is None:
            log.warning("not ready", extra={"reason": holder.problem})
        # What exists now lives as long as the process: keep the cyclic GC off it.
        gc.collect()
        gc.freeze()
        tasks = [
            asyncio.create_task(watcher.run()),
            asyncio.create_task(_recover_jobs_every(jobs, JOB_RECOVERY_INTERVAL_S)),
        ]
        if access_log is not None:
            tasks.append(asyncio.create_task(_flush_every_second(access_log)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if access_log is not None:
                access_log.flush()
            await asyncio.to_thread(jobs.shutdown)
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="fraudscore",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "scoring", "description": "Decisions for transactions."},
            {"name": "operations", "description": "Probes, metrics, the serving model."},
            {"name": "admin", "description": "Model lifecycle (bearer token)."},
        ],
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.jobs = jobs
    app.state.holder = holder
    app.state.watcher = watcher
    app.state.dataplane = dataplane
    app.state.metrics = metrics
    app.state.api_keys = ApiKeys(settings.api_keys)
    app.state.admin_token = AdminToken(settings.admin_token)
    app.include_router(score.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    _install_error_handlers(app, metrics)
    app.openapi = lambda: _openapi(app, dataplane)  # type: ignore[method-assign]
    front = FrontDoor(
        app,
        dataplane,
        app.state.api_keys,
        metrics,
        access_log,
        max_body_bytes=settings.max_body_bytes,
    )
    return front


def _backend(settings: Settings) -> ClusterBackend:
    """The backend the settings name; a boto3 client is built here, never at import."""
    if settings.backend == "local":
        return LocalBackend()
    import boto3
    from botocore.config import Config

    from service.sagemaker_backend import SageMakerBackend

    client = boto3.client(
        "sagemaker-runtime",
        region_name=settings.aws_region,
        config=Config(
            connect_timeout=1.0,
            read_timeout=settings.invoke_timeout_s,
            retries={"mode": "standard", "max_attempts": 2},
            max_pool_connections=settings.backend_threads,
        ),
    )
    return SageMakerBackend(client, settings.endpoint_name or "", fallback=settings.fallback)


def _recover_jobs(jobs: JobManager) -> None:
    """Fail abandoned jobs; a storage hiccup is logged, never fatal to serving."""
    try:
        jobs.recover()
    except FraudscoreError as exc:
        log.warning("job recovery failed", extra={"reason": str(exc)})
    except Exception:
        # A bug here must not end the periodic task: later recoveries would never run.
        log.exception("job recovery failed unexpectedly")


async def _recover_jobs_every(jobs: JobManager, interval_s: float) -> None:
    """Find jobs whose runner died on any replica (their heartbeat stops)."""
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(_recover_jobs, jobs)


async def _flush_every_second(access_log: AccessLog) -> None:
    """Buffered access lines reach the log within about a second."""
    while True:
        await asyncio.sleep(1.0)
        access_log.flush()


def _install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Every error leaves in the one error body (see ``schemas.ErrorBody``)."""

    def respond(request: Request, exc: ServiceError) -> Response:
        metrics.observe_error(exc.code)
        headers = {k.decode(): v.decode() for k, v in error_headers(exc)}
        return Response(
            error_body(exc, request_id_of(request.scope)),
            status_code=status_of(exc),
            headers=headers,
            media_type="application/json",
        )

    async def service_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, ServiceError):
            raise exc
        return respond(request, exc)

    async def validation_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, RequestValidationError):
            raise exc
        problems = [(_field_of(error["loc"]), str(error["msg"])) for error in exc.errors()]
        return respond(request, InvalidRequest.of(problems))

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):
            raise exc
        if exc.status_code == 404:
            error: ServiceError = NotFound(f"no route {request.url.path}")
        elif exc.status_code == 405:
            error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        elif exc.status_code == 400:
            # FastAPI's answer to a body it cannot parse: the same 422 as every bad body.
            error = InvalidRequest("the body is not valid JSON", [("body", str(exc.detail))])
            return respond(request, error)
        else:
            error = ServiceError(str(exc.detail))
        response = respond(request, error)
        response.status_code = exc.status_code
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)


def _field_of(loc: Any) -> str:
    """FastAPI prefixes locations with where they came from (body, query, header)."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        prefix = "" if parts[0] == "body" else f"{parts[0]}."
        return prefix + ".".join(str(p) for p in parts[1:]) if len(parts) > 1 else parts[0]
    return ".".join(str(p) for p in parts) or "body"


def _openapi(app: FastAPI, dataplane: DataPlane) -> dict[str, Any]:
    """FastAPI's document plus the request schemas the raw scoring routes read."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (Transaction, dataplane.batch_model):
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(found.pop("$defs", {}))
        components[model.__name__] = found
    app.openapi_schema = schema
    return schema


def app_from_environment() -> FrontDoor:
    """The app as ``fraudscore serve`` runs it (uvicorn factory): settings from the environment."""
    from threadpoolctl import threadpool_limits

    from service.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level)
    # One BLAS thread per worker: scoring is many small products, and a multi-threaded
    # BLAS stalls when the other cores are busy with the other workers.
    threadpool_limits(1)
    return create_app(settings)
