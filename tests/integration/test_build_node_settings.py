"""A node built from a stock image can join: one Kubernetes version (the cluster's), a fixed address that routes,
the role its profile says, a way in for the admin, the runtime its OS can install, repository and proxy settings,
no secret in any manifest, templates that cannot run commands. Every result read back with debugfs/mtools.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from readback import KUBE_KEY, REPO, TEST_SSH_KEY, filesystems, succeeded

from builder import cluster as clusters
from builder.config.runtimes import runtime_packages
from builder.errors import UserError

GATEWAY, DNS = "192.168.6.1", "192.168.6.2"


def init(cli, directory: Path, *extra: str, version: str = "1.30") -> Path:
    succeeded(cli("cluster", "init", directory, "--api-server", "192.168.6.11:6443", "--endpoint",
                  "192.168.6.11:8443", "--kubernetes-version", version, "--node-subnet", "192.168.6.0/24", *extra))
    return directory


@pytest.fixture(scope="module")
def lab(cli, tmp_path_factory) -> Path:
    lab = init(cli, tmp_path_factory.mktemp("lab") / "lab", "--gateway", GATEWAY, "--dns", DNS)
    succeeded(cli("cluster", "add-node", lab, "pi-master1", "--profile", "master-2g", "--address", "192.168.6.11"))
    succeeded(cli("cluster", "add-node", lab, "pi-worker1", "--profile", "worker-8g", "--address", "192.168.6.15/24"))
    succeeded(cli("cluster", "add-node", lab, "kali1", "--profile", "kali-worker", "--address", "192.168.6.16"))
    return lab


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr
    return proc.stderr


def test_the_cluster_version_drives_repo_pin_and_node_config(cli, lab, base, tmp_path):
    image = tmp_path / "w.img"
    succeeded(cli("build", "--cluster", lab, "--node", "pi-worker1", "--base", base, "-o", image,
                  "--kube-key", KUBE_KEY))
    root = filesystems(image)["root"]

    assert "/v1.30/deb/ /" in root.text("/etc/apt/sources.list.d/kubernetes.list")
    assert "Pin: version 1.30.*" in root.text("/etc/apt/preferences.d/kubernetes")
    assert json.loads(root.text("/etc/pi-image/node.json"))["kubernetes_version"] == "1.30"


def test_a_profile_naming_another_version_than_the_cluster_is_refused(cli, lab, base, tmp_path):
    run = cli("build", "--cluster", lab, "--node", "pi-worker1", "--base", base, "-o", tmp_path / "w.img",
              "--kube-key", KUBE_KEY, "--set", "kubernetes_version=1.31")

    one_line_error(run, "1.31", "1.30")
    assert not (tmp_path / "w.img").exists()


def test_a_fixed_address_gets_the_gateway_and_name_servers_on_netplan(cli, lab, base, tmp_path):
    image = tmp_path / "w.img"
    succeeded(cli("build", "--cluster", lab, "--node", "pi-worker1", "--base", base, "-o", image,
                  "--kube-key", KUBE_KEY))
    eth0 = yaml.safe_load(filesystems(image)["boot"].text("/network-config"))["ethernets"]["eth0"]

    assert eth0["addresses"] == ["192.168.6.15/24"]
    assert eth0["routes"] == [{"to": "0.0.0.0/0", "via": GATEWAY}]
    assert eth0["nameservers"] == {"addresses": [DNS]}


def test_a_fixed_address_gets_the_gateway_and_name_servers_in_networkmanager(cli, lab, sample_image, tmp_path):
    image = tmp_path / "k.img"
    succeeded(cli("build", "--cluster", lab, "--node", "kali1", "--base", sample_image("kali-raspi"), "-o", image,
                  "--kube-key", KUBE_KEY))
    root = filesystems(image)["root"]
    keyfile = root.text("/etc/NetworkManager/system-connections/pi-image-eth0.nmconnection")

    assert f"address1=192.168.6.16/24,{GATEWAY}" in keyfile
    assert f"dns={DNS};" in keyfile
    assert root.stat("/etc/NetworkManager/system-connections/pi-image-eth0.nmconnection").mode == 0o600


def test_a_fixed_address_without_a_known_gateway_is_refused_naming_the_fix(cli, base, tmp_path):
    lab = init(cli, tmp_path / "nogw")
    succeeded(cli("cluster", "add-node", lab, "pi-worker1", "--profile", "worker-8g", "--address", "192.168.6.15"))
    run = cli("build", "--cluster", lab, "--node", "pi-worker1", "--base", base, "-o", tmp_path / "w.img",
              "--kube-key", KUBE_KEY)

    one_line_error(run, "no gateway", "gateway:", "--gateway")


def test_the_master_is_built_as_a_control_plane_never_a_worker(cli, lab, base, tmp_path):
    inventory = yaml.safe_load((lab / "inventory.yaml").read_text())["nodes"]
    image = tmp_path / "m.img"
    succeeded(cli("build", "--cluster", lab, "--node", "pi-master1", "--base", base, "-o", image,
                  "--kube-key", KUBE_KEY))
    config = json.loads(filesystems(image)["root"].text("/etc/pi-image/node.json"))
    report = json.loads(succeeded(cli("inspect", "--json", image)).stdout)["firstboot"]

    assert {n["name"]: n["role"] for n in inventory}["pi-master1"] == "control-plane"
    assert config["role"] == "control-plane" and "credential" not in config
    assert (report["node"], report["role"], report["kubernetes_version"]) == ("pi-master1", "control-plane", "1.30")
    assert report["network"]["address"] == "192.168.6.11/24"


def test_add_node_refuses_role_conflicts_typos_and_duplicates(cli, lab):
    one_line_error(cli("cluster", "add-node", lab, "m2", "--profile", "master-2g", "--role", "worker"),
                   "conflicts", "control-plane")
    one_line_error(cli("cluster", "add-node", lab, "w9", "--profile", "wroker-8g"), "did you mean 'worker-8g'")
    one_line_error(cli("cluster", "add-node", lab, "w9", "--profile", "worker-8g", "--address", "192.168.6.15"),
                   "192.168.6.15", "pi-worker1")
    one_line_error(cli("cluster", "add-node", lab, "pi-worker1", "--profile", "worker-8g"), "pi-worker1")
    one_line_error(cli("cluster", "add-node", lab, "w9", "--profile", "worker-8g", "--address", "10.0.0.1/24"),
                   "outside")


def test_remove_node_takes_it_out_of_the_inventory_and_the_endpoint_config(cli, tmp_path):
    lab = init(cli, tmp_path / "lab", "--gateway", GATEWAY)
    succeeded(cli("cluster", "add-node", lab, "w1", "--profile", "worker-8g"))
    succeeded(cli("cluster", "remove-node", lab, "w1"))

    assert yaml.safe_load((lab / "inventory.yaml").read_text())["nodes"] == []
    assert "w1" not in json.loads((lab / "tokend.json").read_text())["nodes"]
    one_line_error(cli("cluster", "remove-node", lab, "w1"), "no node named 'w1'")


def test_each_build_of_a_node_bumps_its_generation_so_old_cards_die(cli, lab, base, tmp_path):
    def generation() -> int:
        return json.loads((lab / "tokend.json").read_text())["nodes"]["pi-worker1"]

    before = generation()
    succeeded(cli("build", "--cluster", lab, "--node", "pi-worker1", "--base", base, "-o", tmp_path / "a.img",
                  "--kube-key", KUBE_KEY))
    config = json.loads(filesystems(tmp_path / "a.img")["root"].text("/etc/pi-image/node.json"))
    succeeded(cli("build", "--cluster", lab, "--node", "pi-worker1", "--base", base, "--dry-run",
                  "--kube-key", KUBE_KEY))

    assert generation() == config["generation"] == before + 1  # a dry run bumps nothing
    assert (tmp_path / "a.img").stat().st_mode & 0o777 == 0o600  # it holds the credential


def test_a_build_with_no_way_in_is_refused_unless_no_login_says_so(cli, base, tmp_path):
    argv = ("build", "-p", "worker-8g", "--base", base, "--kube-key", KUBE_KEY, "--dry-run")
    short = tmp_path / "short"
    short.write_text("hunter2\n")

    one_line_error(cli(*argv, "--password-file", short), "at least 8")
    one_line_error(cli(*argv, "--ssh-key", os.devnull), "holds no key")
    # readback.PiImage adds the test key to builds that choose no login themselves; here the test chooses none
    no_key = subprocess.run([a for a in cli.argv(*argv, "--no-login") if a != "--no-login"],
                            capture_output=True, text=True, env=cli.env())
    one_line_error(no_key, "no SSH key and no password", "--no-login")
    succeeded(cli(*argv, "--no-login"))


def test_password_file_is_hashed_and_the_plaintext_never_reaches_the_image(cli, sample_image, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("correct horse battery\n")
    image = tmp_path / "k.img"
    succeeded(cli("build", "-p", "kali-worker", "--base", sample_image("kali-raspi"), "-o", image,
                  "--kube-key", KUBE_KEY, "--password-file", secret, "--ssh-key", TEST_SSH_KEY))
    shadow = filesystems(image)["root"].text("/etc/shadow")
    kali = next(line for line in shadow.splitlines() if line.startswith("kali:")).split(":")

    assert kali[1].startswith("$6$") and kali[1] != "$6$pi.image.sample$"
    assert subprocess.run(["openssl", "passwd", "-6", "-salt", kali[1].split("$")[2], "correct horse battery"],
                          capture_output=True, text=True).stdout.strip() == kali[1]
    assert b"correct horse battery" not in image.read_bytes()
    assert kali[1] not in (image.parent / "k.img.json").read_text()


def test_kali_stock_password_is_locked_when_only_a_key_is_given(cli, sample_image, tmp_path):
    image = tmp_path / "k.img"
    succeeded(cli("build", "-p", "kali-worker", "--base", sample_image("kali-raspi"), "-o", image,
                  "--kube-key", KUBE_KEY))
    kali = next(line for line in filesystems(image)["root"].text("/etc/shadow").splitlines()
                if line.startswith("kali:"))

    assert kali.split(":")[1].startswith("!")


def test_jetson_admin_has_a_valid_shadow_entry_dated_the_build_day(cli, sample_image, tmp_path):
    image = tmp_path / "j.img"
    succeeded(cli("build", "-p", "jetson-gpu", "--base", sample_image("jetson-sd"), "-o", image,
                  "--kube-key", KUBE_KEY))
    jetson = next(line for line in filesystems(image)["root"].text("/etc/shadow").splitlines()
                  if line.startswith("jetson:"))

    assert jetson.split(":")[2] == str(int(cli.env()["SOURCE_DATE_EPOCH"]) // 86400)


def test_repository_url_and_proxy_are_settings_written_where_apt_and_containerd_read_them(cli, base, tmp_path):
    image = tmp_path / "w.img"
    succeeded(cli("build", "-p", "worker-8g", "--base", base, "-o", image, "--kube-key", KUBE_KEY,
                  "--set", "kube_repo_url=http://mirror.lan/k8s/v{version}/", "--set", "proxy=http://10.0.0.1:3128"))
    root = filesystems(image)["root"]

    assert "] http://mirror.lan/k8s/v1.31/ /" in root.text("/etc/apt/sources.list.d/kubernetes.list")
    assert 'Acquire::http::Proxy "http://10.0.0.1:3128";' in root.text("/etc/apt/apt.conf.d/90pi-image-proxy")
    dropin = root.text("/etc/systemd/system/containerd.service.d/http-proxy.conf")
    assert "HTTPS_PROXY=http://10.0.0.1:3128" in dropin and "NO_PROXY=localhost" in dropin


def test_without_a_proxy_no_proxy_file_is_written(cli, base):
    plan = json.loads(succeeded(cli("build", "-p", "worker-8g", "--base", base, "--kube-key", KUBE_KEY,
                                    "--dry-run", "--json")).stdout)
    assert not [op for op in plan["ops"] if "proxy" in op["path"]]


@pytest.mark.parametrize("target,packages", [
    ("ubuntu-raspi", ["containerd"]), ("kali-raspi", ["containerd"]), ("raspios", ["containerd"]),
    ("jetson-sd", ["containerd", "nvidia-container-runtime"]),
])
def test_first_boot_is_told_which_runtime_packages_the_os_provides(cli, sample_image, tmp_path, target, packages):
    profile = {"ubuntu-raspi": "worker-8g", "kali-raspi": "kali-worker",
               "raspios": str(REPO / "tests/data/profiles/raspios-worker.yaml"), "jetson-sd": "jetson-gpu"}[target]
    image = tmp_path / "n.img"
    succeeded(cli("build", "-p", profile, "--base", sample_image(target), "-o", image, "--kube-key", KUBE_KEY))

    assert json.loads(filesystems(image)["root"].text("/etc/pi-image/node.json"))["runtime_packages"] == packages


def test_runtime_table_refuses_what_cannot_work():
    with pytest.raises(UserError, match="cri-dockerd"):
        runtime_packages("docker", False, "1.31", "ubuntu", "22.04", "ubuntu-raspi")
    with pytest.raises(UserError, match="cgroup v1"):
        runtime_packages("containerd", False, "1.35", "ubuntu", "18.04", "jetson-sd")
    with pytest.raises(UserError, match="no known container runtime"):
        runtime_packages("containerd", False, "1.31", "ubuntu", "16.04", "ubuntu-raspi")
    assert runtime_packages("docker", True, "1.31", "ubuntu", "18.04", "jetson-sd") == []
    assert runtime_packages("containerd", False, "1.31", "debian", "13", "raspios") == ["containerd"]


def psk_file(directory: Path) -> Path:
    """A Wi-Fi passphrase in a file (`--wifi-psk-file`: never on the command line)."""
    path = directory / "wifi-psk.txt"
    path.write_text("wifi-passphrase-42\n")
    return path


def test_manifests_record_that_secrets_are_set_never_their_values(cli, base, tmp_path):
    image = tmp_path / "w.img"
    pw_hash = "$6$saltsalt$" + "x" * 86
    succeeded(cli("build", "-p", "worker-8g", "--base", base, "-o", image, "--kube-key", KUBE_KEY,
                  "--set", "wifi={ssid: homelab, country: GB}", "--wifi-psk-file", psk_file(tmp_path),
                  "--set", f"password_hash={pw_hash}"))
    outside = (tmp_path / "w.img.json").read_text()
    inside = filesystems(image)["root"].text("/etc/pi-image/build.json")

    for manifest in (outside, inside):
        values = json.loads(manifest)["profile"]["values"]
        assert "wifi-passphrase-42" not in manifest and pw_hash not in manifest
        assert values["wifi"]["psk"] == "(set)" and values["password_hash"] == "(set)"


def test_a_template_cannot_run_commands_even_in_a_dry_run(cli, base, tmp_path):
    evil = tmp_path / "evil"
    (evil / "etc").mkdir(parents=True)
    marker = tmp_path / "pwned"
    (evil / "etc" / "x.j2").write_text("{{ cycler.__init__.__globals__.os.popen('touch %s').read() }}" % marker)
    run = cli("build", "-p", "worker-8g", "--base", base, "--kube-key", KUBE_KEY, "--overlay", evil, "--dry-run")

    one_line_error(run, "sandbox")
    assert not marker.exists()


def test_overlays_come_from_the_shipped_set_and_overlay_dirs_only(cli, base, tmp_path):
    shadow = tmp_path / "kube-repo"
    (shadow / "etc").mkdir(parents=True)
    (shadow / "etc" / "hijack").write_text("x\n")
    plan = subprocess.run(cli.argv("build", "-p", "worker-8g", "--base", base, "--kube-key", KUBE_KEY, "--dry-run",
                                   "--json"), capture_output=True, text=True, env=cli.env(), cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "/etc/hijack" not in plan.stdout  # ./kube-repo in the current directory is not an overlay

    one_line_error(cli("build", "-p", "worker-8g", "--base", base, "--kube-key", KUBE_KEY, "--overlay", shadow,
                       "--dry-run"), "shipped overlay 'kube-repo'", "--replace-overlay")
    replaced = json.loads(succeeded(cli("build", "-p", "worker-8g", "--base", base, "--kube-key", KUBE_KEY,
                                        "--overlay", shadow, "--replace-overlay", "--dry-run", "--json")).stdout)
    paths = {op["path"] for op in replaced["ops"]}
    assert "/etc/hijack" in paths and "/etc/apt/preferences.d/kubernetes" not in paths


def test_a_gz_output_is_really_gzip_and_archive_names_are_refused(cli, base, tmp_path):
    succeeded(cli("build", "-p", "worker-8g", "--base", base, "-o", tmp_path / "n.img.gz", "--kube-key", KUBE_KEY))
    with gzip.open(tmp_path / "n.img.gz") as handle:
        assert len(handle.read(1 << 20)) == 1 << 20

    for name in ("n.zip", "n.iso"):
        one_line_error(cli("build", "-p", "worker-8g", "--base", base, "-o", tmp_path / name, "--kube-key", KUBE_KEY),
                       name[-4:])
        assert not (tmp_path / name).exists()


def test_output_onto_a_directory_is_refused_before_any_work(cli, base, tmp_path):
    one_line_error(cli("build", "-p", "worker-8g", "--base", base, "-o", tmp_path, "--force", "--kube-key", KUBE_KEY),
                   "is a directory")


def test_a_killed_builds_leftovers_are_removed_by_the_next_build(cli, base, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f".n.img.pi-image-{dead.pid}.tmp"
    leftover.write_bytes(b"\0" * 4096)
    succeeded(cli("build", "-p", "worker-8g", "--base", base, "-o", tmp_path / "n.img", "--kube-key", KUBE_KEY))

    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.img", "n.img.json"]


def test_status_shows_each_nodes_role_and_network(cli, lab):
    rows = {row["node"]: row for row in json.loads(succeeded(cli("status", "--local", "--cluster", lab,
                                                                 "--json")).stdout)}
    table = succeeded(cli("status", "--local", "--cluster", lab)).stdout

    assert (rows["pi-master1"]["role"], rows["pi-master1"]["network"]) == ("control-plane", "192.168.6.11")
    assert (rows["pi-worker1"]["role"], rows["pi-worker1"]["network"]) == ("worker", "192.168.6.15/24")
    assert "control-plane" in table and "192.168.6.15 " in table


def test_a_node_removed_and_added_again_goes_on_from_its_generation(cli, tmp_path):
    lab = init(cli, tmp_path / "lab", "--gateway", GATEWAY)
    succeeded(cli("cluster", "add-node", lab, "w1", "--profile", "worker-8g"))
    for generation in (1, 2):  # two builds
        clusters.record_generation(lab, "w1", generation)
    succeeded(cli("cluster", "remove-node", lab, "w1"))
    succeeded(cli("cluster", "add-node", lab, "w1", "--profile", "worker-8g"))

    assert json.loads((lab / "tokend.json").read_text())["nodes"]["w1"] == 2  # its next card is generation 3


def test_a_build_that_lost_the_race_for_its_generation_publishes_nothing(cli, tmp_path):
    lab = init(cli, tmp_path / "lab", "--gateway", GATEWAY)
    succeeded(cli("cluster", "add-node", lab, "w1", "--profile", "worker-8g"))
    clusters.record_generation(lab, "w1", 1)
    with pytest.raises(UserError, match="finished first"):
        clusters.record_generation(lab, "w1", 1)


def test_secrets_leave_no_hash_in_manifests_and_proxy_credentials_are_refused(cli, base, tmp_path):
    plan = json.loads(succeeded(cli("build", "-p", "worker-8g", "--base", base, "--kube-key", KUBE_KEY, "--dry-run",
                                    "--json", "--set", "wifi.ssid=homelab", "--set", "wifi.country=GB",
                                    "--wifi-psk-file", psk_file(tmp_path))).stdout)
    wifi_file = next(op for op in plan["ops"] if op["path"] == "/etc/netplan/60-pi-image-wifi.yaml")

    assert "size" in wifi_file and "sha256" not in wifi_file  # a hash of the passphrase's file could be brute-forced
    one_line_error(cli("build", "-p", "worker-8g", "--base", base, "--kube-key", KUBE_KEY, "--dry-run",
                       "--set", "proxy=http://me:pw@10.0.0.1:3128"), "user name or password")


def test_the_image_is_private_from_the_first_byte_while_it_is_built(cli, base, tmp_path):
    modes = []
    watcher = subprocess.Popen([sys.executable, "-c", WATCH_MODES, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    succeeded(cli("build", "-p", "worker-8g", "--base", base, "-o", tmp_path / "n.img", "--kube-key", KUBE_KEY,
                  "--set", "password_hash=$6$saltsalt$" + "x" * 86))
    watcher.terminate()
    modes = set(watcher.communicate()[0].split())

    assert modes <= {"0o600"}, modes
    assert (tmp_path / "n.img").stat().st_mode & 0o777 == 0o600  # it holds a password hash


WATCH_MODES = """
import os, sys, time
seen = set()
end = time.time() + 120
while time.time() < end:
    for name in os.listdir(sys.argv[1]):
        if ".img" in name and ".json" not in name:  # the image and its temporaries, not the (public) manifest
            try:
                mode = oct(os.stat(os.path.join(sys.argv[1], name)).st_mode & 0o777)
            except FileNotFoundError:
                continue
            if mode not in seen:
                seen.add(mode)
                print(mode, flush=True)
    time.sleep(0.01)
"""


def test_runtime_settings_that_cannot_work_are_refused():
    with pytest.raises(UserError, match="containerd 2.x only"):
        runtime_packages("containerd", False, "1.31", "debian", "12", "raspios", config_version=3)
    with pytest.raises(UserError, match="only Jetson"):
        runtime_packages("containerd", False, "1.31", "ubuntu", "22.04", "ubuntu-raspi", default_runtime="nvidia")
