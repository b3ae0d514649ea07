"""Step 1 of first boot: make this machine able to run a kubelet. Every step is safe to repeat after a reboot.

Kernel modules and sysctls come from the files the build wrote (overlays/k8s-kernel: the one list of them); the
sysctls are written to /proc/sys directly, since a `sysctl` binary (procps) may be absent. The distro's packages are
installed through one seam, apt (packages.py) or pacman (pacman.py) as node.json's package_manager says, in one
transaction when any is missing: the container runtime, and kubelet/kubeadm/kubectl on the packages path (the image's
apt pin picks their minor). On the release path (kube_install: release) the distro gives the runtime and the
kubelet's dependencies, and release.py installs the cluster's exact kubeadm, kubelet, kubectl, crictl and CNI
plugins. Then the runtime is started and checked (runtime.py). A card built with --offline carries all of it in its
bundle (bundle.py): the package manager installs the bundle's files with no source and no download, and its images
are imported into containerd.

Holding: on the packages path the kube packages are held (apt-mark hold; pacman: IgnorePkg), so an upgrade never
moves the node off the cluster's minor. On the release path pacman holds them too, so that a `pacman -S kubelet`
from Arch's own repository never replaces the release's binaries; apt has no kube packages to hold there.
"""

import errno
import io
import logging
import os
import time

from .bundle import Bundle
from .errors import SetupFailed
from .nodeconfig import KUBE_BINARIES
from .packages import Apt
from .runtime import RUNTIMES, RuntimeCheck

log = logging.getLogger("pi-image.agent")

MODULES_CONF = "/etc/modules-load.d/k8s.conf"
SYSCTL_CONF = "/etc/sysctl.d/k8s.conf"
KUBE_PACKAGES = KUBE_BINARIES  # each package is named after its binary
INSTALLERS = {"apt": "apt-get", "pacman": "pacman"}  # package_manager -> the tool that must exist to install
SWAP_DISABLED = "# disabled by pi-image (Kubernetes needs swap off): "
RESOLVED_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"
# Written by pi-image when it built this tree as a normal user (builder/image/tree.py): "uid<TAB>gid<TAB>/path" lines.
OWNER_MAP = "/etc/pi-image/owners.tsv"


class LocalSetup(object):
    """Modules, sysctls, swap, cgroup check, the runtime and Kubernetes, for the system under `root`; the keyword
    arguments are node.json's fields of the same names (nodeconfig.NodeConfig)."""

    def __init__(self, root, commands, runtime="containerd", runtime_packages=(), package_manager="apt",
                 kube_install="packages", release=None, kubernetes_release=None, sleep=time.sleep):
        self.root = root
        self.commands = commands
        self.runtime = RuntimeCheck(RUNTIMES[runtime], commands, root, sleep)
        self.runtime_packages = list(runtime_packages)
        self.package_manager = package_manager
        self.kube_install = kube_install
        self.release = release
        self.kubernetes_release = kubernetes_release
        if package_manager == "pacman":
            from .pacman import Pacman  # Arch only

            self.packages = Pacman(commands, root=root, sleep=sleep)
        else:
            self.packages = Apt(commands, sleep, root=root)
        self._kubeadm_version = None  # asked once, again after an install

    def path(self, absolute):
        return os.path.join(self.root, absolute.lstrip("/"))

    def run(self):
        """Apply every step; returns warnings (already logged), raises SetupFailed when a step cannot succeed."""
        warnings = []
        for step in (self.apply_owner_map, self.load_modules, self.apply_sysctls, self.turn_swap_off,
                     self.check_memory_cgroup, self.install_packages):
            warning = step()
            if warning:
                log.warning("%s", warning)
                warnings.append(warning)
        return warnings

    def apply_owner_map(self):
        """Give the files listed in owners.tsv their owners (the build could not chown), then rename the map to
        owners.tsv.applied so this happens once. Paths are taken inside the root only: absolute, no '..', no symlink
        on the way (a listed symlink itself is lchown'ed); missing paths are skipped."""
        map_path = self.path(OWNER_MAP)
        try:
            with open(map_path) as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return None
        refused, failed, applied = [], [], 0
        for number, line in enumerate(lines, 1):
            entry = _owner_entry(line)
            if entry is None:
                if line.strip():
                    refused.append("line {} (not uid<TAB>gid<TAB>/absolute/path without '..')".format(number))
                continue
            uid, gid, path = entry
            try:
                if _lchown_inside(self.root, path, uid, gid):
                    applied += 1
            except _OutsideTree:
                refused.append("line {} (a symlink or a file on the way)".format(number))
            except OSError as err:
                failed.append("{}: {}".format(path, err.strerror or err))
        if failed:  # keep the map: the next attempt (or boot) tries again
            return "could not set the owners of {} path(s) from {}: {}".format(len(failed), OWNER_MAP,
                                                                                "; ".join(failed[:5]))
        os.replace(map_path, map_path + ".applied")
        log.info("set the owners of %d path(s) from %s", applied, OWNER_MAP)
        if refused:
            return "{}: ignored {}".format(OWNER_MAP, "; ".join(refused[:10]))

    def load_modules(self):
        names = self._settings(MODULES_CONF)
        if names is None:
            return "{} is missing: kubeadm's preflight will fail without overlay and br_netfilter".format(MODULES_CONF)
        failed = [name for name in names if not self.commands.run(["modprobe", name]).ok]
        if failed:
            return "could not load kernel module(s) {}: kubeadm's preflight will fail".format(", ".join(failed))

    def apply_sysctls(self):
        """Each `key = value` of the build's sysctl file, written to /proc/sys/<key with dots as slashes>."""
        lines = self._settings(SYSCTL_CONF)
        if lines is None:
            return "{} is missing: the Kubernetes sysctls are not set".format(SYSCTL_CONF)
        failed = []
        for line in lines:
            key, _, value = (part.strip() for part in line.partition("="))
            try:
                with open(self.path("/proc/sys/" + key.replace(".", "/")), "w") as handle:
                    handle.write(value + "\n")
            except OSError as err:
                failed.append("{} ({})".format(key, err.strerror or err))
        if failed:
            return "could not set sysctl(s) {}".format(", ".join(failed))

    def _settings(self, absolute):
        """The non-comment lines of a modules-load.d / sysctl.d file, or None if it does not exist."""
        try:
            with open(self.path(absolute)) as handle:
                lines = [line.strip() for line in handle]
        except FileNotFoundError:
            return None
        return [line for line in lines if line and not line.startswith(("#", ";"))]

    def turn_swap_off(self):
        """Swap off now and for good: fstab swap lines (an installed x86 Ubuntu's /swap.img) commented out."""
        self._disable_fstab_swap()
        self.commands.run(["swapoff", "-a"])
        try:
            with open(self.path("/proc/swaps")) as handle:
                active = [line.split()[0] for line in handle.read().splitlines()[1:] if line.strip()]
        except OSError:
            return None
        if active:
            return "swap is still on ({}); the kubelet refuses to start with swap".format(", ".join(active))

    def _disable_fstab_swap(self):
        """Comment out fstab's swap lines. Read and written as UTF-8 whatever the locale (Python 3.6 on a system with
        no locale yet reads ASCII), bytes that are not UTF-8 passed through as they are."""
        fstab = self.path("/etc/fstab")
        try:
            with io.open(fstab, encoding="utf-8", errors="surrogateescape") as handle:
                text = handle.read()
        except OSError:
            return
        edited = without_fstab_swap(text)
        if edited != text:
            replace_text(fstab, edited)
            log.info("swap entries in /etc/fstab commented out (the kubelet refuses swap)")

    def check_memory_cgroup(self):
        """Pi kernels ship with the memory controller off; the build's cmdline flags must have taken effect."""
        enabled = _memory_controller_enabled(self.path("/sys/fs/cgroup/cgroup.controllers"), self.path("/proc/cgroups"))
        if enabled is None:
            return "cannot tell whether the memory cgroup controller is enabled"
        if not enabled:
            raise SetupFailed(
                "the memory cgroup controller is not enabled: the kernel command line flags "
                "cgroup_enable=memory cgroup_memory=1 did not take effect (check that cmdline.txt on the boot "
                "partition is one line containing them, or extlinux.conf's APPEND on Jetson, or on x86 "
                "GRUB_CMDLINE_LINUX in /etc/default/grub followed by update-grub, then reboot)", retry=False)

    def install_packages(self):
        """Install what is missing of the distro packages (the runtime; kubelet/kubeadm/kubectl on the packages
        path), then on the release path the release's binaries (release.py); (re)start the runtime if it is not
        ready, import the bundle's images, hold the kube packages, enable the kubelet."""
        bundle = Bundle(self.root)
        release = self.kube_install == "release"
        if isinstance(self.packages, Apt):
            self.packages.resume_man_db()  # a run killed while installing left man-db's trigger paused
        missing = self.packages.missing(self.runtime_packages + ([] if release else list(KUBE_PACKAGES)))
        if missing:
            installer = INSTALLERS[self.package_manager]
            if not self.commands.available(installer):
                raise SetupFailed("{} missing and there is no {} to install them".format(", ".join(missing),
                                                                                         installer), retry=False)
            if bundle.present:
                log.info("installing %s from the card's bundle (no network)", ", ".join(missing))
                if isinstance(self.packages, Apt):
                    self.packages.install_files(bundle.debs(), bundle.apt_options())
                else:
                    self.packages.install(bundle.package_files(), [])
            else:
                self.packages.install(missing)
        installed = bool(missing)
        if release:
            from .release import ReleaseInstall  # the release path only: tarfile, urllib

            installed = ReleaseInstall(self.root, self.release, self.kubernetes_release, bundle).run() or installed
        if installed:
            self._kubeadm_version = None  # another kubeadm may be in place now
        self.runtime.start(installed=any(package in missing for package in self.runtime_packages))
        if bundle.present:
            bundle.import_images(self.commands, self.runtime.socket_path)
        if not release or self.package_manager == "pacman":
            self.packages.hold(KUBE_PACKAGES)
        # the link only: the unit came with the card or with a package whose install reloaded systemd, and kubeadm
        # reloads systemd before it (re)starts the kubelet (a daemon-reload costs a Pi seconds)
        self.commands.run(["systemctl", "enable", "--no-reload", "kubelet"])

    def kubelet_resolv_conf(self):
        """The resolv.conf the kubelet must read instead of kubeadm's choice, or None to keep that choice.

        kubeadm points the kubelet at systemd-resolved's file wherever resolved runs on the control plane. A node
        without systemd-resolved (Kali may lack it: a separate package since Debian 12) would then give its pods
        a resolv.conf that does not exist; it gets /etc/resolv.conf, which its network manager keeps, instead.
        (Installing resolved at first boot would take /etc/resolv.conf from that network manager mid-setup.)"""
        if os.path.exists(self.path(RESOLVED_RESOLV_CONF)):
            return None
        return "/etc/resolv.conf"

    def kubeadm_version(self):
        """The local kubeadm's version ('v1.31.4'), or '' if it cannot say; asked once after each install."""
        if self._kubeadm_version is None:
            result = self.commands.run(["kubeadm", "version", "-o", "short"])
            self._kubeadm_version = result.stdout.strip() if result.ok else ""
        return self._kubeadm_version

    def kubelet_version(self):
        """The local kubelet's version ('v1.31.4' of "Kubernetes v1.31.4"), or '' if it cannot say."""
        result = self.commands.run(["kubelet", "--version"])
        words = result.stdout.split() if result.ok else []
        return words[-1] if words else ""


def replace_text(path, text):
    """Write `text` to the existing file `path` atomically (temporary file, fsync, rename), keeping its mode; as UTF-8
    whatever the locale, bytes that were not UTF-8 (surrogate escapes) written back as they were."""
    temporary = path + ".pi-image.tmp"
    with io.open(temporary, "w", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temporary, os.stat(path).st_mode & 0o7777)
    os.replace(temporary, path)


class _OutsideTree(Exception):
    """A listed path goes through a symlink (which could lead out of the root) or through a non-directory."""


def _owner_entry(line):
    """(uid, gid, path) from 'uid<TAB>gid<TAB>/absolute/path', or None for anything else (or a '..' in the path)."""
    fields = line.split("\t", 2)
    if len(fields) != 3 or not fields[2].startswith("/") or ".." in fields[2].split("/"):
        return None
    try:
        uid, gid = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return (uid, gid, fields[2]) if uid >= 0 and gid >= 0 else None


def _lchown_inside(root, path, uid, gid):
    """lchown root + path, following no symlink on the way (the last component itself is not followed either);
    False if the path does not exist."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
            except FileNotFoundError:
                return False
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _OutsideTree(path) from None
                raise
            os.close(directory)
            directory = inner
        try:
            if parts:
                os.chown(parts[-1], uid, gid, dir_fd=directory, follow_symlinks=False)
            else:
                os.chown(directory, uid, gid)  # "/" itself: the root of the tree
        except FileNotFoundError:
            return False
        return True
    finally:
        os.close(directory)


def without_fstab_swap(text):
    """fstab(5) text with every swap line commented out (the builder does the same to an image's fstab)."""
    lines = [SWAP_DISABLED + line if is_fstab_swap(line) else line for line in text.splitlines()]
    return "\n".join(lines) + ("\n" if text.endswith("\n") or lines else "")


def is_fstab_swap(line):
    """True for an fstab(5) line that turns swap on."""
    fields = line.split()
    return len(fields) >= 3 and not fields[0].startswith("#") and fields[2] == "swap"


def _memory_controller_enabled(v2_controllers, v1_table):
    try:
        with open(v2_controllers) as handle:
            return "memory" in handle.read().split()
    except OSError:
        pass
    try:
        with open(v1_table) as handle:
            for line in handle:
                fields = line.split()
                if fields and fields[0] == "memory":
                    return len(fields) >= 4 and fields[3] == "1"
            return False
    except OSError:
        return None


def os_release(path):
    """The KEY=value pairs of an os-release(5) file (quotes stripped); empty when it cannot be read."""
    values = {}
    try:
        with open(path) as handle:
            for line in handle:
                key, sep, value = line.strip().partition("=")
                if sep:
                    values[key] = value.strip().strip("\"'")
    except OSError:
        pass
    return values


def os_pretty_name(root):
    """PRETTY_NAME from the system's os-release, for the join request."""
    return os_release(os.path.join(root, "etc/os-release")).get("PRETTY_NAME", "unknown")
