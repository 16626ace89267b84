"""The model a process serves, and the watcher that swaps in new versions off the request path.

A request takes :attr:`ModelHolder.current` once and scores with that object only, so it
is answered entirely by one model and thresholds version however the pointer moves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import UTC, datetime

import numpy as np

from service.backends import ClusterBackend
from service.metrics import ServiceMetrics
from service.row_scoring import RowScorer
from service.scoring import ScoringModel, score_columns
from service.transactions import FieldSource, input_layout
from training.errors import FraudscoreError
from training.registry import ActivePointer, Registry

log = logging.getLogger("fraudscore.models")


@dataclasses.dataclass(frozen=True, eq=False)
class ServingModel:
    """A validated model version with what requests need to use it."""

    model: ScoringModel
    layout: tuple[FieldSource, ...]
    pointer: ActivePointer
    loaded_at: datetime
    row: RowScorer  # one transaction at a time, when the centroids are local


class ModelHolder:
    """Holds the serving model; replaced whole, never changed in place."""

    def __init__(self) -> None:
        self.current: ServingModel | None = None
        self.problem: str | None = "no model loaded yet"

    def install(self, serving: ServingModel) -> None:
        """Serve ``serving`` from the next request on (one reference swap)."""
        self.current = serving
        self.problem = None


def prepare(model: ScoringModel, pointer: ActivePointer, backend: ClusterBackend) -> ServingModel:
    """Validate a loaded model for serving; FraudscoreError or ValueError saying why not."""
    layout = input_layout(model)
    problem = backend.check(model)
    if problem is not None:
        raise ValueError(problem)
    # A probe: each cluster's typical row must score to finite numbers end to end.
    columns = {
        name: [typical[name] for typical in model.typical] for name in model.spec.field_names
    }
    probe = score_columns(model, columns)
    if not (np.isfinite(probe.distance).all() and np.isfinite(probe.score).all()):
        raise ValueError("the probe rows scored to non-finite distances")
    return ServingModel(model, layout, pointer, datetime.now(UTC), RowScorer(model))


class RegistryWatcher:
    """Polls the registry's ``ACTIVE`` pointer and installs new versions that validate."""

    def __init__(
        self,
        registry: Registry,
        holder: ModelHolder,
        backend: ClusterBackend,
        metrics: ServiceMetrics,
        *,
        interval_s: float,
    ) -> None:
        self.registry = registry
        self.holder = holder
        self.backend = backend
        self.metrics = metrics
        self.interval_s = interval_s
        self._refused: ActivePointer | None = None
        self._unreadable: str | None = None

    def refresh(self) -> bool:
        """Check the pointer once and load a new version; True when one was installed.

        Blocking (registry I/O and model validation): call it from a worker thread.
        """
        where = repr(self.registry)
        try:
            pointer = self.registry.active()
        except FraudscoreError as exc:
            self._report_unreadable(str(exc))
            return False
        self._unreadable = None
        current = self.holder.current
        if pointer is None:
            if current is None:
                self.holder.problem = (
                    f"no active model in {where}; train one with 'fraudscore train' "
                    "or start with 'fraudscore serve --demo-model'"
                )
            return False
        if (current is not None and current.pointer == pointer) or pointer == self._refused:
            return False
        try:
            bundle = self.registry.load_bundle(pointer.model_version, pointer.thresholds_version)
            serving = prepare(ScoringModel.from_bundle(bundle), pointer, self.backend)
        except (FraudscoreError, ValueError, OSError) as exc:
            self._refused = pointer
            self.metrics.model_loads.labels("refused").inc()
            if current is None:
                self.holder.problem = (
                    f"refused model {pointer.model_version} "
                    f"thresholds v{pointer.thresholds_version}: {exc}"
                )
            log.error(
                "model refused",
                extra={
                    "model_version": pointer.model_version,
                    "thresholds_version": pointer.thresholds_version,
                    "reason": str(exc),
                    "serving": None if current is None else current.pointer.to_dict(),
                },
            )
            return False
        self.holder.install(serving)
        self._refused = None
        self.metrics.model_loads.labels("loaded").inc()
        self.metrics.set_model(pointer.model_version, pointer.thresholds_version, self.backend.name)
        log.info(
            "model loaded",
            extra={
                "model_version": pointer.model_version,
                "thresholds_version": pointer.thresholds_version,
                "backend": self.backend.name,
                "replaced": None if current is None else current.pointer.to_dict(),
            },
        )
        return True

    def _report_unreadable(self, problem: str) -> None:
        """Log an unreadable pointer once per distinct problem; keep serving what we have."""
        if problem != self._unreadable:
            log.error("registry pointer unreadable", extra={"reason": problem})
        self._unreadable = problem
        if self.holder.current is None:
            self.holder.problem = problem

    async def run(self) -> None:
        """Poll until cancelled; a failing poll is logged and retried at the next interval."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:
                # Whatever goes wrong, the serving model stays and the next poll tries again.
                log.exception("registry poll failed")
