"""A fleet of three OSes from one inventory: each node names its base by catalog name (`cluster add-node --base`),
`build --cluster DIR --all` downloads each base once from a local mirror (checked against its pinned SHA-256),
unpacks it once, and builds every node from its own; the summary's table says which base each image came from.
`--dry-run` never downloads. The images are read back with sfdisk/debugfs.
"""

from __future__ import annotations

import hashlib
import subprocess

import pytest
from http_fixture import FileServer
from readback import KUBE_KEY, PiImage, filesystems, make_cluster, succeeded

from builder.samples import make_sample

BASES = {  # catalog name: (sample target, profile of its node, node)
    "test-ubuntu": ("ubuntu-raspi", "worker-8g", "ub1"),
    "test-raspios": ("raspios", "worker-8g", "rpi1"),
    "test-kali": ("kali-raspi", "kali-worker", "kali1"),
}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """The three samples, xz-compressed, served on 127.0.0.1, and a user catalog naming them."""
    root = tmp_path_factory.mktemp("fleet-mirror")
    files, entries = {}, []
    for name, (target, _, _) in BASES.items():
        raw = make_sample(target, root / f"{name}.img", size=640 << 20)
        subprocess.run(["xz", "-T0", "-1", "-k", str(raw)], check=True)
        data = (root / f"{name}.img.xz").read_bytes()
        files[f"{name}.img.xz"] = data
        entries.append(f"  {name}:\n    description: the {target} sample\n    target: {target}\n"
                       f"    url: URL/{name}.img.xz\n    sha256: {hashlib.sha256(data).hexdigest()}\n")
    server = FileServer(files)
    catalog = root / "catalog.yaml"
    catalog.write_text("bases:\n" + "".join(entries).replace("URL", f"http://127.0.0.1:{server.port}"))
    yield server, catalog
    server.close()


def test_all_builds_every_node_from_its_own_base_each_fetched_once(cli: PiImage, mirror, tmp_path):
    server, catalog = mirror
    env = {"PI_IMAGE_CATALOG": str(catalog), "PI_IMAGE_CACHE": str(tmp_path / "cache")}
    lab = make_cluster(cli, tmp_path / "lab", "192.168.6.0/24", {
        node: ["--profile", profile, "--base", name] for name, (_, profile, node) in BASES.items()})

    dry = cli("build", "--cluster", lab, "--all", "--dry-run", env=env)
    assert dry.returncode == 1 and "--dry-run never downloads" in dry.stderr and not server.log

    out = tmp_path / "images"
    proc = succeeded(cli("build", "--cluster", lab, "--all", "-o", out, "--kube-key", KUBE_KEY, env=env))
    again = succeeded(cli("build", "--cluster", lab, "--all", "-o", out, "--kube-key", KUBE_KEY, "--force", env=env))

    assert sorted(path for path, _, status in server.log) == sorted(f"{name}.img.xz" for name in BASES)
    table = proc.stdout.split("images:\n", 1)[1]
    for name, (target, _, node) in BASES.items():
        image = out / f"{node}.img"
        assert filesystems(image)["root"].text("/etc/hostname") == f"{node}\n"
        inspected = succeeded(cli("inspect", image, env=env)).stdout
        assert f": {target} " in inspected.splitlines()[0], inspected
        assert any(node in line and name in line for line in table.splitlines()), table
    assert "BASE" in again.stdout
