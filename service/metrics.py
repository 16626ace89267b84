"""Prometheus metrics of one service process, in a registry of its own (not the global one)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Scoring takes well under a millisecond; the buckets resolve the fast end.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class ServiceMetrics:
    """Requests, latency, decisions, errors and the serving model, for ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fraudscore_http_requests",
            "HTTP requests by route, method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "fraudscore_http_request_duration_seconds",
            "Time from request start to the last response byte, by route and status.",
            ("route", "status"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "fraudscore_decisions",
            "Scored transactions by cluster and outcome (anomalous or normal).",
            ("cluster", "outcome"),
            registry=self.registry,
        )
        self.errors = Counter(
            "fraudscore_errors",
            "Error responses by kind (the error field of the body).",
            ("kind",),
            registry=self.registry,
        )
        self.backend_rows = Counter(
            "fraudscore_backend_rows",
            "Rows assigned off the fast path, by who answered (e.g. sagemaker, local-fallback).",
            ("backend",),
            registry=self.registry,
        )
        self.model_loads = Counter(
            "fraudscore_model_loads",
            "Attempts to load a model version from the registry, by result.",
            ("result",),
            registry=self.registry,
        )
        self.model = Info(
            "fraudscore_model",
            "The model and thresholds version serving now.",
            registry=self.registry,
        )
        # labels() takes a lock and builds a key; the hot path reuses the children.
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._decision_children: dict[tuple[int, bool], Counter] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request and its latency."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            code = str(status)
            children = (
                self.requests.labels(route, method, code),
                self.latency.labels(route, code),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_decisions(self, clusters: Sequence[int], anomalous: Sequence[bool]) -> None:
        """Count decisions per cluster and outcome."""
        if len(clusters) == 1:
            self._decision(clusters[0], anomalous[0]).inc()
            return
        for (cluster, flagged), n in Tally(zip(clusters, anomalous, strict=True)).items():
            self._decision(cluster, flagged).inc(n)

    def _decision(self, cluster: int, anomalous: bool) -> Counter:
        key = (cluster, anomalous)
        child = self._decision_children.get(key)
        if child is None:
            child = self.decisions.labels(str(cluster), "anomalous" if anomalous else "normal")
            self._decision_children[key] = child
        return child

    def observe_error(self, kind: str) -> None:
        """Count one error response."""
        self.errors.labels(kind).inc()

    def set_model(self, model_version: str, thresholds_version: int, backend: str) -> None:
        """Publish the serving versions."""
        self.model.info(
            {
                "model_version": model_version,
                "thresholds_version": str(thresholds_version),
                "backend": backend,
            }
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
