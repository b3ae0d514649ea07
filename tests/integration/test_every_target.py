"""Every shipped profile on every sample image it may build on: a UK node (en_GB.UTF-8, a gb keyboard, Europe/London,
Wi-Fi in GB with a passphrase) whose settings are read back where each OS reads them, with debugfs, mtools, e2fsck,
fsck.vfat, cloud-init and systemd-analyze, never with pi-image's own readers. A profile that names one target is
refused on every other image, in one line.

What each OS reads is written down here, from the vendors' conventions, not taken from pi-image's target classes:
a bug there must not hide behind its own definition. One test per (profile, image), each building once, so that
xdist spreads the builds and never repeats one; the module's cache (the `cli` fixture) hashes each base once.
"""

from __future__ import annotations

import configparser
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from readback import KUBE_KEY, TEST_SSH_KEY, Reader, filesystems, succeeded, tool

from builder.config.profiles import list_profiles
from builder.samples import SAMPLES
from builder.targets import MACHINE_TARGETS, targets_of

NODE = "pi-uk1"
PSK = "correct horse battery 42"
UK = ("--set", "locale=en_GB.UTF-8", "--set", "keyboard=gb", "--set", "timezone=Europe/London",
      "--set", "wifi={ssid: homelab, country: GB}")  # the passphrase never on the command line: --wifi-psk-file
SSH_KEY = TEST_SSH_KEY.read_text().strip()
UNITS = "/etc/systemd/system"
NETPLAN_WIFI = "/etc/netplan/60-pi-image-wifi.yaml"
NM_WIFI = "/etc/NetworkManager/system-connections/pi-image-wifi.nmconnection"
LOCALE_GEN_UNIT = f"{UNITS}/pi-image-locale-gen.service"


@dataclass(frozen=True)
class Os:
    """What one sample's OS reads at first boot."""

    first_boot: str  # "cloud-init" (a NoCloud seed on the boot partition), "userconf" (userconf.txt), "offline"
    user: str  # the admin login when the profile names none
    netplan_regdom: bool = False  # its netplan takes `regulatory-domain` (0.105+)
    rfkill: bool = False  # it keeps the Wi-Fi radio blocked until a country is set
    locale_list: str = "/etc/locale.gen"  # where its locale-gen reads the locales to build

    @property
    def stack(self) -> str:
        return "netplan" if self.first_boot == "cloud-init" else "networkmanager"


OSES = {
    ("ubuntu-raspi", "20.04"): Os("cloud-init", "ubuntu"),  # focal's netplan is 0.103/0.104
    ("ubuntu-raspi", "22.04"): Os("cloud-init", "ubuntu", netplan_regdom=True),
    ("ubuntu-raspi", "24.04"): Os("cloud-init", "ubuntu", netplan_regdom=True),
    ("kali-raspi", "2024.2"): Os("offline", "kali"),
    ("kali-raspi", "rolling"): Os("offline", "kali"),
    ("raspios", "bookworm"): Os("userconf", "pi", rfkill=True),
    ("raspios", "trixie"): Os("cloud-init", "pi", netplan_regdom=True, rfkill=True),
    ("jetson-sd", "r32.6.1"): Os("offline", "jetson", locale_list="/var/lib/locales/supported.d/pi-image"),
    ("l4t-rootfs", "r32.6.1"): Os("offline", "jetson", locale_list="/var/lib/locales/supported.d/pi-image"),
}
PROFILES = {p.name: p["target"] for p in list_profiles()}  # name -> the target (or group) it builds on, or None
BUILDS = [(name, sample) for name, only in PROFILES.items() for sample in OSES
          if only is None or sample[0] in targets_of(only)]
REFUSALS = [(name, sample) for name, only in PROFILES.items() for sample in OSES
            if only is not None and sample[0] not in targets_of(only)]


def psk_file(directory: Path) -> Path:
    """The UK node's Wi-Fi passphrase, in a file (`--wifi-psk-file`)."""
    path = directory / "wifi-psk.txt"
    path.write_text(PSK + "\n")
    return path


def ident(case: tuple[str, tuple[str, str]]) -> str:
    return f"{case[0]}-on-{'-'.join(case[1])}"


def test_the_matrix_covers_every_sample_and_every_profile():
    assert set(OSES) == set(SAMPLES), "a new sample needs its row in OSES"
    # x86 and Arch nodes are made from a seed ISO or an enroll script (test_seed_iso.py, test_arch_target.py,
    # test_enroll.py), never by editing an image
    assert {name for name, _ in BUILDS} == {name for name, target in PROFILES.items()
                                            if target not in MACHINE_TARGETS}, "every profile builds somewhere"


@dataclass
class Node:
    """One build's output, read back."""

    os: Os
    base: dict[str, Reader]
    output: Path
    fs: dict[str, Reader]
    stdout: str

    @property
    def root(self) -> Reader:
        return self.fs["root"]

    @property
    def boot(self) -> Reader | None:
        return self.fs.get("boot")

    def cmdline(self) -> list[str]:
        if self.boot is not None:
            return self.boot.text("/cmdline.txt").split()
        extlinux = self.root.text("/boot/extlinux/extlinux.conf")
        return next(line.split() for line in extlinux.splitlines() if line.strip().startswith("APPEND"))

    def manifest(self) -> dict:
        return json.loads(self.root.read("/etc/pi-image/build.json"))


@pytest.mark.parametrize("case", BUILDS, ids=ident)
def test_profile_builds_a_uk_node_whose_os_reads_every_setting(case, cli, sample_image, tmp_path):
    profile, sample = case
    output = tmp_path / ("node-rootfs" if sample[0] == "l4t-rootfs" else "node.img")
    run = succeeded(cli("build", "--profile", profile, "--base", sample_image(*sample), "--output", output,
                        "--node", NODE, "--kube-key", KUBE_KEY, *UK, "--wifi-psk-file", psk_file(tmp_path)))
    node = Node(OSES[sample], filesystems(sample_image(*sample)), output, filesystems(output), run.stdout)

    check_time_zone_locale_and_keyboard(node)
    check_wifi_country_and_network(node)
    check_admin_login(node, tmp_path)
    check_the_passphrase_is_in_one_private_file_only(node)
    for name, reader in node.fs.items():
        check = reader.fsck(tmp_path)
        assert check is None or check.returncode == 0, f"{name}: {check.stdout.decode()} {check.stderr.decode()}"


@pytest.mark.parametrize("case", REFUSALS, ids=ident)
def test_profile_for_another_target_is_refused_in_one_line(case, cli, sample_image):
    profile, sample = case
    run = cli("build", "--profile", profile, "--base", sample_image(*sample), "--dry-run", "--kube-key", KUBE_KEY)

    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert PROFILES[profile] in run.stderr and sample[0] in run.stderr and profile in run.stderr


# --- what each OS reads ------------------------------------------------------------------------------------------

def shell_values(text: str) -> dict[str, str]:
    """KEY=value lines of a file sourced by sh (/etc/default/*), unquoted as sh would."""
    found = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.strip().startswith("#"):
            found[key.strip()] = " ".join(shlex.split(value))
    return found


def wants(node: Node, unit: str) -> str | None:
    """Where the multi-user.target.wants link of `unit` points, if there is one."""
    entry = node.root.stat(f"{UNITS}/multi-user.target.wants/{unit}")
    return entry.target if entry is not None else None


def seed(node: Node, name: str) -> dict:
    return yaml.safe_load(node.boot.text(f"/{name}"))


def check_time_zone_locale_and_keyboard(node: Node) -> None:
    """/etc/timezone and /etc/localtime, LANG, the XKB layout; the locale built at first boot by whoever does it."""
    root = node.root
    assert root.text("/etc/timezone") == "Europe/London\n"
    assert root.stat("/etc/localtime").target == "/usr/share/zoneinfo/Europe/London"
    assert shell_values(root.text("/etc/default/locale")) == {"LANG": "en_GB.UTF-8"}
    keyboard = shell_values(root.text("/etc/default/keyboard"))
    assert (keyboard["XKBLAYOUT"], keyboard["XKBMODEL"]) == ("gb", "pc105")
    if node.os.first_boot == "cloud-init":  # the seed says the same, so cloud-init applies it (and builds the locale)
        user_data = seed(node, "user-data")
        assert (user_data["timezone"], user_data["locale"]) == ("Europe/London", "en_GB.UTF-8")
        assert root.stat(LOCALE_GEN_UNIT) is None
        return
    before = (node.base["root"].text(node.os.locale_list) or "").splitlines()
    after = root.text(node.os.locale_list).splitlines()
    assert "en_GB.UTF-8 UTF-8" in after  # enabled: its commented line uncommented, or added
    assert [line for line in after if line != "en_GB.UTF-8 UTF-8"] == \
        [line for line in before if line.lstrip("# ") != "en_GB.UTF-8 UTF-8"]  # the image's other choices kept
    assert wants(node, "pi-image-locale-gen.service") == LOCALE_GEN_UNIT
    unit = configparser.ConfigParser(strict=False)
    unit.read_string(root.text(LOCALE_GEN_UNIT))
    assert unit["Service"]["ExecStart"] == "/usr/sbin/locale-gen"


def check_wifi_country_and_network(node: Node) -> None:
    """The regulatory domain on the kernel command line; the network where the OS's stack reads it (0600, root)."""
    assert node.cmdline().count("cfg80211.ieee80211_regdom=GB") == 1
    if node.os.stack == "netplan":
        entry = node.root.stat(NETPLAN_WIFI)
        assert (entry.mode, entry.uid, entry.gid) == (0o600, 0, 0)
        wlan0 = yaml.safe_load(node.root.text(NETPLAN_WIFI))["network"]["wifis"]["wlan0"]
        assert wlan0["access-points"] == {"homelab": {"password": PSK}}
        assert wlan0.get("regulatory-domain") == ("GB" if node.os.netplan_regdom else None)
        assert "wifis" not in seed(node, "network-config")  # the seed is world-readable on the node
        assert node.root.stat(NM_WIFI) is None
    else:
        entry = node.root.stat(NM_WIFI)
        assert (entry.mode, entry.uid, entry.gid) == (0o600, 0, 0)
        keyfile = configparser.ConfigParser(interpolation=None)
        keyfile.read_string(node.root.text(NM_WIFI))
        assert (keyfile["connection"]["type"], keyfile["wifi"]["ssid"]) == ("wifi", "homelab")
        assert (keyfile["wifi-security"]["key-mgmt"], keyfile["wifi-security"]["psk"]) == ("wpa-psk", PSK)
        assert node.root.stat(NETPLAN_WIFI) is None
    if node.os.rfkill:  # Raspberry Pi OS: the on-board radio's saved rfkill state unblocked, NetworkManager's switch on
        saved = [name for name in node.root.listdir("/var/lib/systemd/rfkill") if name.endswith(":wlan")]
        assert "platform-fe300000.mmcnr:wlan" in saved  # a Pi 4's
        assert {node.root.text(f"/var/lib/systemd/rfkill/{name}") for name in saved} == {"0\n"}
        assert "WirelessEnabled=true" in node.root.text("/var/lib/NetworkManager/NetworkManager.state").splitlines()


def check_admin_login(node: Node, scratch: Path) -> None:
    """The OS's own way of making the admin login, with the SSH key, and sshd on."""
    user, root, boot = node.os.user, node.root, node.boot
    if node.os.first_boot == "cloud-init":
        user_data = scratch / "user-data"
        user_data.write_bytes(boot.read("/user-data"))
        check = tool("cloud-init", "schema", "--config-file", user_data, check=False)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
        config = yaml.safe_load(user_data.read_text())
        assert [(u["name"], u["ssh_authorized_keys"]) for u in config["users"]] == [(user, [SSH_KEY])]
        assert config["hostname"] == NODE and NODE in seed(node, "meta-data")["instance-id"]
        assert boot.read("/userconf.txt") is None
        if user == "pi":  # pi-gen's own cloud-init config sets a gb/pc105 keyboard and the pi user: the seed overrides
            assert config["keyboard"] == {"layout": "gb", "model": "pc105"}
            assert wants(node, "ssh.service") == "/usr/lib/systemd/system/ssh.service"
        else:
            assert "keyboard" not in config
    elif node.os.first_boot == "userconf":
        assert boot.text("/userconf.txt").startswith(f"{user}:")
        assert boot.read("/ssh") is not None and boot.read("/user-data") is None
        assert root.text(f"/etc/ssh/authorized_keys/{user}") == SSH_KEY + "\n"
    else:
        home = next(line.split(":")[5] for line in root.text("/etc/passwd").splitlines()
                    if line.startswith(f"{user}:"))
        keys = root.stat(f"{home}/.ssh/authorized_keys")
        assert root.text(f"{home}/.ssh/authorized_keys") == SSH_KEY + "\n" and keys.mode == 0o600


def check_the_passphrase_is_in_one_private_file_only(node: Node) -> None:
    """The Wi-Fi passphrase: in the stack's 0600 file, nowhere else (no FAT file, no manifest, no hash of it)."""
    holding = []
    for op in node.manifest()["files"]:
        if op["action"] != "write" or op["path"] == "/etc/pi-image/build.json":
            continue
        reader = node.fs[op["fs"]]
        if PSK.encode() in (reader.read(op["path"]) or b""):
            holding.append(op["path"])
            assert op["fs"] == "root" and op["mode"] == "0600" and "sha256" not in op, op
    assert holding == [NETPLAN_WIFI if node.os.stack == "netplan" else NM_WIFI]
    if node.boot is not None:
        assert not [name for name in node.boot.listdir("/") if PSK.encode() in (node.boot.read(f"/{name}") or b"")]
    beside = node.output.with_name(node.output.name + ".json")
    for manifest in (beside.read_text(), node.root.text("/etc/pi-image/build.json")):
        assert PSK not in manifest and json.loads(manifest)["profile"]["values"]["wifi"]["psk"] == "(set)"
    assert PSK not in node.stdout
