"""Admin routes (bearer token; disabled while no token is configured), each audited.

Long work (retrain) runs as a job in its own process and answers 202 with the job to
follow; short work (recalibrate, promote, rollback) runs on a worker thread, off the event
loop that scores, and answers with its outcome.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Request, Response
from pydantic import BaseModel, Field

from service.admin_schemas import (
    ActivationChange,
    JobList,
    JobView,
    Pointer,
    PromoteRequest,
    RecalibrateRequest,
    RecalibrationReport,
    RetrainRequest,
)
from service.api.deps import AdminCaller, RegistryDep, require_admin
from service.api.responses import errors, ok
from service.audit import AuditedRoute
from service.errors import Conflict, InvalidRequest, NotFound
from service.jobs import JobManager
from training.bundle import MODEL_VERSION_PATTERN
from training.errors import DataError, FraudscoreError, RegistryError
from training.jobs import JOB_ID_PATTERN, JobRecord
from training.recalibration import policy_in_force
from training.recalibration import recalibrate as recalibrate_thresholds
from training.registry import ActivePointer

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    route_class=AuditedRoute,
    # 422: FastAPI would otherwise document its own body for routes with parameters.
    responses=errors(401, 403, 422),
)


def get_jobs(request: Request) -> JobManager:
    """The app's job manager."""
    jobs: JobManager = request.app.state.jobs
    return jobs


JobsDep = Annotated[JobManager, Depends(get_jobs)]
JobId = Annotated[
    str, Path(pattern=f"^{JOB_ID_PATTERN.pattern}$", examples=["20261128T120000Z-1a2b3c4d"])
]
ModelVersionParam = Annotated[str, Path(pattern=f"^{MODEL_VERSION_PATTERN.pattern}$")]


class ModelVersion(BaseModel):
    """One registered model version."""

    model_version: str
    created_at: str
    source: dict[str, str]
    k: int
    feature_dim: int
    metrics: dict[str, float]
    thresholds_versions: list[int]
    active: bool
    active_thresholds_version: int | None = Field(
        default=None, description="The active thresholds version, on the active model."
    )


class ModelList(BaseModel):
    """Every registered model version, oldest first."""

    models: list[ModelVersion]


@router.get(
    "/models",
    summary="List model versions",
    responses=ok(ModelList, "Registered versions and which one is active."),
)
def list_models(registry: RegistryDep) -> ModelList:
    """Registered model versions with metrics, thresholds versions and the active one."""
    pointer = registry.active()
    out = []
    for manifest in registry.list_models():
        active = pointer is not None and pointer.model_version == manifest.model_version
        out.append(
            ModelVersion(
                model_version=manifest.model_version,
                created_at=manifest.created_at,
                source={key: str(value) for key, value in manifest.source.items()},
                k=manifest.k,
                feature_dim=manifest.feature_dim,
                metrics=dict(manifest.metrics),
                thresholds_versions=registry.list_thresholds(manifest.model_version),
                active=active,
                active_thresholds_version=pointer.thresholds_version
                if active and pointer is not None
                else None,
            )
        )
    return ModelList(models=out)


@router.post(
    "/retrain",
    summary="Retrain as a job",
    status_code=202,
    responses=ok(JobView, "The job was started; follow it at `Location`.", 202) | errors(409),
)
def retrain(
    body: RetrainRequest, response: Response, jobs: JobsDep, caller: AdminCaller
) -> JobView:
    """Start a retrain job (at most one per registry at a time; 409 names the running one)."""
    if not body.data.startswith("s3://") and not FilePath(body.data).is_file():
        raise InvalidRequest("no such data file", [("data", f"{body.data!r} is not a file")])
    record = jobs.start_retrain(body.model_dump(mode="json"), by=caller)
    response.headers["Location"] = f"/admin/jobs/{record.job_id}"
    return _view(record)


@router.get("/jobs", summary="List jobs", responses=ok(JobList, "Every job, newest first."))
def list_jobs(jobs: JobsDep) -> JobList:
    """Every admin job of the registry (all replicas), newest first."""
    return JobList(jobs=[_view(r) for r in jobs.list()])


@router.get(
    "/jobs/{job_id}",
    summary="Show a job",
    responses=ok(JobView, "The job's state, step, progress and result or error.") | errors(404),
)
def show_job(job_id: JobId, jobs: JobsDep) -> JobView:
    """One job: state, step, progress (trials done / total, best test:msd), result or error."""
    return _view(jobs.get(job_id))


@router.post(
    "/jobs/{job_id}/cancel",
    summary="Cancel a job",
    responses=ok(JobView, "The job, cancelled (or ended meanwhile).") | errors(404, 409),
)
def cancel_job(job_id: JobId, jobs: JobsDep, caller: AdminCaller) -> JobView:
    """Stop a running job (and its SageMaker tuning job); ACTIVE is left untouched."""
    return _view(jobs.cancel(job_id, by=caller))


@router.post(
    "/recalibrate",
    summary="Recalibrate thresholds",
    responses=ok(RecalibrationReport, "Old and new thresholds compared.") | errors(409),
)
def recalibrate(
    body: RecalibrateRequest, registry: RegistryDep, caller: AdminCaller
) -> RecalibrationReport:
    """New thresholds for the active model; written and activated unless ``dry_run``."""
    current = policy_in_force(registry)
    if current is None:
        raise Conflict("no active model to recalibrate")
    policy = current.adjusted(*body.policy_choice(), outlying_weight=body.outlying_weight)
    data = None
    if body.data is not None:
        if body.data.startswith("s3://"):
            raise InvalidRequest(
                "recalibration reads a local file", [("data", "s3:// is not supported here")]
            )
        data = FilePath(body.data)
        if not data.is_file():
            raise InvalidRequest("no such data file", [("data", f"{body.data!r} is not a file")])
    try:
        outcome = recalibrate_thresholds(
            registry,
            policy,
            data=data,
            label_column=body.label_column,
            dry_run=body.dry_run,
            by=caller,
        )
    except DataError as exc:
        field = "label_column" if exc.column and exc.column == body.label_column else "data"
        raise InvalidRequest("the data cannot be used", [(field, str(exc))]) from None
    return RecalibrationReport.model_validate(outcome.report)


@router.post(
    "/models/{model_version}/promote",
    summary="Promote a model version",
    responses=ok(ActivationChange, "The version now active.") | errors(404),
)
def promote(
    model_version: ModelVersionParam,
    registry: RegistryDep,
    caller: AdminCaller,
    body: Annotated[PromoteRequest | None, Body()] = None,
) -> ActivationChange:
    """Make a registered version active (with its latest or the given thresholds version)."""
    previous = registry.active()
    try:
        versions = registry.list_thresholds(model_version)
    except RegistryError as exc:
        raise NotFound(str(exc), [("model_version", model_version)]) from None
    wanted = body.thresholds_version if body is not None else None
    if wanted is None:
        if not versions:
            raise Conflict(f"model {model_version} has no thresholds to serve with")
        wanted = versions[-1]
    elif wanted not in versions:
        raise NotFound(
            f"model {model_version} has no thresholds version {wanted}",
            [("thresholds_version", f"it has {', '.join(map(str, versions)) or 'none'}")],
        )
    try:
        active = registry.activate(model_version, wanted, action="promote", by=caller)
    except FraudscoreError as exc:
        raise Conflict(f"cannot promote {model_version}: {exc}") from None
    return ActivationChange(
        previous=None if previous is None else _pointer(previous), active=_pointer(active)
    )


@router.post(
    "/rollback",
    summary="Roll back",
    responses=ok(ActivationChange, "The activation before the current one is back.") | errors(409),
)
def rollback(registry: RegistryDep, caller: AdminCaller) -> ActivationChange:
    """Go back to the previous active model and thresholds (repeat to go further back)."""
    try:
        previous, active = registry.rollback(by=caller)
    except FraudscoreError as exc:
        raise Conflict(str(exc)) from None
    return ActivationChange(
        previous=None if previous is None else _pointer(previous), active=_pointer(active)
    )


def _view(record: JobRecord) -> JobView:
    return JobView.model_validate(record.to_dict())


def _pointer(pointer: ActivePointer) -> Pointer:
    return Pointer(
        model_version=pointer.model_version,
        thresholds_version=pointer.thresholds_version,
        activation=pointer.activation,
    )
