"""An x86 node's seed carries the same plan as a card: its documents (meta-data, user-data, network-config), their
write_files against the image build's plan for the same node, and their determinism. Planned with prepare() on
the x86 reference tree and on the Ubuntu-raspi sample; read back with PyYAML only."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from builder.build import BuildRequest, prepare
from builder.build.seed_iso import (
    MAX_USER_DATA,
    cloud_config_text,
    seed_documents,
    write_iso,
)
from builder.cluster import add_node, init_cluster
from builder.errors import UserError
from builder.samples.catalog import UBUNTU_X86_REFERENCE, UBUNTU_X86_RELEASES, UBUNTU_X86_TREES
from builder.samples.tree import stage_tree

REPO = Path(__file__).resolve().parents[2]
KUBE_KEY = REPO / "tests" / "data" / "test-Release.key"
SSH_KEY = (REPO / "tests" / "data" / "test-admin.pub").read_text().strip()
EPOCH = "1700000000"
# Written by steps that know nothing of the OS: the same bytes, modes and owners on every target.
TARGET_INDEPENDENT_STEPS = {"firstboot", "kube-key", "control-plane", "overlay:k8s-kernel", "overlay:kube-repo",
                            "overlay:runtime-containerd", "overlay:proxy"}
# What the seed writes beyond them: identity and region, which cloud-init would otherwise leave as the image's.
OS_FILES = {"/etc/hostname", "/etc/hosts", "/etc/timezone", "/etc/default/locale", "/etc/default/keyboard"}
UNIT_LINK = "/etc/systemd/system/multi-user.target.wants/pi-image-firstboot.service"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """A cluster with x86 workers: one fixed address with its MAC, one fixed address without, one on DHCP."""
    directory = tmp_path_factory.mktemp("cluster") / "lab"
    cluster = init_cluster(directory, "192.168.6.10:6443", "192.168.6.10:8443", "1.31", "192.168.6.0/24",
                           gateway="192.168.6.1", dns=["192.168.6.1"])
    add_node(cluster, "x86-a", "x86-worker", None, "worker", "52:54:00:12:34:56", "192.168.6.31")
    add_node(cluster, "x86-b", "x86-worker", None, "worker", None, "192.168.6.32")
    add_node(cluster, "x86-c", "x86-worker", None, "worker")
    add_node(cluster, "x86-master", "x86-worker", None, "control-plane", None, "192.168.6.10")
    return directory


@pytest.fixture(autouse=True)
def fixed_epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)


def reference(tmp_path: Path, release: str = UBUNTU_X86_REFERENCE) -> Path:
    """The x86 reference tree, staged as seed_iso() stages it."""
    root = tmp_path / f"x86-{release}"
    if not root.exists():
        stage_tree(UBUNTU_X86_TREES[release], {}, root)
    return root


def plan(base: Path, lab: Path, node: str, **options):
    options.setdefault("ssh_keys", [SSH_KEY])
    return prepare(BuildRequest(base=str(base), cluster=lab, node=node, kube_key=KUBE_KEY, **options))


def documents(tmp_path: Path, lab: Path, node: str, autoinstall: bool = False, **options) -> dict[str, bytes]:
    return seed_documents(plan(reference(tmp_path), lab, node, **options), autoinstall=autoinstall)


def cloud_config(docs: dict[str, bytes]) -> dict:
    text = docs["user-data"].decode()
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def written(config: dict) -> dict[str, tuple[bytes, str, str]]:
    """write_files as {path: (content, permissions, owner)}, base64 decoded."""
    files = {}
    for entry in config["write_files"]:
        data = entry["content"].encode() if entry.get("encoding") != "b64" else base64.b64decode(entry["content"])
        files[entry["path"]] = (data, entry["permissions"], entry["owner"])
    return files


def test_user_data_is_the_seed_templates_cloud_config_plus_the_plan(tmp_path, lab):
    config = cloud_config(documents(tmp_path, lab, "x86-a"))

    assert (config["hostname"], config["preserve_hostname"], config["manage_etc_hosts"]) == ("x86-a", False, False)
    user = config["users"][0]
    assert (user["name"], user["lock_passwd"], user["ssh_authorized_keys"]) == ("ubuntu", True, [SSH_KEY])
    assert user["groups"] == ["adm", "cdrom", "dip", "lxd", "sudo"]
    assert config["ssh_pwauth"] is False and "bootcmd" not in config  # a worker makes no directories of its own
    assert ["ln", "-sfn", "--", "/etc/systemd/system/pi-image-firstboot.service", UNIT_LINK] in config["runcmd"]
    assert config["runcmd"][-2:] == [["systemctl", "daemon-reload"],
                                     ["systemctl", "start", "--no-block", "pi-image-firstboot.service"]]


def test_write_files_equal_the_image_plan_of_the_same_node(tmp_path, lab, sample_image):
    """The card of the same node (worker-8g on the Ubuntu-raspi sample: same role, memory and cores) plans the same
    agent, node.json, sysctls, modules, runtime config, kube repo + keyring + pin and unit, byte for byte."""
    as_pi = tmp_path / "lab"  # the same inventory, where x86-a is a worker-8g (a build follows the inventory's profile)
    shutil.copytree(lab, as_pi)
    inventory = as_pi / "inventory.yaml"
    entries = yaml.safe_load(inventory.read_text())
    next(node for node in entries["nodes"] if node["name"] == "x86-a")["profile"] = "worker-8g"
    inventory.write_text(yaml.safe_dump(entries))
    card = plan(sample_image("ubuntu-raspi", "24.04"), as_pi, "x86-a")
    expected = {op.path: (op.content, f"{op.mode:04o}", "root:root") for op in card.plan.ops
                if op.action == "write" and op.step in TARGET_INDEPENDENT_STEPS}
    files = written(cloud_config(documents(tmp_path, lab, "x86-a")))

    assert {path: files[path] for path in expected if path in files} == expected
    assert set(files) == set(expected) | OS_FILES
    assert {"/etc/pi-image/node.json", "/etc/apt/keyrings/kubernetes-apt-keyring.gpg", "/etc/containerd/config.toml",
            "/etc/systemd/system/pi-image-firstboot.service", "/usr/lib/pi-image/firstboot/agent.py"} <= set(files)
    assert files["/etc/pi-image/node.json"][1] == "0600"
    assert json.loads(files["/etc/pi-image/node.json"][0])["node"] == "x86-a"
    links = {(op.target, op.path) for op in card.plan.ops if op.action == "symlink" and op.step == "firstboot"}
    assert links == {("/etc/systemd/system/pi-image-firstboot.service", UNIT_LINK)}


def test_binary_content_is_base64_and_text_stays_readable(tmp_path, lab):
    entries = {e["path"]: e for e in cloud_config(documents(tmp_path, lab, "x86-a"))["write_files"]}

    assert entries["/etc/apt/keyrings/kubernetes-apt-keyring.gpg"]["encoding"] == "b64"
    assert "encoding" not in entries["/usr/lib/pi-image/firstboot/agent.py"]
    assert not any(entry.get("defer") for entry in entries.values())  # every file is root's: written before users


def test_a_control_plane_seed_makes_its_private_directories_before_its_files(tmp_path, lab):
    config = cloud_config(documents(tmp_path, lab, "x86-master", sets={"role": "control-plane"}))
    files = written(config)

    assert ["install", "-d", "-m", "0700", "-o", "root", "-g", "root", "--", "/etc/pi-image/cluster/secrets"] \
        in config["bootcmd"]
    assert files["/etc/pi-image/cluster/secrets/enrollment.key"][1:] == ("0600", "root:root")
    assert ["systemctl", "start", "--no-block", "pi-image-tokend.service"] in config["runcmd"]


def test_meta_data_gives_each_node_its_own_instance_id(tmp_path, lab):
    metas = {node: yaml.safe_load(documents(tmp_path, lab, node)["meta-data"]) for node in ("x86-a", "x86-c")}

    assert metas["x86-a"]["instance-id"] != metas["x86-c"]["instance-id"]
    for node, meta in metas.items():
        assert node in meta["instance-id"] and meta["local-hostname"] == node


def test_network_config_only_for_a_fixed_address_matching_the_nic(tmp_path, lab):
    with_mac, by_name = (yaml.safe_load(documents(tmp_path, lab, node)["network-config"])
                         for node in ("x86-a", "x86-b"))

    entry = with_mac["ethernets"]["cluster"]
    assert entry["match"] == {"macaddress": "52:54:00:12:34:56"}
    assert (entry["addresses"], entry["routes"], entry["nameservers"]["addresses"], entry["dhcp4"]) == \
        (["192.168.6.31/24"], [{"to": "0.0.0.0/0", "via": "192.168.6.1"}], ["192.168.6.1"], False)
    assert by_name["ethernets"]["cluster"]["match"] == {"name": "en*"}
    assert "network-config" not in documents(tmp_path, lab, "x86-c")


def test_a_profile_that_names_the_interface_keeps_it(tmp_path, lab):
    seed = documents(tmp_path, lab, "x86-b", sets={"network": {"interface": "enp1s0"}})
    config = yaml.safe_load(seed["network-config"])

    assert "match" not in config["ethernets"]["enp1s0"]


def test_the_same_inputs_give_the_same_bytes_in_any_time_zone(tmp_path, lab, monkeypatch):
    first, second = (documents(tmp_path / str(n), lab, "x86-a") for n in (1, 2))
    images = []
    for zone in ("UTC", "Asia/Kathmandu"):
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        out = io.BytesIO()
        write_iso(first, out, int(EPOCH))
        images.append(out.getvalue())
    monkeypatch.delenv("TZ")
    time.tzset()

    assert first == second
    assert images[0] == images[1]
    assert time.time() > int(EPOCH) + 1e6  # the clock pycdlib saw is the real one again


def test_one_seed_serves_ubuntu_22_04_and_24_04(tmp_path, lab):
    seeds = [seed_documents(plan(reference(tmp_path, release), lab, "x86-a")) for release in UBUNTU_X86_RELEASES]

    assert seeds[0] == seeds[1]


def test_autoinstall_wraps_the_same_cloud_config_for_the_installer(tmp_path, lab):
    plain = cloud_config(documents(tmp_path, lab, "x86-a"))
    keyed = cloud_config(documents(tmp_path, lab, "x86-a", autoinstall=True))["autoinstall"]
    hashed = cloud_config(documents(tmp_path, lab, "x86-a", autoinstall=True, password_hash="$6$salt$hash"))

    assert keyed["version"] == 1 and keyed["user-data"] == plain
    assert keyed["storage"] == {"layout": {"name": "direct"}, "swap": {"size": 0}}
    assert keyed["ssh"] == {"install-server": True, "authorized-keys": [SSH_KEY], "allow-pw": False}
    assert "identity" not in keyed  # the installer requires a password there: the user-data's user logs in by key
    assert keyed["network"]["ethernets"]["cluster"]["addresses"] == ["192.168.6.31/24"]
    assert hashed["autoinstall"]["identity"] == {"hostname": "x86-a", "username": "ubuntu", "password": "$6$salt$hash"}


def test_user_data_over_what_a_seed_may_hold_is_refused(tmp_path, lab):
    payload = tmp_path / "payload"
    (payload / "opt").mkdir(parents=True)
    (payload / "opt" / "blob.bin").write_bytes(os.urandom(MAX_USER_DATA))

    with pytest.raises(UserError, match=r"user-data is \d+ KiB, over what a seed may hold \(1024 KiB"):
        documents(tmp_path, lab, "x86-c", overlays=[str(payload)])


def test_a_template_that_sets_what_the_plan_writes_is_refused(tmp_path, lab):
    ctx = plan(reference(tmp_path), lab, "x86-c")

    with pytest.raises(UserError, match="sets runcmd, which seed-iso writes from the plan"):
        cloud_config_text("#cloud-config\nruncmd: [reboot]\n", ctx)


def test_the_reference_cloud_config_runs_bootcmd_before_write_files_and_runcmd_after_deferred_files(tmp_path):
    """What the seed's order relies on, as the stock image's /etc/cloud/cloud.cfg says it."""
    stock = yaml.safe_load((reference(tmp_path) / "etc/cloud/cloud.cfg").read_text())
    init, final = stock["cloud_init_modules"], stock["cloud_final_modules"]

    assert init.index("bootcmd") < init.index("write_files") < init.index("users_groups")
    assert "runcmd" in stock["cloud_config_modules"]  # writes the script that scripts_user runs in the final stage
    assert final.index("write_files_deferred") < final.index("scripts_user")
    assert stock["system_info"]["default_user"]["groups"] == ["adm", "cdrom", "dip", "lxd", "sudo"]
