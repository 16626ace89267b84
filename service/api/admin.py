"""Admin routes (bearer token; disabled while no token is configured)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from service.api.deps import RegistryDep, require_admin
from service.api.responses import errors, ok

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    # 422: FastAPI would otherwise document its own body for routes with parameters.
    responses=errors(401, 403, 422),
)


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
