"""OpenAPI documentation of the error responses each route can give."""

from __future__ import annotations

from typing import Any

from service.schemas import ErrorBody

_REQUEST_ID_HEADER = {
    "X-Request-ID": {
        "description": "The request id: the caller's X-Request-ID if plain, else a new one.",
        "schema": {"type": "string"},
    }
}

_DESCRIPTIONS = {
    401: "Missing or invalid credentials.",
    403: "Admin routes are disabled (no admin token configured).",
    404: "No such resource.",
    409: "The resource's current state forbids this (e.g. a retrain is already running).",
    413: "The body or the batch is over the configured limit.",
    422: "The request is not valid; `details` names each bad field.",
    502: "The scoring backend failed (e.g. the SageMaker endpoint's model errored).",
    503: "No model is ready yet, or the backend is throttled; retry after `Retry-After` seconds.",
    504: "The scoring backend did not answer in time.",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these error statuses, all with the one error body."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        headers = dict(_REQUEST_ID_HEADER)
        if status == 503:
            headers["Retry-After"] = {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer"},
            }
        out[status] = {"model": ErrorBody, "description": _DESCRIPTIONS[status], "headers": headers}
    return out


def ok(model: Any, description: str, status: int = 200) -> dict[int | str, dict[str, Any]]:
    """The success entry (200 unless told), with the request id header."""
    return {status: {"model": model, "description": description, "headers": _REQUEST_ID_HEADER}}
