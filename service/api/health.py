"""Probes, metrics and the serving model's description."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from service.api.deps import DataPlaneDep
from service.api.responses import errors, ok
from service.errors import NotReady
from service.metrics import CONTENT_TYPE
from service.schemas import Health, ModelField, ModelInfo, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness", responses=ok(Health, "The process answers."))
async def healthz() -> Health:
    """200 while the process runs; no I/O, so a busy registry never fails liveness."""
    return Health()


@router.get(
    "/readyz",
    summary="Readiness",
    responses={**ok(Readiness, "A model and its thresholds are loaded."), **errors(503)},
)
async def readyz(dataplane: DataPlaneDep) -> Readiness:
    """200 when a model and its thresholds are loaded and the backend can serve it."""
    serving = dataplane.serving()
    backend = dataplane.backend
    if backend.blocking:  # e.g. a parity call to an endpoint: keep it off the event loop
        problem = await asyncio.to_thread(backend.check, serving.model)
    else:
        problem = backend.check(serving.model)
    if problem is not None:
        raise NotReady(f"backend {dataplane.backend.name}: {problem}", dataplane.retry_after_s)
    return Readiness(
        ready=True,
        model_version=serving.pointer.model_version,
        thresholds_version=serving.pointer.thresholds_version,
        backend=dataplane.backend.name,
    )


@router.get(
    "/model",
    summary="The serving model",
    responses={**ok(ModelInfo, "The model and the fields a request must carry."), **errors(503)},
)
async def model(dataplane: DataPlaneDep) -> ModelInfo:
    """Which model and thresholds version score now, and where each model field goes."""
    serving = dataplane.serving()
    return ModelInfo(
        model_version=serving.pointer.model_version,
        thresholds_version=serving.pointer.thresholds_version,
        backend=dataplane.backend.name,
        k=serving.model.k,
        fields=[
            ModelField(
                name=source.name,
                kind="numeric" if source.numeric else "categorical",
                location=(
                    source.location if source.location != "features" else f"features.{source.name}"
                ),
                categories=None if source.categories is None else list(source.categories),
            )
            for source in serving.layout
        ],
        loaded_at=serving.loaded_at,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Requests, latency, decisions per cluster, errors and the serving versions."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
