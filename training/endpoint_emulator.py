"""A loopback stand-in for a SageMaker ``kmeans:1`` endpoint, for tests and benchmarks.

It answers the runtime API's ``POST /endpoints/{name}/invocations`` (and the container's
own ``POST /invocations`` and ``GET /ping``) from a model's centroids, the way the
container does: CSV rows in, ``{"predictions": [{"closest_cluster", "distance_to_cluster"}]}``
out, cluster ids as floats and distances as float32 Euclidean. Point boto3 at it with
``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=http://127.0.0.1:<port>``. Latency and failures can
be injected; it never listens beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import numpy.typing as npt

from training.kmeans import NearestCentroids

MAX_BODY_BYTES = 6 * 1024 * 1024
# A failure to inject: (HTTP status, the runtime API's error code, message).
Failure = tuple[int, str, str]


class EndpointEmulator:
    """Serves one set of centroids on 127.0.0.1 until :meth:`stop`."""

    def __init__(
        self,
        centroids: npt.ArrayLike,
        *,
        endpoint_name: str = "fraudscore",
        latency_s: float = 0.0,
        port: int = 0,
    ) -> None:
        self.endpoint_name = endpoint_name
        self.latency_s = latency_s
        self.nearest = NearestCentroids(np.asarray(centroids, dtype=np.float32))
        self.failures: list[Failure] = []  # consumed one per request, first in first out
        self.calls = 0
        self.rows = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> EndpointEmulator:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> EndpointEmulator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def predict(self, body: bytes) -> bytes:
        """The container's JSON answer for CSV rows; ValueError if the rows are malformed."""
        text = body.decode().strip()
        if not text:
            raise ValueError("empty request body")
        x = np.array(
            [[float(v) for v in line.split(",")] for line in text.splitlines()],
            dtype=np.float32,
        )
        if x.shape[1] != self.nearest.centroids.shape[1]:
            raise ValueError(
                f"rows have {x.shape[1]} columns, the model expects "
                f"{self.nearest.centroids.shape[1]}"
            )
        clusters, distances = self.nearest.assign(x)
        with self._lock:
            self.calls += 1
            self.rows += len(x)
        return json.dumps(
            {
                "predictions": [
                    {"closest_cluster": float(c), "distance_to_cluster": float(np.float32(d))}
                    for c, d in zip(clusters.tolist(), distances.tolist(), strict=True)
                ]
            }
        ).encode()

    def next_failure(self) -> Failure | None:
        """The next injected failure, if any."""
        with self._lock:
            return self.failures.pop(0) if self.failures else None


def _handler_for(emulator: EndpointEmulator) -> Callable[..., BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real service
        # Headers and body go out in separate writes: with Nagle's algorithm on, the body
        # waits for the client's delayed ACK (about 40 ms a response on Linux).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests and benchmarks read their own output."""

        def do_GET(self) -> None:
            if self.path == "/ping":
                self._send(HTTPStatus.OK, b"", [("Content-Type", "text/plain")])
            else:
                self._send(*_error(404, "ValidationError", f"no route {self.path}"))

        def do_POST(self) -> None:
            # The latency is the endpoint's response time from the request's arrival, its
            # own work included (as SageMaker's ModelLatency counts the container's): the
            # answer is computed first, then held back for what is left of it.
            arrived = time.monotonic()
            answer = self._answer()
            left = emulator.latency_s - (time.monotonic() - arrived)
            if left > 0.0:
                time.sleep(left)
            self._send(*answer)

        def _answer(self) -> tuple[int, bytes, list[tuple[str, str]]]:
            """(status, body, headers) for the POST being handled."""
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            expected = f"/endpoints/{emulator.endpoint_name}/invocations"
            if self.path not in (expected, "/invocations"):
                name = self.path.split("/")[2] if self.path.startswith("/endpoints/") else "?"
                return _error(400, "ValidationError", f"Endpoint {name} of account 0 not found.")
            failure = emulator.next_failure()
            if failure is not None:
                return _error(*failure)
            if length > MAX_BODY_BYTES:
                return _error(413, "ValidationError", "request body is over 6 MiB")
            try:
                answer = emulator.predict(body)
            except ValueError as exc:
                message = f'Received client error (400) from model with message "{exc}"'
                return _error(424, "ModelError", message)
            return HTTPStatus.OK, answer, [("Content-Type", "application/json")]

        def _send(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _error(status: int, code: str, message: str) -> tuple[int, bytes, list[tuple[str, str]]]:
    """An error answer as the runtime API gives it: botocore reads its code from
    ``x-amzn-ErrorType``."""
    body = json.dumps({"message": message}).encode()
    return status, body, [("x-amzn-ErrorType", code), ("Content-Type", "application/json")]
