"""Typed dependencies: the composition root's objects, reached from a request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from service.auth import AdminToken, ApiKeys
from service.dataplane import DataPlane
from service.model_state import ModelHolder
from service.settings import Settings
from training.registry import Registry


def get_dataplane(request: Request) -> DataPlane:
    """The app's data plane."""
    dataplane: DataPlane = request.app.state.dataplane
    return dataplane


def get_holder(request: Request) -> ModelHolder:
    """The app's model holder."""
    holder: ModelHolder = request.app.state.holder
    return holder


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


def get_registry(request: Request) -> Registry:
    """The app's registry."""
    registry: Registry = request.app.state.registry
    return registry


def require_api_key(
    request: Request,
    x_api_key: Annotated[
        str | None,
        Header(description="Required when the service is configured with API keys."),
    ] = None,
) -> None:
    """Unauthorized unless the key is valid (or no keys are configured)."""
    api_keys: ApiKeys = request.app.state.api_keys
    api_keys.check(None if x_api_key is None else x_api_key.encode())


def require_admin(
    request: Request,
    authorization: Annotated[
        str | None, Header(description="Bearer <admin token>", include_in_schema=False)
    ] = None,
) -> str:
    """The caller's token id; AdminDisabled or Unauthorized otherwise."""
    admin: AdminToken = request.app.state.admin_token
    caller = admin.check(authorization)
    request.state.caller = caller
    return caller


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
AdminCaller = Annotated[str, Depends(require_admin)]
