"""Valid domain objects for tests, with any field overridable."""

from __future__ import annotations

from typing import Any

import numpy as np

from training.thresholds import ThresholdPolicy, Thresholds


def make_thresholds(default_model_version: str, k: int, **overrides: Any) -> Thresholds:
    """Thresholds version 1 for a ``k``-cluster model, every field overridable."""
    values: dict[str, Any] = {
        "version": 1,
        "model_version": default_model_version,
        "policy": ThresholdPolicy(),
        "values": np.linspace(1.0, 2.0, k),
        "rare": np.zeros(k, dtype=bool),
        "counts": np.full(k, 10, dtype=np.int64),
        "alert_rates": np.full(k, 0.01),
        "fallback": np.zeros(k, dtype=bool),
    }
    values.update(overrides)
    return Thresholds(**values)
