"""Fixtures for the service tests: a registry with a trained demo model, and app clients."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.backends import ClusterBackend
from service.main import create_app
from service.schemas import TRANSACTION_EXAMPLE
from service.settings import Settings
from tests.factories import make_thresholds
from training.demo import DEMO_FEATURES, LABEL_COLUMN, DemoConfig, generate, write_csv
from training.pipeline import TrainRequest, train
from training.registry import Registry, open_registry

ClientFactory = Callable[..., AbstractContextManager[TestClient]]


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry directory holding one active demo model (trained once per session)."""
    root = tmp_path_factory.mktemp("service-registry")
    data = root / "train.csv"
    write_csv(generate(DemoConfig(rows=4000, seed=3)), data)
    registry = open_registry(root / "registry")
    train(
        TrainRequest(data=data, label_column=LABEL_COLUMN, features=DEMO_FEATURES, k=6),
        registry,
        progress=False,
    )
    return root / "registry"


@pytest.fixture
def registry(trained_registry: Path, tmp_path: Path) -> Registry:
    """A private copy of the trained registry, free to change."""
    target = tmp_path / "registry"
    shutil.copytree(trained_registry, target)
    return open_registry(target)


@pytest.fixture
def make_client(registry: Registry) -> ClientFactory:
    """Build an app (lifespan run) on ``registry`` with settings overrides."""

    @contextmanager
    def build(
        *,
        registry_: Registry | None = None,
        backend: ClusterBackend | None = None,
        **overrides: Any,
    ) -> Iterator[TestClient]:
        settings = Settings(registry=str(registry.location), access_log=False, **overrides)
        app = create_app(settings, registry=registry_ or registry, backend=backend)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client

    return build


@pytest.fixture
def client(make_client: ClientFactory) -> Iterator[TestClient]:
    """A client of the app with default settings on the trained registry."""
    with make_client() as c:
        yield c


def transaction(**overrides: Any) -> dict[str, Any]:
    """The documented example transaction, with fields replaced."""
    tx = copy.deepcopy(TRANSACTION_EXAMPLE)
    tx.update(overrides)
    return tx


def activate_thresholds(registry: Registry, value: float, **overrides: Any) -> int:
    """Save a thresholds version with every cluster at ``value`` for the active model, and
    activate it; returns its version."""
    pointer = registry.active()
    assert pointer is not None
    k = registry.load_manifest(pointer.model_version).k
    stored = registry.save_thresholds(
        make_thresholds(
            pointer.model_version,
            k,
            values=np.full(k, value),
            parent=pointer.thresholds_version,
            **overrides,
        )
    )
    registry.activate(pointer.model_version, stored.version)
    return stored.version
