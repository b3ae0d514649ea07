"""An x86 node from a seed ISO: the boot test's Debian guest, never touched by `pi-image build` (the stock image:
no agent, no node config, no kube repository), powered on with cloud-init and `pi-image seed-iso`'s CIDATA ISO as
a second drive. The real cloud-init finds the seed by its label, writes the plan's files, makes the unit's wants
link and starts the agent; the agent installs the runtime and the kube packages from the test archive and joins
through the endpoint on the host's loopback, as in the boot test.

The guest's only change: cloud-init looks for the seed where a stock Ubuntu looks (the NoCloud default label,
cidata), not on system-boot as the Pi-layout guest is set up to.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from join_fakes.harness import make_ca
from lab import (
    BOOT_TIMEOUT,
    GUEST_TIMEOUT,
    ClusterBuild,
    PowerOn,
    SystemLab,
    free_port,
    pi_image,
)
from qemu_guest import Guest
from ubuntu_layout import partition_offsets

from builder.build.seed_iso import SeedIsoRequest, seed_iso
from builder.run import run

pytestmark = pytest.mark.system
NODE = "x86-worker1"
STOCK_NOCLOUD = "datasource_list: [ NoCloud, None ]\n"  # as a stock Ubuntu: the seed on a volume labelled cidata
GUEST_CLOUD_CFG = "/etc/cloud/cloud.cfg.d/99-fake_cloud.cfg"


def stock_ubuntu_like(image: Path, dest: Path) -> Path:
    """A copy of the stock guest image whose cloud-init reads a NoCloud seed from a CIDATA volume."""
    run(["cp", "--sparse=always", str(image), str(dest)])
    local = dest.with_suffix(".cloud.cfg")
    local.write_text(STOCK_NOCLOUD)
    run(["debugfs", "-w", "-R", f"rm {GUEST_CLOUD_CFG}", f"{dest}?offset={partition_offsets(dest)[2]}"])
    run(["debugfs", "-w", "-R", f"write {local} {GUEST_CLOUD_CFG}", f"{dest}?offset={partition_offsets(dest)[2]}"])
    return dest


@pytest.fixture(scope="module")
def seeded(base_images, archive, tmp_path_factory, request):
    """`pi-image cluster init` + `add-node --profile x86-worker`, the lab, and the node's seed ISO."""
    top = tmp_path_factory.mktemp("seed-iso")
    api_port, endpoint_port = free_port(), free_port()
    cluster_dir = top / "cluster"
    pi_image("cluster", "init", str(cluster_dir), "--api-server", f"10.0.2.2:{api_port}",
             "--endpoint", f"10.0.2.2:{endpoint_port}", "--kubernetes-version", "1.31", "--node-subnet", "10.0.2.0/24")
    pi_image("cluster", "add-node", str(cluster_dir), NODE, "--profile", "x86-worker")
    ca_cert = top / "ca.crt"
    build = ClusterBuild({NODE: stock_ubuntu_like(base_images["stock"], top / "stock.img")}, cluster_dir, ca_cert,
                         make_ca(ca_cert), api_port, endpoint_port)
    (top / "lab").mkdir()
    lab = SystemLab(top / "lab", build)
    iso = seed_iso(SeedIsoRequest(
        profile=None, cluster=lab.cluster_dir, node=NODE, output=top / f"{NODE}-seed.iso", no_login=True,
        kube_key=archive.key.armored, sets={"kube_repo_url": archive.kube_repo_url(archive.port)})).output
    failed_before = request.session.testsfailed
    yield lab, iso
    lab.close()
    build.images[NODE].unlink()
    if request.session.testsfailed == failed_before:
        lab.image.unlink()  # large; after a failure it stays for a look (the serial log always does)


@pytest.fixture(scope="module")
def first_boot(seeded, story_figures):
    lab, iso = seeded
    lab.endpoint.start()
    guest = Guest(lab.image, lab.boot_files[NODE], lab.base / "serial-seed-1.log", {"timeout": GUEST_TIMEOUT})
    guest.argv += ["-drive", f"file={iso},format=raw,if=virtio,readonly=on"]  # the seed, as /dev/vdb
    lab.power_ons.append(PowerOn(NODE, 1, guest))
    guest.start().wait_powered_off(BOOT_TIMEOUT, watch=("joined the cluster",))
    story_figures.append({"test": "seed-iso first boot", "wall_seconds": round(guest.elapsed(), 1),
                          "qemu_start_to_joined": round(guest.seen.get("joined the cluster", -1), 1)})
    return lab, guest


def test_a_stock_guest_with_the_seed_iso_attached_joins(first_boot):
    lab, guest = first_boot
    report = lab.guest_report(1)

    assert report["reason"] == "done", guest.serial[-3000:]
    [join] = lab.fake.joins()
    assert (join["node"], join["node_ip"]) == (NODE, "10.0.2.15")
    assert lab.status()["state"] == "joined"
    assert lab.fake.cluster()["nodes"] == {NODE: "Ready"}
    assert report["hostname"].strip() == NODE, "cloud-init set the seed's hostname"
    assert json.loads(report["done"]) == {"joined": True, "node": NODE}


def test_cloud_init_laid_the_plan_down_as_a_card_would(first_boot):
    lab, _ = first_boot
    report = lab.guest_report(1)

    assert report["unit"]["Result"] == "success"
    assert "memory" in report["proc"]["/sys/fs/cgroup/cgroup.controllers"].split(), "no kernel argument needed"
    assert "cgroup_enable=memory" not in report["proc"]["/proc/cmdline"]
    assert report["modules"] == {"overlay": True, "br_netfilter": True}
    installed = [line.split()[0] for line in report["packages"] if line.endswith(("ii", "hi"))]
    assert {"containerd", "runc", "kubelet", "kubeadm", "kubectl"} <= set(installed), report["packages"]
    assert json.loads(lab.guest_file("/etc/pi-image/node.json"))["node"] == NODE
    assert lab.guest_file("/var/lib/cloud/instance/datasource").startswith("DataSourceNoCloud"), \
        lab.guest_file("/var/lib/cloud/instance/datasource")
