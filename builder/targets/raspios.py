"""Raspberry Pi OS: FAT `bootfs` at /boot/firmware + ext4 `rootfs`, in two generations that read different files.

- bookworm (and the first trixie image): the `userconf` service makes the user from userconf.txt on bootfs, an
  empty `ssh` file there turns sshd on, NetworkManager reads its keyfiles.
- trixie and later, customized through cloud-init as Raspberry Pi Imager 2 does (its "cloudinit-rpi" format):
  pi-gen installs cloud-init with a NoCloud config that reads user-data, meta-data and network-config from
  /boot/firmware (99_raspberry-pi.cfg); netplan renders the network for NetworkManager.

Which one an image is comes from its own files (cloud-init and that config in the rootfs), not from its codename:
the first trixie image still used the bookworm conventions. Both keep the on-board Wi-Fi blocked (rfkill) until a
country is set, as Imager's customization undoes.
"""

from __future__ import annotations

from typing import ClassVar

import yaml

from ..image import Filesystem
from .base import Probe, Target

CLOUD_CFG_DIR = "/etc/cloud/cloud.cfg.d"
BOOT_SEED = "file:///boot/firmware"
# systemd-rfkill's saved state of the on-board Wi-Fi (its device path): Pi 3 and Zero 2 W, Pi 4/400/CM4, Pi 5.
WIFI_RFKILL = tuple(f"/var/lib/systemd/rfkill/platform-{device}:wlan"
                    for device in ("3f300000.mmcnr", "fe300000.mmcnr", "1001100000.mmc"))
# The groups Raspberry Pi Imager gives the first user.
IMAGER_GROUPS = ("users", "adm", "dialout", "audio", "netdev", "video", "plugdev", "cdrom", "games", "input",
                 "gpio", "spi", "i2c", "render", "sudo")


class RaspiOS(Target):
    name = "raspios"
    description = ("Raspberry Pi OS bookworm, or trixie without cloud-init (bootfs at /boot/firmware; userconf.txt, "
                   "NetworkManager)")
    cmdline_kind = "cmdline.txt"
    network_stack = "networkmanager"
    first_boot = "userconf"
    default_user = "pi"  # pi-gen's first user, renamed by userconf.txt (or made by cloud-init)
    os_overlays: ClassVar[tuple[str, ...]] = ("networkmanager-wifi",)  # (the cloud-init generation has others)
    swap_services = ("dphys-swapfile.service",)
    wifi_rfkill_states = WIFI_RFKILL
    default_boot_mount = "/boot/firmware"

    @classmethod
    def matches(cls, probe: Probe) -> bool:
        debian_like = probe.os.id in ("debian", "raspbian") or "debian" in probe.os.id_like
        return debian_like and probe.boot is not None and probe.facts.get("rpi_issue", False)


class RaspiOSCloudInit(RaspiOS):
    description = "Raspberry Pi OS trixie+ (bootfs at /boot/firmware; cloud-init seed, netplan for NetworkManager)"
    network_stack = "netplan"
    first_boot = "cloud-init"
    os_overlays = ("cloud-init-seed", "netplan-wifi")
    admin_groups = IMAGER_GROUPS
    seed_sets_keyboard = True  # pi-gen's 99_default.cfg sets one (gb unless the image's builder chose another)
    enabled_units = ("ssh.service",)  # no `ssh` file convention to rely on: sshd is enabled in the image

    @classmethod
    def matches(cls, probe: Probe) -> bool:
        return super().matches(probe) and probe.facts.get("cloud_init_boot_seed", False)

    @property
    def netplan_regulatory_domain(self) -> bool:
        """trixie's netplan is 1.1."""
        return True


def cloud_init_reads_boot_seed(root: Filesystem) -> bool:
    """True if cloud-init is installed and configured (as pi-gen's 99_raspberry-pi.cfg does) to take its NoCloud
    seed from the boot partition."""
    if not root.exists("/usr/bin/cloud-init") or root.stat(CLOUD_CFG_DIR) is None:
        return False
    for name in root.listdir(CLOUD_CFG_DIR):
        try:
            config = yaml.safe_load(root.read_text(f"{CLOUD_CFG_DIR}/{name}") or "")
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        if not isinstance(config, dict) or "NoCloud" not in (config.get("datasource_list") or []):
            continue
        nocloud = (config.get("datasource") or {}).get("NoCloud") or {}
        if str(nocloud.get("seedfrom", "")).rstrip("/") == BOOT_SEED:
            return True
    return False
