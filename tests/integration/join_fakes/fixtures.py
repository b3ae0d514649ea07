"""pytest fixtures for the join tests (import them into a test module: `from join_fakes.fixtures import *`)."""

import pytest

from .harness import JoinLab


@pytest.fixture
def lab(tmp_path):
    """A running endpoint for a one-node cluster (ECDSA CA, Kubernetes 1.31)."""
    world = JoinLab(tmp_path)
    world.server.start()
    yield world
    world.server.stop()


@pytest.fixture
def make_lab(tmp_path):
    """Factory for labs with other settings; every endpoint started is stopped at the end."""
    labs = []

    def build(**settings):
        base = tmp_path / "lab{}".format(len(labs))
        base.mkdir()
        world = JoinLab(base, **settings)
        labs.append(world)
        return world

    yield build
    for world in labs:
        world.server.stop()
