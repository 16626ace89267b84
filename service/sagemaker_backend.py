"""The SageMaker backend: nearest cluster and distance from a ``kmeans:1`` endpoint.

Rows go as CSV (transformed feature vectors, no header) to ``invoke_endpoint`` with
``Accept: application/json``; the answer is ``{"predictions": [{"closest_cluster",
"distance_to_cluster"}]}`` in request order. Bodies are split under the 6 MiB limit.
Failures become :class:`EndpointError` subclasses; with the fallback on, the model's own
centroids answer instead and the decision says ``backend: "local-fallback"``. A circuit
breaker stops calling an endpoint that keeps failing and tries it again after a pause.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from service.backends import BackendFailure
from service.scoring import ScoringModel

# invoke_endpoint takes at most 6 MiB; stay clear of it.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024 - 64 * 1024
FALLBACK_NAME = "local-fallback"
# Distances from the endpoint are float32: local and remote agree to this relative tolerance.
PARITY_RTOL = 1e-4


class EndpointError(BackendFailure):
    """The endpoint could not answer; ``status`` is what the client should see."""

    status = 502


class EndpointUnavailable(EndpointError):
    """Throttled, overloaded or briefly unavailable: worth retrying later."""

    status = 503


class EndpointTimeout(EndpointError):
    """No answer within the read timeout."""

    status = 504


class EndpointRejected(EndpointError):
    """The endpoint or its model refused the request (not found, model error, bad answer)."""

    status = 502


Clock = Callable[[], float]


class CircuitBreaker:
    """Opens after ``failures`` failures in a row; lets one probe through after ``reset_s``."""

    def __init__(self, failures: int = 5, reset_s: float = 30.0, clock: Clock = time.monotonic):
        self.failures = failures
        self.reset_s = reset_s
        self.clock = clock
        self._count = 0
        self._opened_at: float | None = None
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Whether a call may go to the endpoint now."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self.clock() - self._opened_at >= self.reset_s:
                self._opened_at = self.clock()  # half-open: this caller probes, others wait
                return True
            return False

    def success(self) -> None:
        """A call worked: close the circuit."""
        with self._lock:
            self._count = 0
            self._opened_at = None

    def failure(self) -> None:
        """A call failed: count it, open the circuit at the limit."""
        with self._lock:
            self._count += 1
            if self._count >= self.failures:
                self._opened_at = self.clock()

    @property
    def open(self) -> bool:
        """Whether calls are being refused."""
        return self._opened_at is not None


def csv_lines(x: npt.NDArray[np.float64]) -> list[bytes]:
    """Each row as a CSV line with float32 precision, which is what the container computes in
    (``%.9g``: nine significant digits read back as the same float32)."""
    rows = x.astype(np.float32)
    # One format per row, byte for byte what numpy.savetxt writes, at about twice its speed
    # for a micro-batch (this runs once per call, holding the GIL the event loop needs).
    line = ",".join(["%.9g"] * rows.shape[1]) + "\n"
    return [(line % tuple(row)).encode() for row in rows.tolist()]


def csv_body(x: npt.NDArray[np.float64]) -> bytes:
    """Rows as CSV with float32 precision, which is what the container computes in."""
    return b"".join(csv_lines(x))


def parse_predictions(body: bytes, n: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Clusters and distances from the endpoint's JSON; EndpointRejected if malformed."""
    try:
        predictions = json.loads(body)["predictions"]
        clusters = np.array([p["closest_cluster"] for p in predictions], dtype=np.float64)
        distances = np.array([p["distance_to_cluster"] for p in predictions], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as exc:
        raise EndpointRejected(f"the endpoint's answer is not kmeans predictions: {exc}") from None
    if len(clusters) != n:
        raise EndpointRejected(f"the endpoint answered {len(clusters)} predictions for {n} rows")
    # kmeans:1 returns cluster ids as floats (1.0): they must still be whole numbers.
    if not np.all(np.isfinite(clusters)) or np.any(clusters != np.round(clusters)):
        raise EndpointRejected("the endpoint returned a cluster id that is not a whole number")
    return clusters.astype(np.int64), distances


def split_rows(x: npt.NDArray[np.float64], limit: int = MAX_PAYLOAD_BYTES) -> list[bytes]:
    """CSV bodies of consecutive rows, each under ``limit`` bytes."""
    lines = csv_lines(x)
    bodies: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        if len(line) > limit:
            raise EndpointRejected("one row is larger than the endpoint's payload limit")
        if size + len(line) > limit and current:
            bodies.append(b"".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        bodies.append(b"".join(current))
    return bodies


class SageMakerBackend:
    """Assigns rows on a SageMaker endpoint (``client`` is a ``sagemaker-runtime`` client)."""

    name = "sagemaker"
    embedded = False
    blocking = True

    def __init__(
        self,
        client: Any,
        endpoint_name: str,
        *,
        fallback: bool = True,
        breaker: CircuitBreaker | None = None,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self.client = client
        self.endpoint_name = endpoint_name
        self.fallback = fallback
        self.breaker = breaker or CircuitBreaker()
        self.max_payload_bytes = max_payload_bytes

    def invoke(
        self, x: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Clusters and distances from the endpoint; EndpointError if it cannot answer."""
        if not self.breaker.allow():
            raise EndpointUnavailable(
                f"endpoint {self.endpoint_name} failed repeatedly; calls are paused"
            )
        clusters, distances = [], []
        try:
            for body in split_rows(x, self.max_payload_bytes):
                n = body.count(b"\n")
                answer = self._call(body)
                c, d = parse_predictions(answer, n)
                clusters.append(c)
                distances.append(d)
        except EndpointError:
            self.breaker.failure()
            raise
        self.breaker.success()
        if not clusters:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return np.concatenate(clusters), np.concatenate(distances)

    def _call(self, body: bytes) -> bytes:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            ReadTimeoutError,
        )

        try:
            response = self.client.invoke_endpoint(
                EndpointName=self.endpoint_name,
                Body=body,
                ContentType="text/csv",
                Accept="application/json",
            )
            data: bytes = response["Body"].read()
        except (ReadTimeoutError, ConnectTimeoutError) as exc:
            raise EndpointTimeout(f"endpoint {self.endpoint_name} timed out: {exc}") from None
        except ClientError as exc:
            raise _client_error(self.endpoint_name, exc) from None
        except BotoCoreError as exc:
            raise EndpointUnavailable(f"endpoint {self.endpoint_name}: {exc}") from None
        return data

    def assign(
        self, model: ScoringModel, x: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], str]:
        """Clusters, distances and who answered: the endpoint, or (fallback on) the centroids."""
        try:
            clusters, distances = self.invoke(x)
            return clusters, distances, self.name
        except EndpointError:
            if not self.fallback:
                raise
        clusters, distances = model.nearest.assign(x)
        return clusters, distances, FALLBACK_NAME

    def check(self, model: ScoringModel) -> str | None:
        """Why the endpoint cannot serve ``model`` (parity with its centroids), or None."""
        probe = model.centroids + 0.25  # near each centre, never on a tie between two
        try:
            clusters, distances = self.invoke(probe)
        except EndpointError as exc:
            return str(exc)
        local_clusters, local_distances = model.nearest.assign(probe)
        if not np.array_equal(clusters, local_clusters) or not np.allclose(
            distances, local_distances, rtol=PARITY_RTOL, atol=1e-5
        ):
            return (
                f"endpoint {self.endpoint_name} does not serve model {model.model_version}: "
                "its clusters or distances differ from the registry's centroids"
            )
        return None


def _client_error(endpoint: str, exc: Any) -> EndpointError:
    """A botocore ClientError in the domain's words."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    message = str(error.get("Message") or "")
    where = f"endpoint {endpoint}"
    if code in ("ThrottlingException", "ServiceUnavailable", "ModelNotReadyException"):
        return EndpointUnavailable(f"{where} is busy ({code}); retry shortly")
    if code == "ModelError":
        original = exc.response.get("OriginalStatusCode")
        return EndpointRejected(f"{where}: the model failed (status {original}): {message}")
    if code == "ValidationError":
        return EndpointRejected(f"{where}: {message or code}")
    return EndpointUnavailable(f"{where}: {code}: {message}".rstrip(": "))
