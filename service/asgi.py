"""The outermost ASGI layer: request ids, metrics, access logs, limits, and the fast path.

Every request gets an id (a caller's valid ``X-Request-ID`` or a new one), returned in
``X-Request-ID``, counted and timed in the metrics and logged as one JSON line.

``POST /score`` and ``POST /score/batch`` are answered here directly through the same
:class:`~service.dataplane.DataPlane` calls as their FastAPI routes: FastAPI's per-request
routing, dependency and response machinery costs more than scoring a transaction, and
these two routes carry the traffic. Everything else (docs, health, metrics, admin) goes
to the FastAPI app, whose OpenAPI document describes the scoring routes too.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service.auth import ApiKeys
from service.dataplane import DataPlane
from service.errors import PayloadTooLarge, ServiceError, error_body, error_headers, status_of
from service.logs import AccessLog
from service.metrics import ServiceMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

error_log = logging.getLogger("fraudscore.errors")
# A caller's request id is echoed only if it is short and plain (it ends up in logs).
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_JSON = (b"content-type", b"application/json")
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


class ClientDisconnected(Exception):
    """The client went away before sending its whole body."""


def request_id_of(scope: Scope) -> str:
    """The request id that :class:`FrontDoor` assigned (or a new one outside it)."""
    state = scope.get("state")
    if isinstance(state, dict) and "request_id" in state:
        return str(state["request_id"])
    return _request_id(scope.get("headers", []))


def check_declared_length(scope: Scope, limit: int) -> None:
    """PayloadTooLarge when the declared ``Content-Length`` is over ``limit``."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body; PayloadTooLarge past ``limit`` bytes (checked as it arrives)."""
    check_declared_length(scope, limit)
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class FrontDoor:
    """Wraps the FastAPI app; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        dataplane: DataPlane,
        api_keys: ApiKeys,
        metrics: ServiceMetrics,
        access_log: AccessLog | None,
        *,
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.dataplane = dataplane
        self.api_keys = api_keys
        self.metrics = metrics
        self.access_log = access_log
        self.max_body_bytes = max_body_bytes
        self.direct: dict[str, Callable[[bytes], Awaitable[bytes]]] = {
            "/score": dataplane.score_one,
            "/score/batch": dataplane.score_batch,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection event."""
        if scope["type"] != "http":  # lifespan (and websockets, which we do not serve)
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _request_id(scope["headers"])
        path = scope["path"]
        handler = self.direct.get(path) if scope["method"] == "POST" else None
        if handler is not None:
            status = await self._direct(handler, scope, receive, send, request_id)
            route = path
        else:
            status, route = await self._forward(scope, receive, send, request_id)
        elapsed = time.perf_counter() - start
        self.metrics.observe_request(route, scope["method"], status, elapsed)
        if self.access_log is not None:
            self.access_log.write(
                {
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": path,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000.0, 3),
                }
            )

    async def _direct(
        self,
        handler: Callable[[bytes], Awaitable[bytes]],
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
    ) -> int:
        """Answer a scoring route without FastAPI; returns the status sent."""
        try:
            if self.api_keys.required:
                self.api_keys.check(_header(scope["headers"], b"x-api-key"))
            body = await read_body(scope, receive, self.max_body_bytes)
            content = await handler(body)
            status = 200
            headers = [_JSON]
        except ServiceError as exc:
            status, headers, content = self._error(exc, request_id)
        except ClientDisconnected:
            return 499  # nginx's code for a client that closed the request; nothing to send
        except Exception:
            # Every expected failure is a ServiceError; this is a bug, and says so.
            error_log.exception("unhandled error", extra={"request_id": request_id})
            internal = ServiceError("internal error; the request id is in the logs")
            status, headers, content = self._error(internal, request_id)
        await _send(send, status, headers, content, request_id)
        return status

    def _error(
        self, exc: ServiceError, request_id: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        self.metrics.observe_error(exc.code)
        return status_of(exc), [_JSON, *error_headers(exc)], error_body(exc, request_id)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> tuple[int, str]:
        """Pass a request to the FastAPI app, adding the request id and noting the status."""
        scope.setdefault("state", {})["request_id"] = request_id
        try:
            check_declared_length(scope, self.max_body_bytes)
        except PayloadTooLarge as exc:
            status, headers, content = self._error(exc, request_id)
            await _send(send, status, headers, content, request_id)
            return status, _route_of(scope)
        status = 500
        started = False
        raw_id = request_id.encode()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", raw_id))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # The app's handlers answer every ServiceError; this is a bug, never a payload.
            error_log.exception("unhandled error", extra={"request_id": request_id})
            if not started:
                internal = ServiceError("internal error; the request id is in the logs")
                status, headers, content = self._error(internal, request_id)
                await _send(send, status, headers, content, request_id)
        return status, _route_of(scope)


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """A caller's ``X-Request-ID`` when it is plain and short, else a new unique id."""
    given = _header(headers, b"x-request-id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given.decode()
    # A random prefix per process and a counter: unique without a system call per request.
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _route_of(scope: Scope) -> str:
    """The route template for metrics labels; one label for every unknown path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if "endpoint" in scope:  # a plain Starlette route such as /docs: its path is fixed
        return str(scope["path"])
    return "unmatched"


async def _send(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], content: bytes, request_id: str
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *headers,
                (b"content-length", str(len(content)).encode()),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})
