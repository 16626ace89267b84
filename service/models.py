"""Load the registry's active model version into a ready-to-score :class:`ScoringModel`."""

from __future__ import annotations

from service.scoring import ScoringModel
from training.errors import RegistryError
from training.registry import Registry


def load_active(registry: Registry, *, where: str = "the registry") -> ScoringModel:
    """The active model and thresholds, validated; RegistryError if none is active."""
    pointer = registry.active()
    if pointer is None:
        raise RegistryError(
            f"no active model in {where}; train one with 'fraudscore train' (or 'make run')"
        )
    bundle = registry.load_bundle(pointer.model_version, pointer.thresholds_version)
    return ScoringModel.from_bundle(bundle)
