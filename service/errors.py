"""Domain errors of the service and the one table that maps them to HTTP.

Hierarchy::

    ServiceError
    ├── InvalidRequest        the body is not a valid request (names each bad field)
    ├── PayloadTooLarge       body or batch over the configured limit
    ├── Unauthorized          missing or wrong API key / admin token
    ├── AdminDisabled         no admin token configured
    ├── NotFound, MethodNotAllowed
    ├── Conflict              the resource's state forbids it (a retrain already runs, ...)
    ├── NotReady              no model loaded yet (or the backend does not answer)
    └── BackendUnavailable    the backend failed while scoring (502)
        ├── BackendBusy       throttled or briefly unavailable (503)
        └── BackendTimeout    no answer in time (504)

The errors know nothing of HTTP; :data:`STATUS` and :func:`error_body` do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from pydantic import ValidationError

# Error bodies list at most this many problems; the message gives the total.
MAX_DETAILS = 50


class ServiceError(Exception):
    """Base class: ``code`` is the machine-readable kind in the error body."""

    code = "internal"

    def __init__(self, message: str, details: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = tuple(details)


class InvalidRequest(ServiceError):
    """The request body is not valid; ``details`` holds (field, problem) pairs."""

    code = "invalid_request"

    @classmethod
    def of(cls, problems: Sequence[tuple[str, str]]) -> InvalidRequest:
        """One error for all problems found, counted in the message."""
        n = len(problems)
        return cls(f"{n} problem{'s' if n != 1 else ''} in the request", problems[:MAX_DETAILS])


class PayloadTooLarge(ServiceError):
    """The body or the batch is over the configured limit."""

    code = "payload_too_large"


class Unauthorized(ServiceError):
    """Credentials are missing or wrong."""

    code = "unauthorized"


class AdminDisabled(ServiceError):
    """Admin routes are off because no admin token is configured."""

    code = "admin_disabled"


class NotFound(ServiceError):
    """No such route or resource."""

    code = "not_found"


class Conflict(ServiceError):
    """The request is valid but the resource's current state forbids it."""

    code = "conflict"


class MethodNotAllowed(ServiceError):
    """The route exists but not with this method."""

    code = "method_not_allowed"


class NotReady(ServiceError):
    """No model is ready to score (yet): retry after ``retry_after_s``."""

    code = "not_ready"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BackendUnavailable(ServiceError):
    """The scoring backend failed for this request."""

    code = "backend_unavailable"


class BackendBusy(BackendUnavailable):
    """The scoring backend is throttled or briefly unavailable: retry later."""

    code = "backend_busy"


class BackendTimeout(BackendUnavailable):
    """The scoring backend did not answer in time."""

    code = "backend_timeout"


STATUS: Mapping[type[ServiceError], int] = {
    InvalidRequest: 422,
    PayloadTooLarge: 413,
    Unauthorized: 401,
    AdminDisabled: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    Conflict: 409,
    NotReady: 503,
    BackendUnavailable: 502,
    BackendBusy: 503,
    BackendTimeout: 504,
    ServiceError: 500,
}


def status_of(exc: ServiceError) -> int:
    """The HTTP status for a service error (its nearest class in :data:`STATUS`)."""
    for klass in type(exc).__mro__:
        if klass in STATUS:
            return STATUS[klass]
    return 500


def error_headers(exc: ServiceError) -> list[tuple[bytes, bytes]]:
    """Headers an error response carries besides the content type."""
    if isinstance(exc, NotReady):
        return [(b"retry-after", str(exc.retry_after_s).encode())]
    if isinstance(exc, BackendBusy):
        return [(b"retry-after", b"1")]
    if isinstance(exc, Unauthorized):
        return [(b"www-authenticate", b'Bearer realm="fraudscore"')]
    return []


def error_body(exc: ServiceError, request_id: str) -> bytes:
    """The JSON error body (one shape on every route; see ``schemas.ErrorBody``)."""
    return orjson.dumps(
        {
            "error": exc.code,
            "message": exc.message,
            "details": [{"field": f, "problem": p} for f, p in exc.details],
            "request_id": request_id,
        }
    )


def field_path(loc: Iterable[Any]) -> str:
    """A pydantic location as a body path, e.g. ``transactions[3].amount``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


# pydantic names union members in error locations; these are our unions' member tags.
_UNION_TAGS = frozenset({"float", "str"})


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """(field, problem) pairs from a pydantic error, one per field, in the body's words."""
    problems: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = list(error["loc"])
        kind = error["type"]
        if len(loc) >= 3 and loc[-1] in _UNION_TAGS and loc[-3] == "features":
            # A feature value failed both union members: say what it may be, once.
            path = field_path(loc[:-1])
            message = "expected a number or a string (category)"
            if kind == "finite_number":
                message = "Input should be a finite number"
            problems.setdefault(path, message)
            continue
        path = field_path(loc)
        if kind == "json_invalid":
            message = f"not valid JSON: {error['msg'].removeprefix('Invalid JSON: ')}"
        elif kind == "extra_forbidden":
            message = "unknown field (other model inputs go in 'features')"
        elif kind == "missing":
            message = "field required"
        else:
            message = error["msg"]
        problems.setdefault(path, message)
    return list(problems.items())
