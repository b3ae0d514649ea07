"""Three control planes: the cluster survives losing its first master card, and a reflashed master rebuilds its member.

The inventory holds three masters (fixed addresses 10.0.2.21-23) behind the virtual IP 10.0.2.2 and a worker; the
machine holds two TCG guests at once, so the story powers on two at a time and the third master is never powered
on (the fake control plane plays the API server and etcd for every member, `etcd_members` in its state):

    1. pi-master1 (the inventory's first: may initialize) finds no other master's endpoint, runs
       `kubeadm init --upload-certs` with kube-vip's static pod (super-admin.conf while init runs), then serves joins.
    2. pi-master2 asks the endpoint at the VIP (forwarded to pi-master1), gets a join token and the certificate key,
       joins as a control plane, then starts its own endpoint, whose state lives in the API (ConfigMaps).
    3. pi-master1's card dies (power cut). The worker's first endpoint, the VIP, refuses (nobody holds it here:
       kube-vip is a stand-in too), pi-master1's address gets no answer, pi-master2's endpoint issues its token.
    4. pi-master1's card is rebuilt and reflashed: it finds pi-master2's endpoint, so it joins instead of making a
       new cluster; pi-master2's endpoint deletes the stale NotReady node and removes its etcd member first.

Networking: each guest has a QEMU network of its own (qemu_guest.py). A master's endpoint port is forwarded from a
port of the host's 127.0.0.1 (hostfwd); a guest reaches another master's inventory address with guestfwd, handed by
socat to that host port. The VIP 10.0.2.5 is guestfwd too: its API port to the fake API server, its endpoint port to
pi-master1's while it lives (afterwards nobody answers there, as if kube-vip had not moved it yet).
"""

import json
import time
from dataclasses import dataclass

import pytest
from lab import BOOT_TIMEOUT, ClusterLab, free_port, pi_image
from qemu_guest import Guest
from ubuntu_layout import read_root_file, root_file_owner_mode

from builder.run import run

pytestmark = pytest.mark.system
MASTERS = {"pi-master1": "10.0.2.21", "pi-master2": "10.0.2.22", "pi-master3": "10.0.2.23"}
M1, M2, M3 = MASTERS
WORKER = "pi-worker1"
VIP = "10.0.2.5"  # the host (10.0.2.2) is the subnet's gateway
BUILD = {"base": "preinstalled", "vip": VIP,
         "nodes": (*((name, "master-2g", "--address", address) for name, address in MASTERS.items()),
                   (WORKER, "worker-8g"))}
ENDPOINT_STARTED = "token endpoint started"
JOINED = "joined the cluster"
INITIALIZED = "kubeadm init done"
MEMORY = 2048  # kubeadm's preflight of a control plane (the stand-in's too) wants 1700 MB
SECRETS = "/etc/pi-image/cluster/secrets"
KUBE_VIP = "/etc/kubernetes/manifests/kube-vip.yaml"


@dataclass
class Story:
    lab: ClusterLab
    guests: dict[str, Guest]  # "pi-master1", "pi-master2", "pi-worker1", "pi-master1-reflashed"
    times: dict[str, float]  # seconds since the story began


class Ports:
    """The host ports of each master's endpoint, and what a guest's guestfwd says about them."""

    def __init__(self, endpoint_port: int):
        self.endpoint = endpoint_port  # the cluster's: the VIP's, forwarded to pi-master1
        self.host = {M1: endpoint_port, M2: free_port(), M3: free_port()}  # pi-master3's: nobody listens

    def hostfwd(self, node: str) -> tuple[tuple[int, int], ...]:
        return ((self.host[node], self.endpoint),)

    def guestfwd(self, api_port: int, own: str | None = None) -> tuple[tuple[str, int], ...]:
        """The VIP's API server and endpoint ports, and every other master's inventory address:endpoint port (not
        the guest's `own` node's), to their host ports."""
        return ((f"{VIP}:{api_port}", api_port), (f"{VIP}:{self.endpoint}", self.endpoint),
                *((f"{address}:{self.endpoint}", self.host[node]) for node, address in MASTERS.items()
                  if node != own))


@pytest.fixture(scope="module")
def story(cluster_lab, story_figures, base_images, archive):
    lab = cluster_lab
    ports = Ports(lab.build.endpoint_port)

    def master(node: str, **options) -> Guest:
        """A master guest at its inventory address (etcd's peer URLs must differ), its endpoint forwarded."""
        return lab.boot(node, hostfwd=ports.hostfwd(node), memory_mib=MEMORY, address=MASTERS[node],
                        guestfwd=ports.guestfwd(lab.build.api_port, node), **options)
    guests: dict[str, Guest] = {}
    times: dict[str, float] = {}
    with lab.two_guests():
        began = time.monotonic()

        def mark(name):
            times[name] = round(time.monotonic() - began, 1)

        guests[M1] = first = master(M1, stay_while=lab.hold_url())
        first.wait_for(ENDPOINT_STARTED, BOOT_TIMEOUT)
        mark("first_master_serves")
        guests[M2] = second = master(M2, stay_while=lab.hold_url())
        second.wait_for(ENDPOINT_STARTED, BOOT_TIMEOUT)
        mark("second_master_serves")
        second.wait_for("PITEST report", BOOT_TIMEOUT)  # its agent is done: it told the first master it joined
        assert first.running(), f"the first master powered off early: {first.serial_path}"
        first.power_cut()
        lab.fake.set_node(M1, "NotReady")  # as the node controller marks it 40 s after its kubelet went silent
        mark("first_master_lost")
        guests[WORKER] = worker = lab.boot(WORKER, guestfwd=ports.guestfwd(lab.build.api_port))
        worker.wait_powered_off(BOOT_TIMEOUT, watch=(JOINED,))
        mark("worker_joined")
        repository = f"kube_repo_url={archive.kube_repo_url(archive.port)}"
        pi_image("build", "--base", str(base_images[BUILD["base"]]), "--cluster", str(lab.cluster_dir), "--node", M1,
                 "--kube-key", str(archive.key.armored), "--set", repository, "--no-login",
                 "-o", str(lab.base / "reflashed.img"))
        run(["cp", "--sparse=always", str(lab.base / "reflashed.img"), str(lab.images[M1])])
        mark("first_master_rebuilt")
        guests[f"{M1}-reflashed"] = again = master(M1)
        again.wait_powered_off(BOOT_TIMEOUT, watch=(JOINED, ENDPOINT_STARTED))
        mark("first_master_rejoined")
        lab.api.release()
        second.wait_powered_off(120)
    story_figures.append({"test": __name__, "guests": 2, **times})
    return Story(lab, guests, times)


def test_the_first_master_initializes_with_its_certificates_uploaded_and_kube_vip_as_super_admin(story):
    lab = story.lab
    [init] = lab.fake.inits()

    assert init["node"] == M1 and init["advertise_address"] == MASTERS[M1]
    [args] = [call for call in lab.fake.calls("kubeadm", "init") if call[1] == "--config"]
    assert "--upload-certs" in args and "--skip-certificate-key-print" in args, args
    assert init["config"]["ClusterConfiguration"]["controlPlaneEndpoint"] == f"{VIP}:{lab.build.api_port}"
    assert init["config"]["InitConfiguration"]["certificateKey"] == "<redacted>", "checked, then redacted"
    during_init = lab.api.init_files["etc/kubernetes/manifests/kube-vip.yaml"]["content"]
    assert "/etc/kubernetes/super-admin.conf" in during_init, "kube-vip issue #684, on 1.29+"
    serial = story.guests[M1].serial
    assert serial.index(INITIALIZED) < serial.index(ENDPOINT_STARTED)


def test_the_second_master_joins_as_a_control_plane_with_the_key_the_endpoint_gave_it(story):
    lab = story.lab
    [join] = [join for join in lab.fake.joins() if join["node"] == M2]

    assert join["config"]["controlPlane"] == {
        "localAPIEndpoint": {"advertiseAddress": MASTERS[M2], "bindPort": lab.build.api_port},
        "certificateKey": "<redacted>"}
    serial = story.guests[M2].serial
    assert serial.index("kubeadm join done") < serial.index(ENDPOINT_STARTED), "its endpoint starts once a member"
    assert root_file_owner_mode(lab.images[M2], f"{SECRETS}/certificate.key") == (0, 0o600)
    manifest = read_root_file(lab.images[M2], KUBE_VIP).decode()
    assert "/etc/kubernetes/admin.conf" in manifest and "super-admin" not in manifest, "placed after the join"
    uploads = lab.fake.calls("kubeadm", "init", "phase", "upload-certs")
    assert uploads and all("--skip-certificate-key-print" in call for call in uploads), \
        "the endpoint uploaded the certificates again (their age unknown to it), the key never printed"


def test_a_worker_joins_through_the_second_master_after_the_first_died(story):
    lab = story.lab
    report = lab.guest_report(1, node=WORKER)

    assert report["reason"] == "done", story.guests[WORKER].serial[-3000:]
    assert lab.fake.cluster()["nodes"][WORKER] == "Ready"
    worker_log = lab.guest_file("/var/lib/pi-image/firstboot.log", WORKER)
    assert f"{MASTERS[M2]}:{lab.build.endpoint_port}" in worker_log


def test_the_reflashed_first_master_rejoins_and_its_old_etcd_member_is_gone(story):
    lab = story.lab
    members = [member["name"] for member in lab.fake.cluster()["etcd_members"]]

    assert sorted(members) == [M1, M2], members
    assert lab.fake.cluster()["nodes"][M1] == "Ready"
    assert len(lab.fake.inits()) == 1, "a reflashed first master joins: it never makes a second cluster"


def test_no_certificate_key_is_on_a_console_or_in_a_log(story):
    lab = story.lab
    key = (lab.cluster_dir / "secrets" / "certificate.key").read_text().strip()
    places = {f"{name} console": guest.serial for name, guest in story.guests.items()}
    for node in (M1, M2, WORKER):
        for path in ("/var/lib/pi-image/firstboot.log", "/var/lib/pi-image-test/boot-1.journal",
                     "/var/lib/pi-image-test/calls.jsonl", "/etc/pi-image/cluster/state/audit.log"):
            places[f"{node}:{path}"] = lab.guest_file(path, node) or ""
    for place, text in places.items():
        assert key not in text, f"the certificate key is in {place}"
    assert json.dumps(lab.fake.cluster()).count(key) <= 1, "only the kubeadm-certs Secret's own record holds it"
