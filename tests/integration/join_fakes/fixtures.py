"""pytest fixtures for the join tests (import them into a test module: `from join_fakes.fixtures import *`)."""

import pytest

from builder import cluster as clusters

from .harness import FakeCluster, TokenServer, make_ca, make_root, new_cluster


class JoinLab:
    """One test's world: a cluster directory, a test CA, the stand-ins and a running token endpoint."""

    def __init__(self, base, nodes=("pi-worker1",), ca_type="ecdsa", version="1.31", approval_mode=False,
                 server_args=()):
        self.base = base
        self.fake = FakeCluster(base)
        self.cluster = new_cluster(base, nodes, version, approval_mode)
        self.ca_cert = base / "ca.crt"
        self.ca_hash = make_ca(self.ca_cert, ca_type)
        self.fake.knob("expected_ca_hash", self.ca_hash)
        self.server = TokenServer(self.cluster.directory, self.fake, self.ca_cert, server_args)

    def node_root(self, name="pi-worker1"):
        """A sandbox device whose node.json the real builder code wrote, pointed at the running endpoint."""
        return make_root(self.base, clusters.node_config(self.cluster.directory, name), self.server.endpoint)

    def credential(self, name="pi-worker1"):
        return clusters.load_cluster(self.cluster.directory).credential(name)

    def state(self, name="pi-worker1"):
        from firstboot.state import NodeStore

        store = NodeStore(str(self.cluster.directory / "state"))
        try:
            return store.get(name)
        finally:
            store.close()


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
