"""Shared fixtures: sample images of every target, built once per test session with the real tools.

- `sample_image(target, release=None, variant="standard")` -> Path: a cached sample (image file, or the rootfs
  directory for `l4t-rootfs`). Shared by every test in the session: READ ONLY.
- `sample_copy(target, release=None, variant="standard")` -> Path: a private sparse copy in the test's tmp_path,
  for tests that write to an image (or check that an input is left byte-identical).

Targets and releases: `builder.samples.SAMPLES`; `variant="alt"` is the sample built another way
(`builder.samples.catalog.ALTERNATES`: today ubuntu-raspi 24.04 with a pyparted table and other starts/sizes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from builder.run import run
from builder.samples import make_sample

SampleFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def sample_image(tmp_path_factory: pytest.TempPathFactory) -> SampleFactory:
    """Build (once per session) and return the sample of `target`/`release`/`variant`; do not modify it."""
    root = tmp_path_factory.mktemp("samples")
    cache: dict[tuple[str, str | None, str], Path] = {}

    def build(target: str, release: str | None = None, variant: str = "standard") -> Path:
        key = (target, release, variant)
        if key not in cache:
            name = "-".join(part for part in (target, release, variant) if part)
            cache[key] = make_sample(target, root / name, release=release, variant=variant)
        return cache[key]

    return build


@pytest.fixture
def sample_copy(sample_image: SampleFactory, tmp_path: Path) -> SampleFactory:
    """A private, writable copy of a session sample (sparse: copying costs what the image holds, not its size)."""

    def copy(target: str, release: str | None = None, variant: str = "standard") -> Path:
        source = sample_image(target, release, variant)
        dest = tmp_path / source.name
        run(["cp", "-a", "--sparse=always", str(source), str(dest)])
        return dest

    return copy


@pytest.fixture(autouse=True)
def no_default_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test sees the developer's own default cluster (~/.config/pi-image/cluster or $PI_IMAGE_CLUSTER)."""
    monkeypatch.delenv("PI_IMAGE_CLUSTER", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.getbasetemp() / "xdg-config"))
