"""One audit log line per admin action: who (a token id, never the token), what, result.

Admin routes use :class:`AuditedRoute`, so every call is logged however it ends: refused by
auth, rejected as invalid, failed or done. Lines go to the ``fraudscore.audit`` logger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from service.errors import ServiceError, status_of

audit_log = logging.getLogger("fraudscore.audit")


class AuditedRoute(APIRoute):
    """An APIRoute whose every call writes one audit line."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        action = self.name

        async def audited(request: Request) -> Response:
            try:
                response = await handler(request)
            except Exception as exc:
                write(request, action, _status(exc), error=_code(exc))
                raise
            write(request, action, response.status_code, location=response.headers.get("location"))
            return response

        return audited


def write(request: Request, action: str, status: int, **details: Any) -> None:
    """Log one admin action with its caller, target and outcome."""
    fields: dict[str, Any] = {
        "who": getattr(request.state, "caller", None) or "unauthenticated",
        "action": action,
        "method": request.method,
        "path": request.url.path,
        "status": status,
        "result": "ok" if status < 400 else "refused" if status < 500 else "error",
        "request_id": getattr(request.state, "request_id", None)
        or request.headers.get("x-request-id"),
    }
    target = dict(request.path_params)
    if target:
        fields["target"] = target
    fields.update({k: v for k, v in details.items() if v is not None})
    audit_log.info("admin action", extra=fields)


def _status(exc: Exception) -> int:
    if isinstance(exc, ServiceError):
        return status_of(exc)
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, RequestValidationError):
        return 422
    return 500


def _code(exc: Exception) -> str:
    return exc.code if isinstance(exc, ServiceError) else type(exc).__name__
