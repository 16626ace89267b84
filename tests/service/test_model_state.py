"""Hot swap: the watcher installs validated versions, refuses broken ones, and a request is
scored by one version from start to end."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from fastapi.testclient import TestClient

from service.backends import LocalBackend
from service.main import create_app
from service.metrics import ServiceMetrics
from service.model_state import ModelHolder, RegistryWatcher, prepare
from service.scoring import ScoringModel
from service.settings import Settings
from tests.factories import make_thresholds
from tests.service.conftest import activate_thresholds, transaction
from training.errors import BundleError
from training.features import CategoricalField, FeatureSpec, NumericField
from training.registry import ActivePointer, Registry


def watcher(registry: Registry) -> tuple[RegistryWatcher, ModelHolder, ServiceMetrics]:
    holder, metrics = ModelHolder(), ServiceMetrics()
    w = RegistryWatcher(registry, holder, LocalBackend(), metrics, interval_s=1.0)
    return w, holder, metrics


def loads(metrics: ServiceMetrics, result: str) -> float:
    value = metrics.registry.get_sample_value("fraudscore_model_loads_total", {"result": result})
    return value or 0.0


def test_a_new_active_version_is_installed_once(registry: Registry) -> None:
    w, holder, metrics = watcher(registry)
    assert w.refresh() is True
    first = holder.current
    assert first is not None
    assert w.refresh() is False  # unchanged pointer: nothing reloaded
    assert holder.current is first
    version = activate_thresholds(registry, 0.7)
    assert w.refresh() is True
    assert holder.current is not first
    assert holder.current.pointer == ActivePointer(first.pointer.model_version, version)
    assert holder.current.model.thresholds.values.tolist() == [0.7] * 6
    assert loads(metrics, "loaded") == 2


def _corrupt_after_activation(registry: Registry) -> int:
    version = activate_thresholds(registry, 0.7)
    pointer = registry.active()
    assert pointer is not None
    path = Path(registry.location) / "models" / pointer.model_version / "thresholds"
    (path / f"{version}.json").write_text('{"version": ')
    return version


def test_a_broken_version_is_refused_once_and_the_old_one_keeps_serving(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    w, holder, metrics = watcher(registry)
    w.refresh()
    serving = holder.current
    broken = _corrupt_after_activation(registry)
    with caplog.at_level(logging.ERROR, logger="fraudscore.models"):
        assert w.refresh() is False
        assert w.refresh() is False  # the same broken pointer is not retried
    assert holder.current is serving
    refused = [r for r in caplog.records if r.getMessage() == "model refused"]
    assert len(refused) == 1
    assert refused[0].thresholds_version == broken  # type: ignore[attr-defined]
    assert "thresholds" in refused[0].reason  # type: ignore[attr-defined]
    assert loads(metrics, "refused") == 1
    # A later good version is taken.
    fixed = activate_thresholds(registry, 0.9)
    assert w.refresh() is True
    assert holder.current is not None
    assert holder.current.pointer.thresholds_version == fixed


def test_an_unreadable_pointer_keeps_the_model_and_is_logged_once(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    w, holder, _ = watcher(registry)
    w.refresh()
    serving = holder.current
    (Path(registry.location) / "ACTIVE").write_text("not json")
    with caplog.at_level(logging.ERROR, logger="fraudscore.models"):
        assert w.refresh() is False
        assert w.refresh() is False
    assert holder.current is serving
    assert [r.getMessage() for r in caplog.records] == ["registry pointer unreadable"]


def test_without_a_model_the_problem_says_why(tmp_path: Path, registry: Registry) -> None:
    from training.registry import open_registry

    w, holder, _ = watcher(open_registry(tmp_path / "empty"))
    w.refresh()
    assert holder.current is None
    assert holder.problem is not None
    assert "no active model" in holder.problem
    _corrupt_after_activation(registry)
    w2, holder2, _ = watcher(registry)
    w2.refresh()
    assert holder2.current is None
    assert holder2.problem is not None
    assert holder2.problem.startswith("refused model")


def _model(spec: FeatureSpec, centroids: npt.NDArray[np.float64]) -> ScoringModel:
    k = centroids.shape[0]
    return ScoringModel(
        model_version="m1",
        thresholds_version=1,
        spec=spec,
        centroids=centroids,
        thresholds=make_thresholds("m1", k),
        typical=tuple(spec.typical_values(c) for c in centroids),
    )


def test_a_model_the_api_cannot_feed_is_refused() -> None:
    spec = FeatureSpec((CategoricalField("amount", ("a", "b")),), fitted=True)
    model = _model(spec, np.eye(2))
    with pytest.raises(BundleError, match="'amount' must be numeric"):
        prepare(model, ActivePointer("m1", 1), LocalBackend())


def test_a_backend_that_cannot_serve_the_model_refuses_it() -> None:
    class Unavailable(LocalBackend):
        def check(self, model: ScoringModel) -> str | None:  # noqa: ARG002
            return "endpoint serves other centroids"

    spec = FeatureSpec((NumericField("amount"),), fitted=True)
    with pytest.raises(ValueError, match="other centroids"):
        prepare(_model(spec, np.array([[0.0], [1.0]])), ActivePointer("m1", 1), Unavailable())


class SwapDuringAssignment(LocalBackend):
    """Swaps the holder's model while a batch is being assigned (as the watcher might)."""

    name = "swapping"
    embedded = False  # not the fast paths: every request goes through assign()

    def __init__(self) -> None:
        self.swap: Callable[[], None] | None = None

    def assign(self, model: ScoringModel, x: npt.NDArray[np.float64]) -> Any:
        if self.swap is not None:
            swap, self.swap = self.swap, None
            swap()
        d = ((x[:, None, :] - model.centroids[None, :, :]) ** 2).sum(axis=2)
        best = d.argmin(axis=1)
        return best, np.sqrt(d[np.arange(len(x)), best]), self.name


def test_a_request_is_scored_by_one_version_even_if_a_swap_lands_mid_request(
    registry: Registry,
) -> None:
    backend = SwapDuringAssignment()
    settings = Settings(registry=str(registry.location), access_log=False)
    app = create_app(settings, registry=registry, backend=backend)
    with TestClient(app) as c:
        old = c.post("/score", json=transaction()).json()["thresholds_version"]
        new = activate_thresholds(registry, 0.3)
        backend.swap = app.app.state.watcher.refresh
        batch = {"transactions": [transaction(transaction_id=f"t{i}") for i in range(20)]}
        results = c.post("/score/batch", json=batch).json()["results"]
        assert {(r["thresholds_version"], r["threshold"] == 0.3) for r in results} == {(old, False)}
        after = c.post("/score/batch", json=batch).json()["results"]
        assert {(r["thresholds_version"], r["threshold"]) for r in after} == {(new, 0.3)}
