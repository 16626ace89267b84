"""Fixtures of the infrastructure tests: the templates, and the stacks they deploy."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.cfn_model import SCENARIOS, Stack, deploy, load_templates


@pytest.fixture(scope="session")
def templates() -> dict[str, dict[str, Any]]:
    """Every template under infra/, parsed, by file name (do not mutate)."""
    return load_templates()


@pytest.fixture(scope="session", params=sorted(SCENARIOS))
def stacks(request: pytest.FixtureRequest) -> dict[str, Stack]:
    """The three stacks as deployed in one scenario (every optional feature off, or on)."""
    scenario: str = request.param
    return deploy(scenario)
