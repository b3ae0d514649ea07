"""Three control planes behind a virtual IP (issue 29), the builder's side: `cluster init --vip`, an inventory of
three masters and a worker, the cards `build --all` makes of it (read back with debugfs), the bad inputs refused in
one line, and the workstation asking each control plane's endpoint in turn when the virtual IP does not answer.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from join_fakes.harness import FIRSTBOOT_PYTHON, REPO, FakeCluster, make_ca
from oci_registry import populate
from offline_world import free_port, offline_args, offline_base, start_archive, start_registry
from readback import KUBE_KEY, Card, PiImage, filesystems, random_card, succeeded, tool

from builder import cluster as clusters
from builder.cli import main as pi_image

VIP = "192.168.6.5"
MASTERS = {"pi-master1": "192.168.6.11", "pi-master2": "192.168.6.12", "pi-master3": "192.168.6.13"}
KUBE_VIP_IMAGE = "ghcr.io/kube-vip/kube-vip:v1.2.3"  # written here, not read from pi-image's data: the test checks it
CERTIFICATE_KEY = "/etc/pi-image/cluster/secrets/certificate.key"
KUBE_VIP_MANIFEST = "/etc/pi-image/kube-vip.yaml"
INIT = ["--vip", VIP, "--kubernetes-version", "1.31", "--node-subnet", "192.168.6.0/24", "--gateway", "192.168.6.1"]


def cli(*args):
    return CliRunner().invoke(pi_image, [str(arg) for arg in args])


def ok(*args) -> str:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def refused(*args) -> str:
    """The one line a bad input gets (exit 1, no traceback)."""
    result = cli(*args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("pi-image: error: ")
    return lines[0]


def three_masters(directory: Path, worker: bool = True) -> Path:
    ok("cluster", "init", directory, *INIT)
    for name, address in MASTERS.items():
        ok("cluster", "add-node", directory, name, "--profile", "master-2g", "--address", address)
    if worker:
        ok("cluster", "add-node", directory, "pi-worker1", "--profile", "worker-8g")
    return directory


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the cluster directory ----------------------------------------------------------------------------------------

def test_init_with_a_vip_makes_the_api_server_the_endpoint_and_a_certificate_key(tmp_path):
    lab = three_masters(tmp_path / "lab")
    settings = yaml.safe_load((lab / "cluster.yaml").read_text())
    key = (lab / "secrets" / "certificate.key").read_text()
    tokend = json.loads((lab / "tokend.json").read_text())

    assert (settings["api_server"], settings["endpoint"], settings["api_server_vip"]) == \
        (f"{VIP}:6443", f"{VIP}:8443", True)
    assert re.fullmatch(r"[0-9a-f]{64}\n", key) and mode(lab / "secrets" / "certificate.key") == 0o600
    assert tokend["control_planes"] == list(MASTERS)
    assert tokend["certificate_key_file"] == "secrets/certificate.key"


def test_init_help_shows_a_three_master_cluster():
    text = ok("cluster", "init", "--help")

    assert "--vip 192.168.6.5" in text and text.count("--profile master-2g --address") == 3


def test_every_node_knows_every_other_control_planes_endpoint(tmp_path):
    cluster = clusters.load_cluster(three_masters(tmp_path / "lab"))
    configs = {node.name: clusters.node_config(cluster, node, admin_user="ubuntu").to_json()
               for node in cluster.nodes}
    endpoints = [f"{address}:8443" for address in MASTERS.values()]

    assert configs["pi-worker1"]["fallback_endpoints"] == endpoints
    for index, name in enumerate(MASTERS):
        config = configs[name]
        assert config["fallback_endpoints"] == endpoints[:index] + endpoints[index + 1:], name
        assert (config["endpoint"], config["endpoint_fingerprint"]) == (f"{VIP}:8443", cluster.endpoint_fingerprint)
        assert config["credential"] == cluster.credential(cluster.node(name))
        assert config["control_plane"] == {"pod_subnet": "10.244.0.0/16", "service_subnet": "10.96.0.0/12",
                                           "admin_user": "ubuntu", "vip": VIP, "may_initialize": index == 0}


def test_a_cluster_made_before_gets_its_certificate_key_when_its_first_master_card_needs_it(tmp_path):
    lab = three_masters(tmp_path / "lab")
    (lab / "secrets" / "certificate.key").unlink()
    cluster = clusters.load_cluster(lab)
    first = clusters.node_config(cluster, cluster.node("pi-master1"))
    second = clusters.node_config(cluster, cluster.node("pi-master2"))

    assert "secrets/certificate.key" not in [path for path, _, _ in
                                             clusters.master_files(cluster, second.control_plane)]
    files = {path: (data, file_mode) for path, data, file_mode in clusters.master_files(cluster, first.control_plane)}
    assert files["secrets/certificate.key"] == ((lab / "secrets" / "certificate.key").read_bytes(), 0o600)


BAD = [
    ("vip-outside-the-subnet", ["cluster", "init", "{lab}", "--vip", "10.0.0.5", *INIT[2:]],
     ["--vip 10.0.0.5", "outside the cluster's node subnet 192.168.6.0/24"]),
    ("vip-is-the-gateway", ["cluster", "init", "{lab}", "--vip", "192.168.6.1", *INIT[2:]],
     ["--vip 192.168.6.1", "gateway"]),
    ("api-server-not-at-the-vip", ["cluster", "init", "{lab}", *INIT, "--api-server", "192.168.6.10:6443"],
     ["--api-server 192.168.6.10:6443", "drop --api-server"]),
]


@pytest.mark.parametrize("case,argv,words", BAD, ids=[case for case, _, _ in BAD])
def test_a_bad_vip_at_init_is_one_line(tmp_path, case, argv, words):
    line = refused(*[word.format(lab=tmp_path / "lab") for word in argv])

    assert all(word in line for word in words), line
    assert not (tmp_path / "lab" / "cluster.yaml").exists()


def test_init_without_an_api_server_nor_a_vip_is_a_usage_error(tmp_path):
    result = cli("cluster", "init", tmp_path / "lab", "--endpoint", "192.168.6.10:8443", "--kubernetes-version",
                 "1.31", "--node-subnet", "192.168.6.0/24")

    assert result.exit_code == 2 and "Missing option '--api-server' (or --vip A.B.C.D" in result.output
    assert not (tmp_path / "lab").exists()


def test_add_node_refuses_what_several_control_planes_cannot_have(tmp_path):
    lab = three_masters(tmp_path / "lab", worker=False)

    line = refused("cluster", "add-node", lab, "pi-worker1", "--profile", "worker-8g", "--address", VIP)
    assert f"virtual IP {VIP} is the address of node 'pi-worker1'" in line and "cluster set" in line
    line = refused("cluster", "add-node", lab, "pi-master4", "--profile", "master-2g")
    assert "control plane 'pi-master4' has no fixed address" in line and "--address" in line
    line = refused("cluster", "set", lab, f"gateway={VIP}")
    assert line.startswith("pi-image: error: cluster set: virtual IP") and "gateway" in line
    assert yaml.safe_load((lab / "cluster.yaml").read_text())["gateway"] == "192.168.6.1", "nothing written"


def test_a_second_master_needs_a_virtual_ip_in_the_subnet(tmp_path):
    lab = tmp_path / "lab"
    ok("cluster", "init", lab, "--api-server", "192.168.6.11:6443", "--endpoint", "192.168.6.11:8443",
       "--kubernetes-version", "1.31", "--node-subnet", "192.168.6.0/24")
    ok("cluster", "add-node", lab, "pi-master1", "--profile", "master-2g", "--address", "192.168.6.11")

    line = refused("cluster", "add-node", lab, "pi-master2", "--profile", "master-2g", "--address", "192.168.6.12")
    assert "2 control planes (pi-master1, pi-master2), which need a virtual IP inside the node subnet" in line
    assert "api_server_vip=true" in line


@pytest.mark.parametrize("masters", [2, 4, 6])
def test_an_even_or_too_large_count_of_masters_is_refused_at_build_and_verify(tmp_path, cli_image, base, masters):
    lab = tmp_path / "lab"
    ok("cluster", "init", lab, *INIT)
    for number in range(1, masters + 1):
        ok("cluster", "add-node", lab, f"m{number}", "--profile", "master-2g", "--address", f"192.168.6.{10 + number}")

    line = refused("cluster", "verify", lab)
    assert f"has {masters} control planes" in line and "have 1, 3 or 5" in line and "remove-node" in line
    assert ("majority" in line) == (masters < 6)
    build = cli_image("build", "--cluster", lab, "--node", "m1", "--base", base, "-o", tmp_path / "m1.img",
                      "--kube-key", KUBE_KEY, "--dry-run")
    assert build.returncode == 1 and f"has {masters} control planes" in build.stderr
    assert len(build.stderr.strip().splitlines()) == 1 and "Traceback" not in build.stderr


@pytest.fixture(scope="module")
def cli_image(tmp_path_factory) -> PiImage:
    return PiImage(tmp_path_factory.mktemp("cache"))


# --- the cards -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(cli_image: PiImage, base: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(cluster directory, images directory) after `build --all` of three masters and a worker."""
    work = tmp_path_factory.mktemp("several")
    lab = three_masters(work / "lab")
    succeeded(cli_image("build", "--cluster", lab, "--all", "--base", base, "--output", work / "out",
                        "--kube-key", KUBE_KEY))
    return lab, work / "out"


def test_only_the_first_master_card_carries_the_certificate_key(built):
    lab, out = built
    first = filesystems(out / "pi-master1.img")["root"]

    entry = first.stat(CERTIFICATE_KEY)
    assert (entry.mode, entry.uid, entry.gid) == (0o600, 0, 0)
    assert first.read(CERTIFICATE_KEY) == (lab / "secrets" / "certificate.key").read_bytes()
    for name in ("pi-master2", "pi-master3", "pi-worker1"):
        assert filesystems(out / f"{name}.img")["root"].stat(CERTIFICATE_KEY) is None, name
    manifest = (out / "pi-master1.img.json").read_text()
    assert (lab / "secrets" / "certificate.key").read_text().strip() not in manifest


def test_every_master_card_carries_kube_vip_for_the_virtual_ip(built):
    _, out = built
    for name in MASTERS:
        root = filesystems(out / f"{name}.img")["root"]
        entry = root.stat(KUBE_VIP_MANIFEST)
        assert (entry.mode, entry.uid) == (0o644, 0), name
        pod = yaml.safe_load(root.text(KUBE_VIP_MANIFEST))
        [container] = pod["spec"]["containers"]
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert (pod["kind"], pod["metadata"]["namespace"], pod["spec"]["hostNetwork"]) == ("Pod", "kube-system", True)
        assert container["image"] == KUBE_VIP_IMAGE and container["args"] == ["manager"]
        assert env["address"] == VIP and env["port"] == "6443"
        assert (env["vip_arp"], env["cp_enable"], env["vip_leaderelection"]) == ("true", "true", "true")
        assert "svc_enable" not in env and "vip_interface" not in env
        assert container["volumeMounts"] == [{"name": "kubeconfig", "mountPath": "/etc/kubernetes/admin.conf"}]
        assert pod["spec"]["volumes"] == [{"name": "kubeconfig", "hostPath": {"path": "/etc/kubernetes/admin.conf"}}]
        node = json.loads(root.text("/etc/pi-image/node.json"))
        assert node["control_plane"]["vip"] == VIP
        assert node["control_plane"]["may_initialize"] == (name == "pi-master1")
        tokend = json.loads(root.text("/etc/pi-image/cluster/tokend.json"))
        assert tokend["control_planes"] == list(MASTERS)
    worker = filesystems(out / "pi-worker1.img")["root"]
    assert worker.stat(KUBE_VIP_MANIFEST) is None
    assert json.loads(worker.text("/etc/pi-image/node.json"))["fallback_endpoints"] == \
        [f"{address}:8443" for address in MASTERS.values()]


def test_dry_run_shows_the_kube_vip_step(cli_image, base, tmp_path):
    lab = three_masters(tmp_path / "lab")
    run = succeeded(cli_image("build", "--cluster", lab, "--node", "pi-master2", "--base", base, "--dry-run",
                              "--kube-key", KUBE_KEY))

    assert re.search(r"\[kube-vip +\] write +\d+ B +root:/etc/pi-image/kube-vip\.yaml  0644 0:0", run.stdout), \
        run.stdout


# --- an --offline master carries kube-vip's image -----------------------------------------------------------------

needs_offline_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("skopeo", "docker-registry", "apt-ftparchive", "gpg", "dpkg-deb")),
    reason="needs skopeo, docker-registry, apt-utils, gpg and dpkg-deb (./dev test installs them)")


@needs_offline_tools
def test_an_offline_master_card_of_several_carries_the_kube_vip_image(sample_image, tmp_path):
    archive = start_archive(tmp_path / "archive")
    registry = start_registry(tmp_path / "registry")
    try:
        populate(registry, [KUBE_VIP_IMAGE], tmp_path / "kube-vip")
        (tmp_path / "base").mkdir()
        base = offline_base(sample_image("ubuntu-raspi"), tmp_path / "base", archive)
        lab = three_masters(tmp_path / "lab", worker=False)
        image = tmp_path / "m2.img"
        succeeded(PiImage(tmp_path / "cache")("build", "--cluster", lab, "--node", "pi-master2", "--base", base,
                                              "-o", image, *offline_args(archive, registry)))
    finally:
        registry.stop()
        archive.stop()
        archive.key.close()
    bundle = json.loads(Card(image).root.text("/var/lib/pi-image/bundle/bundle.json"))

    assert KUBE_VIP_IMAGE in [entry["reference"] for entry in bundle["images"]]
    [entry] = [entry for entry in bundle["images"] if entry["reference"] == KUBE_VIP_IMAGE]
    archived = tmp_path / "kube-vip.tar"
    archived.write_bytes(Card(image).root.read(f"/var/lib/pi-image/bundle/{entry['file']}"))
    assert json.loads(tool("skopeo", "inspect", f"oci-archive:{archived}:{KUBE_VIP_IMAGE}").stdout)["Architecture"] \
        == "arm64"


# --- the workstation fails over --------------------------------------------------------------------------------

class SecondMaster:
    """A cluster of three masters on loopback addresses (127.0.0.0/24: every one of them is this machine's), whose
    virtual IP and first master do not answer, and the second master's token endpoint, as its unit runs it."""

    def __init__(self, base: Path, port: int):
        self.lab = base / "lab"
        ok("cluster", "init", self.lab, "--vip", "127.0.0.5", "--endpoint", f"127.0.0.5:{port}",
           "--kubernetes-version", "1.31", "--node-subnet", "127.0.0.0/24")
        for number in (1, 2, 3):
            ok("cluster", "add-node", self.lab, f"m{number}", "--profile", "master-2g", "--address",
               f"127.0.0.{10 + number}")
        cluster = clusters.load_cluster(self.lab)
        clusters.record_generation(self.lab, "m2", 1)  # m2's card is built: the workstation asks the masters
        card = base / "m2-cluster"
        for relative, data, file_mode in clusters.master_files(clusters.load_cluster(self.lab)):
            (card / relative).parent.mkdir(parents=True, exist_ok=True)
            (card / relative).write_bytes(data)
            (card / relative).chmod(file_mode)
        # the endpoint's own handling of several control planes is another story (firstboot/endpoint): this one
        # answers the workstation's admin requests as a single master's does
        config = json.loads((card / "tokend.json").read_text())
        for key in ("control_planes", "certificate_key_file"):
            config.pop(key)
        (card / "tokend.json").write_text(json.dumps(config))
        fake = FakeCluster(base)
        make_ca(base / "ca.crt")
        self.address = f"127.0.0.12:{port}"
        self.process = subprocess.Popen(
            [FIRSTBOOT_PYTHON, "-m", "firstboot.endpoint", "--config", str(card / "tokend.json"), "--listen",
             self.address, "--ca-cert", str(base / "ca.crt"), "--kubeconfig", str(base / "admin.conf")],
            cwd=str(REPO), env=fake.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert "listening on" in self.process.stdout.readline().decode()
        self.cluster = cluster
        self.port = port

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def second_master(tmp_path):
    master = SecondMaster(tmp_path, free_port())
    yield master
    master.stop()


def test_status_asks_the_vip_then_each_master_and_says_which_answered(second_master):
    port = second_master.port
    result = cli("status", "--cluster", second_master.lab)

    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"from the master {second_master.address}, at "), result.output
    assert f"127.0.0.5:{port} (Connection refused), 127.0.0.11:{port} (Connection refused) did not answer: " \
           f"asked the control plane {second_master.address}" in result.output
    approved = ok("approve", "m3", "--cluster", second_master.lab)
    assert approved.startswith(f"approved m3 on the master {second_master.address}")


def test_when_no_master_answers_one_line_names_every_endpoint_tried(second_master):
    second_master.stop()
    port = second_master.port
    line = refused("cluster", "sync", second_master.lab)

    tried = [f"127.0.0.{host}:{port} (Connection refused)" for host in (5, 11, 12, 13)]
    assert f"none of the cluster's token endpoints answered ({', '.join(tried)})" in line, line


# --- a master's card stamped at flash time from the cluster's master-2g image --------------------------------------

def test_a_master_stamped_at_flash_time_gets_kube_vip_and_the_count_is_checked(cli_image, base, tmp_path):
    lab = three_masters(tmp_path / "lab", worker=False)
    image = tmp_path / "master-2g.img"
    succeeded(cli_image("build", "--cluster", lab, "--profile", "master-2g", "--base", base, "-o", image,
                        "--kube-key", KUBE_KEY))
    assert filesystems(image)["root"].stat(KUBE_VIP_MANIFEST) is None, "a profile image has no node yet"
    card = random_card(tmp_path / "card.img", image.stat().st_size)

    succeeded(cli_image("flash", image, card, "--yes", "--cluster", lab, "--node", "pi-master1"))
    root = filesystems(card)["root"]
    assert yaml.safe_load(root.text(KUBE_VIP_MANIFEST))["spec"]["containers"][0]["image"] == KUBE_VIP_IMAGE
    assert root.read(CERTIFICATE_KEY) == (lab / "secrets" / "certificate.key").read_bytes()
    assert json.loads(root.text("/etc/pi-image/node.json"))["control_plane"]["may_initialize"] is True

    ok("cluster", "add-node", lab, "pi-master4", "--profile", "master-2g", "--address", "192.168.6.14")
    other = tmp_path / "other.img"  # refused before a byte is written: a sparse file is card enough
    with open(other, "wb") as handle:
        handle.truncate(image.stat().st_size)
    refusal = cli_image("flash", image, other, "--yes", "--cluster", lab, "--node", "pi-master2")
    assert refusal.returncode == 1 and "has 4 control planes" in refusal.stderr and "Traceback" not in refusal.stderr
    assert len(refusal.stderr.strip().splitlines()) == 1, refusal.stderr
