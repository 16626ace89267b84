"""Test-wide settings."""

from __future__ import annotations

import os

from hypothesis import settings

# CI must be reproducible: the same examples on every run. Locally, explore at random.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
