"""Fixtures shared by the build stories (module-scoped: one cache and one base per test module)."""

from __future__ import annotations

from pathlib import Path

import pytest
from readback import PiImage


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> PiImage:
    """The real `pi-image` CLI with a cache of its own."""
    return PiImage(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def base(sample_image) -> Path:
    """The Ubuntu sample every story starts from (shared and read-only: each test checks it is unchanged)."""
    return sample_image("ubuntu-raspi")
