"""The HTTP benchmark's baseline: a bare ASGI app that reads the body and returns constant JSON.

Run by ``benchmarks/http_service.py`` under the same uvicorn settings as the service;
:func:`answering` also builds the SageMaker benchmark's ceilings (``_latency_ceiling.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
BODY = b'{"anomalous":false}'


def answering(body: bytes, wait: Callable[[], Awaitable[None]] | None = None) -> App:
    """An ASGI app that reads each request's body, awaits ``wait()`` if given, and answers
    200 with ``body`` as JSON."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        if wait is not None:
            await wait()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


app = answering(BODY)
