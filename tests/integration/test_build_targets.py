"""A user turns each supported vendor image into a Kubernetes node with the real `pi-image build`, and everything
the build promises is read back with independent tools (debugfs, mtools, sfdisk, e2fsck, fsck.vfat, tomllib, gpg,
apt-get, and cloud-init / containerd when installed) — never with pi-image's own readers.

Each target is built three times, once per module and in parallel on the machine's cores: the first build, a
rebuild that takes the first output as its base, and a twin build from the same base and SOURCE_DATE_EPOCH.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest
import yaml
from readback import (
    KUBE_KEY,
    REPO,
    TEST_PROFILES,
    TEST_SSH_KEY,
    PiImage,
    Reader,
    entries,
    filesystems,
    fingerprint,
    same_bytes,
    sha256_of,
    succeeded,
    tool,
)

from builder.plan.steps.firstboot import NOT_ON_NODES

FLAGS = ["cgroup_enable=cpuset", "cgroup_enable=memory", "cgroup_memory=1", "swapaccount=1"]
SSH_KEY = TEST_SSH_KEY.read_text().strip()  # the key PiImage builds with
SET_KEY = ("--set", f'ssh_authorized_keys=["{SSH_KEY}"]')
REPO_LINE = ("deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] "
             "https://pkgs.k8s.io/core:/stable:/v1.31/deb/ /")
UNITS = "/etc/systemd/system"
FIRSTBOOT_UNIT = "pi-image-firstboot.service"


@dataclass(frozen=True)
class Case:
    """One user story: this vendor image, this profile, this node name."""

    target: str
    profile: str
    node: str
    extra: tuple[str, ...] = ()
    runtime: str = "containerd"

    @property
    def output_name(self) -> str:
        return f"{self.node}-rootfs" if self.target == "l4t-rootfs" else f"{self.node}.img"


CASES = [
    Case("ubuntu-raspi", "worker-8g", "pi-worker1"),
    Case("kali-raspi", "kali-worker", "kali-worker1", SET_KEY),
    Case("raspios", str(TEST_PROFILES / "raspios-worker.yaml"), "rpi-worker1"),
    Case("jetson-sd", "jetson-gpu", "jetson-nano1", SET_KEY),
    Case("l4t-rootfs", "jetson-l4t", "jetson-nano2", SET_KEY),
]
PI = ["ubuntu-raspi", "kali-raspi", "raspios"]
JETSON = ["jetson-sd", "l4t-rootfs"]
DISKS = PI + ["jetson-sd"]


@dataclass
class Built:
    """A target's three builds and what its base looked like before any of them."""

    case: Case
    base: Path
    base_before: tuple
    first: Path
    twin: Path
    rebuilt: Path
    cache: Path
    runs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    first_before_rebuild: tuple = ()

    def fs(self, which: str = "first") -> dict[str, Reader]:
        """The filesystems of one build's output (asserting that build succeeded)."""
        succeeded(self.runs[which])
        return filesystems(getattr(self, which))

    @property
    def root(self) -> Reader:
        return self.fs()["root"]

    @property
    def boot(self) -> Reader:
        return self.fs()["boot"]

    def build_json(self, which: str = "first") -> dict:
        return json.loads(self.fs(which)["root"].read("/etc/pi-image/build.json"))


@pytest.fixture(scope="module")
def fleet(sample_image, tmp_path_factory) -> dict[str, Built]:
    """Every case built, rebuilt from its output, and (images) built again from its base; two builds at a time."""
    top = tmp_path_factory.mktemp("fleet")
    fleet = {}
    for case in CASES:
        base = sample_image(case.target)
        fleet[case.target] = Built(case, base, fingerprint(base), *(top / kind / case.output_name
                                                                   for kind in ("first", "twin", "rebuilt")),
                                   top / "cache" / case.target)  # one cache per target: no two writers at once

    def build(built: Built, base: Path, output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        output.parent.mkdir(exist_ok=True)
        return PiImage(built.cache)("build", "--profile", built.case.profile, "--base", base, "--output", output,
                                    "--node", built.case.node, "--kube-key", KUBE_KEY, *built.case.extra, *extra)

    def after_first(built: Built, job):
        first = firsts[built.case.target].result()
        if first.returncode != 0:
            return first
        return job()

    def rebuild(built: Built) -> subprocess.CompletedProcess[str]:
        built.first_before_rebuild = fingerprint(built.first)
        return build(built, built.first, built.rebuilt)

    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        firsts = {t: pool.submit(build, b, b.base, b.first) for t, b in fleet.items()}
        twins = {t: pool.submit(after_first, b, lambda b=b: build(b, b.base, b.twin))
                 for t, b in fleet.items() if t in DISKS}
        rebuilds = {t: pool.submit(after_first, b, lambda b=b: rebuild(b)) for t, b in fleet.items()}
        for target, built in fleet.items():
            built.runs = {"first": firsts[target].result(), "rebuilt": rebuilds[target].result()}
            if target in twins:
                built.runs["twin"] = twins[target].result()
    return fleet


@pytest.fixture(params=[case.target for case in CASES])
def built(request, fleet) -> Built:
    return fleet[request.param]


def only(*targets: str):
    return pytest.mark.parametrize("target", targets)


def non_comment_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def latest_ops(manifest: dict) -> dict[tuple[str, str], dict]:
    """The last file operation on each (filesystem, path) of a build manifest."""
    return {(op["fs"], op["path"]): op for op in manifest["files"]}


# --- what the user sees ------------------------------------------------------------------------------------------

def test_build_reports_the_output_and_writes_the_manifest_beside_it(built):
    run = succeeded(built.runs["first"])
    beside = built.first.with_name(built.first.name + ".json")

    assert f"Built {built.first} (" in run.stdout
    assert beside.is_file(), f"no build manifest beside the output: {entries(built.first.parent)}"
    manifest = json.loads(beside.read_text())
    assert (manifest["target"], manifest["node"], manifest["profile"]["name"]) == \
        (built.case.target, built.case.node, Path(built.case.profile).stem)
    assert manifest["files"] == built.build_json()["files"]
    if built.first.is_file():
        assert manifest["output"]["size"] == built.first.stat().st_size
        assert len(manifest["output"]["chunk_sha256"]) == 64


def test_every_file_the_manifest_lists_is_in_the_image_with_its_hash_mode_and_owner(built):
    fs = built.fs()
    for (name, path), op in latest_ops(built.build_json()).items():
        reader, where = fs[name], f"{name}:{path}"
        entry = reader.stat(path)
        if op["action"] == "remove":
            assert entry is None, f"{where} should be gone"
            continue
        assert entry is not None, f"{where} is missing"
        if op["action"] == "write":
            content = reader.read(path)
            assert entry.kind == "file" and len(content) == op["size"], where
            if "sha256" in op:  # private (0600) files are listed without a hash of their secret
                assert hashlib.sha256(content).hexdigest() == op["sha256"], where
        elif op["action"] == "symlink":
            assert (entry.kind, entry.target) == ("link", op["target"]), where
        else:
            assert entry.kind == "dir", where
        if entry.mode is not None and "mode" in op:
            assert (f"{entry.mode:04o}", f"{entry.uid}:{entry.gid}") == (op["mode"], op["owner"]), where


def test_filesystems_are_clean_after_the_build(built, tmp_path):
    for name, reader in built.fs().items():
        check = reader.fsck(tmp_path)
        assert check is None or check.returncode == 0, f"{name}: {check.stdout.decode()} {check.stderr.decode()}"


def test_base_is_never_written(built):
    succeeded(built.runs["first"])
    assert fingerprint(built.base) == built.base_before


# --- step 1: cgroup flags ----------------------------------------------------------------------------------------

@only(*PI)
def test_kernel_cmdline_gets_the_cgroup_flags_once_on_its_single_line(fleet, target):
    built = fleet[target]
    before = filesystems(built.base)["boot"].text("/cmdline.txt")
    after = built.boot.text("/cmdline.txt")

    assert len(after.rstrip("\n").splitlines()) == 1 and after.count("\n") <= 1, repr(after)
    assert after.split() == before.split() + FLAGS


@only(*JETSON)
def test_jetson_extlinux_append_gets_the_flags_and_keeps_cbootargs(fleet, target):
    built = fleet[target]
    path = "/boot/extlinux/extlinux.conf"
    before = filesystems(built.base)["root"].text(path).splitlines()
    after = built.root.text(path).splitlines()
    primary = next(i for i, line in enumerate(before) if line.strip() == "LABEL primary")
    append = next(i for i in range(primary, len(before)) if before[i].strip().startswith("APPEND"))

    assert len(after) == len(before)
    assert [line for i, line in enumerate(after) if i != append] == \
        [line for i, line in enumerate(before) if i != append]
    assert after[append].split() == before[append].split() + FLAGS
    assert after[append].split()[:2] == ["APPEND", "${cbootargs}"]


# --- step 2: container runtime -----------------------------------------------------------------------------------

def runc_options(config: dict) -> dict:
    return config["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]["options"]


@only(*PI)
def test_containerd_config_turns_on_the_systemd_cgroup_driver(fleet, target):
    root = fleet[target].root
    config = tomllib.loads(root.text("/etc/containerd/config.toml"))
    crictl = yaml.safe_load(root.text("/etc/crictl.yaml"))

    assert config["version"] == 2
    assert runc_options(config)["SystemdCgroup"] is True
    assert config["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]["runtime_type"] == \
        "io.containerd.runc.v2"
    assert crictl["runtime-endpoint"] == "unix:///run/containerd/containerd.sock"


@only(*PI)
def test_containerd_itself_reads_systemd_cgroup_from_the_config(fleet, target, tmp_path):
    config = tmp_path / "config.toml"
    config.write_bytes(fleet[target].root.read("/etc/containerd/config.toml"))
    dump = tool("containerd", "--config", config, "config", "dump").stdout.decode()

    assert runc_options(tomllib.loads(dump))["SystemdCgroup"] is True


@only(*JETSON)
def test_jetson_containerd_makes_the_nvidia_runtime_the_default_for_pods(fleet, target, tmp_path):
    config = tmp_path / "config.toml"
    config.write_bytes(fleet[target].root.read("/etc/containerd/config.toml"))
    cri = tomllib.loads(tool("containerd", "--config", config, "config", "dump").stdout.decode())
    cri = cri["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]

    assert cri["default_runtime_name"] == "nvidia"
    assert cri["runtimes"]["nvidia"]["options"]["BinaryName"] == "/usr/bin/nvidia-container-runtime"
    assert cri["runtimes"]["nvidia"]["options"]["SystemdCgroup"] is True


@only(*JETSON)
def test_jetson_docker_keeps_the_nvidia_runtime_and_makes_it_the_default(fleet, target):
    built = fleet[target]
    before = json.loads(filesystems(built.base)["root"].text("/etc/docker/daemon.json"))
    daemon = json.loads(built.root.text("/etc/docker/daemon.json"))

    assert daemon["runtimes"] == before["runtimes"]
    assert daemon["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert daemon["default-runtime"] == "nvidia"
    assert daemon["exec-opts"] == ["native.cgroupdriver=systemd"]
    assert (daemon["log-driver"], daemon["log-opts"], daemon["storage-driver"]) == \
        ("json-file", {"max-size": "100m"}, "overlay2")


# --- steps 3 and 4: kernel networking, kube repo -----------------------------------------------------------------

def test_kernel_modules_and_sysctls_for_pod_networking_are_set(built):
    root = built.root
    modules = non_comment_lines(root.text("/etc/modules-load.d/k8s.conf"))
    sysctls = dict(map(str.strip, line.split("=", 1))
                   for line in non_comment_lines(root.text("/etc/sysctl.d/k8s.conf")))

    assert modules == ["overlay", "br_netfilter"]
    assert sysctls == {"net.bridge.bridge-nf-call-iptables": "1", "net.bridge.bridge-nf-call-ip6tables": "1",
                       "net.ipv4.ip_forward": "1"}


def test_kubernetes_repo_is_signed_and_its_packages_held_at_the_profile_minor(built):
    root = built.root
    keyring = root.read("/etc/apt/keyrings/kubernetes-apt-keyring.gpg")
    pin = dict(line.split(":", 1) for line in non_comment_lines(root.text("/etc/apt/preferences.d/kubernetes")))

    assert non_comment_lines(root.text("/etc/apt/sources.list.d/kubernetes.list")) == [REPO_LINE]
    assert b"BEGIN PGP" not in keyring and keyring[0] & 0x80, "the keyring must be binary (dearmored)"
    assert keyring == subprocess.run(["gpg", "--dearmor"], input=KUBE_KEY.read_bytes(),
                                     capture_output=True, check=True).stdout
    assert {k.strip(): v.strip() for k, v in pin.items()} == \
        {"Package": "kubelet kubeadm kubectl", "Pin": "version 1.31.*", "Pin-Priority": "1001"}


def test_apt_reads_the_kubernetes_source_without_downloading(built, tmp_path):
    for path in ("/etc/apt/sources.list.d/kubernetes.list", "/etc/apt/keyrings/kubernetes-apt-keyring.gpg"):
        (tmp_path / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path.lstrip("/")).write_bytes(built.root.read(path))
    for directory in ("var/lib/dpkg", "state", "cache"):
        (tmp_path / directory).mkdir(parents=True, exist_ok=True)
    (tmp_path / "var/lib/dpkg/status").touch()
    uris = tool("apt-get", "-o", f"Dir={tmp_path}", "-o", f"Dir::State={tmp_path}/state", "-o",
                f"Dir::State::status={tmp_path}/var/lib/dpkg/status", "-o", f"Dir::Cache={tmp_path}/cache",
                "-o", "Debug::NoLocking=1", "update", "--print-uris").stdout.decode()

    assert "'https://pkgs.k8s.io/core:/stable:/v1.31/deb/InRelease'" in uris


# --- step 5: swap ------------------------------------------------------------------------------------------------

def wants_links(root: Reader, unit: str) -> list[str]:
    return [f"{UNITS}/{d}/{unit}" for d in root.listdir(UNITS) if d.endswith((".wants", ".requires"))
            and unit in root.listdir(f"{UNITS}/{d}")]


@pytest.mark.parametrize("target,unit", [("jetson-sd", "nvzramconfig.service"), ("l4t-rootfs", "nvzramconfig.service"),
                                         ("raspios", "dphys-swapfile.service")])
def test_swap_service_is_masked_and_no_longer_wanted(fleet, target, unit):
    built = fleet[target]
    assert wants_links(filesystems(built.base)["root"], unit), "the sample should start with the service enabled"

    assert built.root.stat(f"{UNITS}/{unit}").target == "/dev/null"
    assert wants_links(built.root, unit) == []


def test_no_swap_is_mounted_from_the_fstab(built):
    fstab = built.root.text("/etc/fstab") or ""
    assert [line for line in non_comment_lines(fstab) if line.split()[2:3] == ["swap"]] == []


# --- step 6: target fixes ----------------------------------------------------------------------------------------

def test_kali_enables_systemd_resolved_for_the_kubelets_resolv_conf(fleet):
    built = fleet["kali-raspi"]
    link = f"{UNITS}/multi-user.target.wants/systemd-resolved.service"
    assert filesystems(built.base)["root"].stat(link) is None, "the sample should start with resolved disabled"

    target = built.root.stat(link).target
    assert target.endswith("/systemd/system/systemd-resolved.service")
    assert built.root.stat(target).kind == "file"
    assert built.root.stat(f"{UNITS}/dbus-org.freedesktop.resolve1.service").target == target


def test_ubuntu_cloud_init_seed_on_system_boot_sets_our_hostname_and_user(fleet):
    built = fleet["ubuntu-raspi"]
    user_data = built.boot.text("/user-data")
    config = yaml.safe_load(user_data)
    meta = yaml.safe_load(built.boot.text("/meta-data"))
    network = yaml.safe_load(built.boot.text("/network-config"))

    assert user_data.startswith("#cloud-config\n")
    assert (config["hostname"], config["preserve_hostname"]) == ("pi-worker1", False)
    assert [user["name"] for user in config["users"]] == ["ubuntu"]
    assert "pi-worker1" in meta["instance-id"]
    assert network["version"] == 2 and network["ethernets"]["eth0"]["dhcp4"] is True


def test_ubuntu_user_data_is_valid_cloud_config(fleet, tmp_path):
    user_data = tmp_path / "user-data"
    user_data.write_bytes(fleet["ubuntu-raspi"].boot.read("/user-data"))
    check = tool("cloud-init", "schema", "--config-file", user_data, check=False)

    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


# --- step 7: identity --------------------------------------------------------------------------------------------

def test_hostname_and_hosts_name_the_node(built):
    hosts = [line.split() for line in non_comment_lines(built.root.text("/etc/hosts"))]

    assert built.root.text("/etc/hostname") == built.case.node + "\n"
    assert [fields for fields in hosts if fields[0] == "127.0.1.1"] == [["127.0.1.1", built.case.node]]
    assert ["127.0.0.1", "localhost"] in hosts


def test_kali_admin_gets_the_ssh_key(fleet):
    root = fleet["kali-raspi"].root
    keys = root.stat("/home/kali/.ssh/authorized_keys")

    assert root.text("/home/kali/.ssh/authorized_keys") == SSH_KEY + "\n"
    assert (keys.mode, keys.uid, keys.gid) == (0o600, 1000, 1000)
    assert root.stat("/home/kali/.ssh").mode == 0o700


def test_raspios_first_boot_creates_the_user_and_turns_ssh_on(fleet):
    built = fleet["raspios"]

    assert built.boot.text("/userconf.txt").startswith("pi:")
    assert built.boot.read("/ssh") is not None
    assert built.root.text("/etc/ssh/authorized_keys/pi") == SSH_KEY + "\n"
    assert "/etc/ssh/authorized_keys/%u" in built.root.text("/etc/ssh/sshd_config.d/pi-image.conf")


@only(*JETSON)
def test_jetson_boots_past_oem_config_with_a_user_and_key(fleet, target):
    root = fleet[target].root
    passwd = {f[0]: f for f in (line.split(":") for line in root.text("/etc/passwd").splitlines())}
    shadow = root.stat("/etc/shadow")

    assert passwd["jetson"][5:7] == ["/home/jetson", "/bin/bash"]
    assert any(line.startswith("jetson:") for line in root.text("/etc/shadow").splitlines())
    assert (shadow.mode, shadow.uid) == (0o640, 0)
    assert root.text("/home/jetson/.ssh/authorized_keys") == SSH_KEY + "\n"
    assert root.stat(f"{UNITS}/default.target").target.endswith("/multi-user.target")


# --- step 8: firstboot -------------------------------------------------------------------------------------------

def test_node_config_is_readable_by_root_only(built):
    entry = built.root.stat("/etc/pi-image/node.json")
    config = json.loads(built.root.text("/etc/pi-image/node.json"))

    assert (entry.kind, entry.mode, entry.uid, entry.gid) == ("file", 0o600, 0, 0)
    assert (config["node"], config["kubernetes_version"], config["runtime"], config["role"]) == \
        (built.case.node, "1.31", built.case.runtime, "worker")
    assert "credential" not in config  # no --cluster: the agent only does local setup


def test_a_node_image_carries_the_agent_but_not_the_masters_endpoint(built):
    agent = built.root.listdir("/usr/lib/pi-image/firstboot")

    assert "agent.py" in agent and "protocol.py" in agent
    assert "endpoint" not in agent and not any(name.startswith("tokend") for name in agent)


def test_firstboot_agent_is_installed_and_enabled(built):
    root = built.root
    unit_text = (REPO / "firstboot" / "units" / FIRSTBOOT_UNIT).read_text()
    wanted_by = next(line.split("=", 1)[1].split()[0] for line in unit_text.splitlines()
                     if line.startswith("WantedBy="))

    assert root.text(f"{UNITS}/{FIRSTBOOT_UNIT}") == unit_text
    assert root.stat(f"{UNITS}/{wanted_by}.wants/{FIRSTBOOT_UNIT}").target == f"{UNITS}/{FIRSTBOOT_UNIT}"
    for module in sorted((REPO / "firstboot").glob("*.py")):
        on_node = root.read(f"/usr/lib/pi-image/firstboot/{module.name}")
        assert on_node == (None if module.name in NOT_ON_NODES else module.read_bytes()), module.name


# --- the build as a whole ----------------------------------------------------------------------------------------

def test_build_twice_is_byte_identical(built):
    """Rebuilding a built image (its output as the base) changes nothing but the manifest's record of the base."""
    first, again = built.fs("first"), built.fs("rebuilt")
    ops = latest_ops(built.build_json())

    for name, path in ops:
        assert again[name].stat(path) == first[name].stat(path), f"{name}:{path}"
        assert again[name].read(path) == first[name].read(path), f"{name}:{path}"
    one, two = built.build_json("first"), built.build_json("rebuilt")
    assert {k: v for k, v in one.items() if k not in ("base", "files")} == \
        {k: v for k, v in two.items() if k not in ("base", "files")}
    # the rebuild plans against a base that is already done (user exists, unit masked): a subset of the ops
    assert [op for op in two["files"] if op not in one["files"]] == []
    if built.first.is_file():
        assert two["base"] == {"path": built.first.name, "sha256": sha256_of(built.first)}
    assert fingerprint(built.first) == built.first_before_rebuild, "the rebuild's base was written"


@only(*DISKS)
def test_same_inputs_give_the_same_image_bytes(fleet, target):
    built = fleet[target]
    succeeded(built.runs["first"])
    succeeded(built.runs["twin"])
    manifests = [json.loads(p.with_name(p.name + ".json").read_text()) for p in (built.first, built.twin)]

    assert same_bytes(built.first, built.twin)
    assert manifests[0]["output"]["chunk_sha256"] == manifests[1]["output"]["chunk_sha256"]


def test_manifest_hashes_are_those_of_the_real_base_and_output(fleet):
    built = fleet["ubuntu-raspi"]
    beside = json.loads(built.first.with_name(built.first.name + ".json").read_text())

    assert built.build_json()["base"] == {"path": built.base.name, "sha256": sha256_of(built.base)}
    assert beside["output"]["chunk_sha256"] == chunk_sha256_of(built.first)


def chunk_sha256_of(path: Path) -> str:
    """The manifest's chunk digest, computed the plain way: SHA-256 over each 4 MiB chunk's SHA-256."""
    outer = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            outer.update(hashlib.sha256(chunk).digest())
    return outer.hexdigest()


def test_dry_run_lists_exactly_what_the_build_writes(fleet):
    built = fleet["ubuntu-raspi"]
    plan = json.loads(succeeded(PiImage(built.cache)(
        "build", "--dry-run", "--json", "--profile", built.case.profile, "--base", built.base,
        "--node", built.case.node, "--kube-key", KUBE_KEY)).stdout)

    *ops, manifest = plan["ops"]
    assert ops == built.build_json()["files"]
    assert (manifest["action"], manifest["path"]) == ("write", "/etc/pi-image/build.json")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a root-owned test tree with other owners needs root")
def test_l4t_rootfs_copy_keeps_every_owner_of_the_base(sample_image, tmp_path):
    """Real rootfs trees hold files owned by others than root (e.g. /var/mail root:mail 2775)."""
    base = tmp_path / "rootfs"
    shutil.copytree(sample_image("l4t-rootfs"), base, symlinks=True)
    (base / "var" / "mail").mkdir()
    os.chown(base / "var" / "mail", 0, 8)
    os.chmod(base / "var" / "mail", 0o2775)
    output = tmp_path / "node-rootfs"
    succeeded(PiImage(tmp_path / "cache")("build", "--profile", "jetson-l4t", "--base", base, "--output", output,
                                          "--kube-key", KUBE_KEY))

    mail = os.lstat(output / "var" / "mail")
    assert (mail.st_uid, mail.st_gid, mail.st_mode & 0o7777) == (0, 8, 0o2775)
