"""Scoring backends: where a transformed row's nearest cluster and distance come from.

A backend is a small protocol so the app factory can be given a fake, and the SageMaker
endpoint (:mod:`service.sagemaker_backend`) can stand in for the embedded centroids without
the service logic knowing.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from service.scoring import ScoringModel

Assignment = tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], str]


class BackendFailure(Exception):
    """A backend could not answer; ``status`` is the HTTP status the caller should see
    (502 failed, 503 busy, 504 timed out)."""

    status = 502


class ClusterBackend(Protocol):
    """Finds each row's nearest cluster and Euclidean distance for a model."""

    @property
    def name(self) -> str:
        """Reported as ``backend`` in decisions (``local``, ``sagemaker``)."""
        ...

    @property
    def embedded(self) -> bool:
        """True when answers are the model's own centroids in process (fast paths allowed)."""
        ...

    @property
    def blocking(self) -> bool:
        """True when :meth:`assign` does I/O: the data plane calls it off the event loop."""
        ...

    def assign(self, model: ScoringModel, x: npt.NDArray[np.float64]) -> Assignment:
        """Clusters, distances and the name of whoever answered (e.g. a fallback)."""
        ...

    def check(self, model: ScoringModel) -> str | None:
        """Why ``model`` cannot be served by this backend now, or None when it can."""
        ...


class LocalBackend:
    """The embedded default: the model's own centroids, searched in this process."""

    name = "local"
    embedded = True
    blocking = False

    def assign(self, model: ScoringModel, x: npt.NDArray[np.float64]) -> Assignment:
        """The nearest centroid in process."""
        clusters, distances = model.nearest.assign(x)
        return clusters, distances, self.name

    def check(self, model: ScoringModel) -> str | None:  # noqa: ARG002 (protocol)
        """The centroids are in memory, so a loaded model can always be served."""
        return None
