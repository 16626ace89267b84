"""Fixtures for the end-to-end tests: the trained registry of the service tests, and a server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.live_server import POLL_INTERVAL_S, LiveServer, running_server
from tests.service.conftest import registry, trained_registry  # noqa: F401  (fixtures)
from training.registry import Registry


@pytest.fixture
def server(registry: Registry, tmp_path: Path) -> Iterator[LiveServer]:  # noqa: F811
    """``fraudscore serve`` (one worker) on a private copy of the trained registry."""
    with running_server(
        registry.location,
        tmp_path / "logs",
        env={"FRAUDSCORE_POLL_INTERVAL_S": str(POLL_INTERVAL_S)},
    ) as live:
        yield live
