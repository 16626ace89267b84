"""Scoring backends: where a transformed row's nearest cluster and distance come from.

A backend is a small protocol so the app factory can be given a fake, and the SageMaker
endpoint can stand in for the embedded centroids without the service logic knowing.
"""

from __future__ import annotations

from typing import Protocol

from service.scoring import Assigner, ScoringModel


class ClusterBackend(Protocol):
    """Finds each row's nearest cluster and Euclidean distance for a model."""

    @property
    def name(self) -> str:
        """Reported as ``backend`` in every decision (``local``, ``sagemaker``)."""
        ...

    def assigner(self, model: ScoringModel) -> Assigner | None:
        """The assignment function for ``model``; None searches its centroids in process."""
        ...

    def check(self, model: ScoringModel) -> str | None:
        """Why ``model`` cannot be served by this backend now, or None when it can."""
        ...


class LocalBackend:
    """The embedded default: the model's own centroids, searched in this process."""

    name = "local"

    def assigner(self, model: ScoringModel) -> Assigner | None:  # noqa: ARG002 (protocol)
        """In process: no assigner needed."""
        return None

    def check(self, model: ScoringModel) -> str | None:  # noqa: ARG002 (protocol)
        """The centroids are in memory, so a loaded model can always be served."""
        return None
