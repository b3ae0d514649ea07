"""Fixtures shared by the integration tests.

- `cli`, `base`: the build stories' CLI and Ubuntu sample (module-scoped: one cache and one base per test module).
- `join_lab`, `make_join_lab`: the join stories' token endpoint with fake kubeadm/kubectl (join_fakes.harness.JoinLab),
  stopped at the end of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from join_fakes.harness import JoinLab
from readback import PiImage


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> PiImage:
    """The real `pi-image` CLI with a cache of its own."""
    return PiImage(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def base(sample_image) -> Path:
    """The Ubuntu sample every story starts from (shared and read-only: each test checks it is unchanged)."""
    return sample_image("ubuntu-raspi")


@pytest.fixture
def join_lab(tmp_path: Path) -> Iterator[JoinLab]:
    """A running endpoint for a one-node cluster (ECDSA CA, Kubernetes 1.31)."""
    world = JoinLab(tmp_path)
    world.server.start()
    yield world
    world.server.stop()


@pytest.fixture
def make_join_lab(tmp_path: Path) -> Iterator[Callable[..., JoinLab]]:
    """Factory for labs with other settings (`JoinLab`'s keywords); every endpoint started is stopped at the end."""
    labs: list[JoinLab] = []

    def build(**settings) -> JoinLab:
        base = tmp_path / f"lab{len(labs)}"
        base.mkdir()
        world = JoinLab(base, **settings)
        labs.append(world)
        return world

    yield build
    for world in labs:
        world.server.stop()
