"""An installed machine joins without a reflash: `pi-image enroll` writes one file for one inventory node, the
machine's owner runs it as root, the agent joins as on a card; `--undo` later puts back every file it changed.

The machine is the stock base booted as it is: a Debian system pi-image never built or touched (no agent, no
node.json, no runtime), with two files of its owner's that the node's plan replaces (/etc/sysctl.d/k8s.conf and
/etc/modules-load.d/k8s.conf, with other content). The test hands it the enroll file as the owner would (copied into
/root; pi-image-test-enroll.service runs `sh /root/enroll-file.sh` as root on the first power-on and
`sh /root/enroll-file.sh --undo` on the second, recording the trees it may touch before and after: guest/test-tools).
Everything on the machine is real (systemd, apt from the signed archive, containerd); kubeadm and kubectl are the
stand-ins of every boot test, and the token endpoint is `pi-image token-server` on the host.
"""

import json

import pytest
from join_fakes.harness import make_ca
from lab import BOOT_TIMEOUT, ClusterBuild, SystemLab, free_port, pi_image
from ubuntu_layout import write_root_file

from firstboot.enroll import read_payload

pytestmark = pytest.mark.system
NODE = "zcloud"
OWNERS_FILES = {"/etc/sysctl.d/k8s.conf": b"# the owner's own settings, kept by --undo\nvm.swappiness = 10\n",
                "/etc/modules-load.d/k8s.conf": b"# the owner's own modules\nloop\n"}
RESULTS = "/var/lib/pi-image-test"


@pytest.fixture(scope="module")
def machine(base_images, archive, tmp_path_factory):
    """The cluster, the enroll file for NODE and a lab whose one machine is a copy of the stock base."""
    dest = tmp_path_factory.mktemp("enroll")
    cluster_dir = dest / "cluster"
    api_port, endpoint_port = free_port(), free_port()
    pi_image("cluster", "init", str(cluster_dir), "--api-server", f"10.0.2.2:{api_port}",
             "--endpoint", f"10.0.2.2:{endpoint_port}", "--kubernetes-version", "1.31", "--node-subnet", "10.0.2.0/24",
             "--api-server-vip")
    pi_image("cluster", "add-node", str(cluster_dir), NODE, "--profile", "x86-worker")
    enroll_file = dest / f"enroll-{NODE}.sh"
    made = pi_image("enroll", "--cluster", str(cluster_dir), "--node", NODE, "--kube-key", str(archive.key.armored),
                    "--set", f"kube_repo_url={archive.kube_repo_url(archive.port)}", "--output", str(enroll_file))
    ca_cert = dest / "ca.crt"
    build = ClusterBuild({NODE: base_images["stock"]}, cluster_dir, ca_cert, make_ca(ca_cert), api_port,
                         endpoint_port)
    lab = SystemLab(dest / "lab", build)
    for path, data in OWNERS_FILES.items():
        write_root_file(lab.images[NODE], path, data)
    write_root_file(lab.images[NODE], "/root/enroll-file.sh", enroll_file.read_bytes(), mode=0o600)
    lab.endpoint.start()
    yield lab, enroll_file, made.stdout.decode()
    lab.close()


@pytest.fixture(scope="module")
def enrolled(machine):
    lab, enroll_file, _ = machine
    guest = lab.boot(enroll="apply")
    guest.wait_powered_off(BOOT_TIMEOUT, watch=("joined the cluster",))
    return lab, guest


def test_the_enroll_file_is_private_and_says_how_to_use_it(machine):
    _, enroll_file, summary = machine
    assert enroll_file.stat().st_mode & 0o777 == 0o600
    assert f"sudo sh {enroll_file.name}" in summary
    assert enroll_file.read_bytes().startswith(b"#!/bin/sh\n")


def test_an_installed_machine_joins_after_running_the_enroll_file(enrolled):
    lab, guest = enrolled
    report = lab.guest_report(1, node=NODE)

    assert lab.guest_file(f"{RESULTS}/enroll-apply.rc", NODE).strip() == "0", \
        lab.guest_file(f"{RESULTS}/enroll-apply.log", NODE)
    assert report["reason"] == "done", guest.serial[-3000:]
    assert [join["node"] for join in lab.fake.joins()] == [NODE]
    assert lab.fake.cluster()["nodes"] == {NODE: "Ready"}
    assert json.loads(lab.guest_file("/etc/pi-image/node.json", NODE))["node"] == NODE
    assert report["runtime"]["is_active"] == "active"
    assert lab.guest_file("/etc/sysctl.d/k8s.conf", NODE).encode() != OWNERS_FILES["/etc/sysctl.d/k8s.conf"]
    assert report["proc"]["/proc/sys/net/ipv4/ip_forward"].strip() == "1"
    assert lab.status()["state"] == "joined"


def test_undo_puts_back_every_file_byte_for_byte(machine, enrolled):
    lab, _ = enrolled
    touched = {op["path"] for op in read_payload(str(machine[1]))["ops"]}
    guest = lab.boot(NODE, enroll="undo")
    guest.wait_powered_off(BOOT_TIMEOUT)

    assert lab.guest_file(f"{RESULTS}/enroll-undo.rc", NODE).strip() == "0", \
        lab.guest_file(f"{RESULTS}/enroll-undo.log", NODE)
    before = json.loads(lab.guest_file(f"{RESULTS}/tree-before.json", NODE))
    after = json.loads(lab.guest_file(f"{RESULTS}/tree-after-undo.json", NODE))
    for path, data in OWNERS_FILES.items():
        assert lab.guest_file(path, NODE).encode() == data
        assert after[path] == before[path], path
    for path in ("/etc/pi-image/node.json", "/etc/systemd/system/pi-image-firstboot.service",
                 "/usr/lib/pi-image/firstboot/agent.py", "/etc/containerd/config.toml"):
        assert path not in after, f"{path} was made by the enroll file and is still there after --undo"
    changed = sorted(path for path in touched if after.get(path) != before.get(path))
    assert changed == [], f"--undo left these different from before the enroll: {changed[:10]}"
    assert len(touched) > 20
