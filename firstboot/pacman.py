"""Arch Linux packages at first boot: pacman as an Arch cloud image or a freshly enrolled machine meets it.

The same interface as packages.Apt (missing, install, hold), for node.json's `package_manager: pacman`. On Arch the
agent installs only the container runtime and the kubelet's dependencies (conntrack-tools, socat, ethtool, iptables):
Kubernetes comes from the upstream release (release.py), pinned to the cluster's patch, never from pacman.

What is done about what a first boot meets:

- Another pacman holds /var/lib/pacman/db.lck (an update started by hand, a timer). pacman has no lock timeout of its
  own: a command that fails naming the lock is run again after a pause, for at most LOCK_WAIT_SECONDS. A lock file
  older than this boot was left by a pacman a power cut stopped (a running pacman made it after the boot): it is
  removed, with a log line, as pacman's own message tells a user to do.
- Arch supports no partial upgrade: packages installed from a freshly synced database must come with the system they
  were built against, so installing is `pacman -Syu --needed`. The package of the running kernel is left out of that
  upgrade (--ignore, from /usr/lib/modules/RELEASE/pkgbase): upgrading it would delete the running kernel's modules,
  and the kubelet, kube-proxy and flannel load netfilter modules long after this step.
- An unreachable mirror is a failure to retry later (the agent backs off), with the fix named.

Arch's own cni-plugins package is not used: the release path installs the upstream plugins of the cluster's minor into
/opt/cni/bin, where flannel puts its plugin and the kubelet reads them. Arch packages whatever version is newest and,
besides /opt/cni/bin, the same binaries in /usr/lib/cni (file list of extra/x86_64/cni-plugins 1.9.0-1:
https://archlinux.org/packages/extra/x86_64/cni-plugins/files/); older builds had /usr/lib/cni only. Installing it
later would also collide with the release path's files in /opt/cni/bin ("exists in filesystem"). `hold()` keeps pacman
off the names it is given (IgnorePkg), so a `pacman -Syu` run by hand does not replace them.
"""

import io
import logging
import os
import time

from .errors import SetupFailed
from .localsetup import replace_text
from .packages import line_with, retry_while_locked

log = logging.getLogger("pi-image.agent")

DB_LOCK = "/var/lib/pacman/db.lck"
CONFIG = "/etc/pacman.conf"
# pacman 6 and 7: "error: failed to init transaction (unable to lock database)", "could not lock database: File exists"
_LOCK_MARKERS = ("unable to lock database", "could not lock database")
_UNREACHABLE_MARKERS = ("failed retrieving file", "failed to synchronize all databases", "Could not resolve host",
                        "Resolving timed out", "Failed to connect", "Connection timed out", "Connection refused",
                        "Operation too slow", "Network is unreachable", "failed to retrieve some files")
_NOT_FOUND_MARKER = "target not found"
UNREACHABLE_FIX = ("check the node's network (address, gateway, DNS) and its mirrors (/etc/pacman.d/mirrorlist), or "
                   "set proxy (http://HOST:PORT) in its profile")
INSTALL_TIMEOUT = 3600


class Pacman(object):
    """Installs packages with pacman through the command seam, on the system under `root` (pacman's --root,
    --dbpath, --config and --cachedir point into it when it is not /); every failure is a SetupFailed naming its fix."""

    def __init__(self, commands, root="/", sleep=time.sleep, clock=time.monotonic):
        self.commands = commands
        self.root = root
        self.sleep = sleep
        self.clock = clock

    def path(self, absolute):
        """`absolute` (a path on the node) under this installer's root."""
        return os.path.join(self.root, absolute.lstrip("/"))

    def missing(self, packages):
        """The packages of `packages` nothing installed satisfies: pacman's deptest (-T) honours provides
        (iptables-nft provides iptables) and prints each dependency it cannot satisfy."""
        result = self._pacman(["-T"] + list(packages))
        if result.returncode == 127 and not result.stdout.strip():
            raise SetupFailed("node.json says package_manager: pacman, and this system has no pacman ({}): build "
                              "the node for its own OS".format(result.summary()), retry=False)
        if result.returncode not in (0, 127):
            raise SetupFailed("pacman -T failed: {}".format(result.summary()), retry=True)
        unsatisfied = set(result.stdout.split())
        return [package for package in packages if package in unsatisfied]

    def install(self, packages, local_options=None):
        """Sync the databases and install `packages` with the upgrade Arch requires (see the module docstring); with
        `local_options` (the offline bundle's: nothing to download), `packages` are package files for `pacman -U`."""
        names = [os.path.basename(package) for package in packages]
        if local_options is None:
            argv = ["-Syu", "--needed", "--noconfirm"] + self._kernel_kept() + list(packages)
        else:
            argv = ["-U", "--needed", "--noconfirm"] + list(local_options) + list(packages)
        log.info("installing %s with pacman", " ".join(names))
        self._checked(self.run(argv, timeout=INSTALL_TIMEOUT))

    def hold(self, names):
        """Make sure IgnorePkg in [options] of pacman.conf lists `names`: added to the first IgnorePkg line, else
        a line of its own after the commented example (or the section's header). Written atomically, its mode
        kept; nothing is written when every name is listed already."""
        config = self.path(CONFIG)
        try:
            with io.open(config, encoding="utf-8", errors="surrogateescape") as handle:
                text = handle.read()
        except OSError as err:
            raise SetupFailed("cannot read {} to hold {}: {}".format(CONFIG, " ".join(names), err.strerror),
                              retry=False) from None
        edited = with_ignored(text, names)
        if edited != text:
            replace_text(config, edited)
            log.info("pacman holds %s (IgnorePkg in %s)", " ".join(names), CONFIG)

    def run(self, argv, timeout=900):
        """Run pacman with `argv`; while it fails because another pacman holds the database lock, wait and retry."""
        def attempt():
            self._remove_stale_lock()
            return self._pacman(argv, timeout)

        return retry_while_locked(attempt, _LOCK_MARKERS, self.sleep, self.clock, "pacman",
                                  "the pacman database lock", "pacman could not lock its database ({})".format(DB_LOCK))

    def _pacman(self, argv, timeout=None):
        elsewhere = [] if os.path.abspath(self.root) == "/" else [
            "--root", self.root, "--dbpath", self.path("/var/lib/pacman"), "--config", self.path(CONFIG),
            "--cachedir", self.path("/var/cache/pacman/pkg")]
        return self.commands.run(["pacman"] + elsewhere + list(argv), timeout=timeout)

    def _kernel_kept(self):
        """--ignore for the package of the running kernel (its modules' pkgbase file), or nothing."""
        try:
            with open(self.path("/usr/lib/modules/{}/pkgbase".format(os.uname().release))) as handle:
                package = handle.read().strip()
        except OSError:
            return []
        return ["--ignore", package] if package else []

    def _remove_stale_lock(self):
        """Remove a database lock older than this boot (a pacman a power cut stopped left it)."""
        lock = self.path(DB_LOCK)
        try:
            made = os.stat(lock).st_mtime
        except OSError:
            return
        booted = _boot_time()
        if booted is not None and made < booted:
            log.info("removing %s: it is older than this boot, left by a pacman that a power cut stopped", DB_LOCK)
            os.unlink(lock)

    def _checked(self, result):
        """Raise SetupFailed naming the cause: an unreachable mirror, a package no repository has, or pacman's own
        error."""
        output = result.stdout + result.stderr
        unreachable = line_with(output, _UNREACHABLE_MARKERS)
        if not result.ok and unreachable:
            raise SetupFailed("the package mirrors cannot be reached ({}): {}".format(unreachable, UNREACHABLE_FIX),
                              retry=True)
        not_found = line_with(output, (_NOT_FOUND_MARKER,))
        if not result.ok and not_found:
            raise SetupFailed("pacman: {}: no enabled repository in {} has it (enable [extra])".format(
                not_found, CONFIG), retry=False)
        if not result.ok:
            raise SetupFailed("pacman {} failed: {}".format(result.argv[1], result.summary()), retry=True)


def with_ignored(text, names):
    """pacman.conf(5) text whose [options] IgnorePkg lists every one of `names` (see Pacman.hold)."""
    lines = text.splitlines(True)
    start, end = _options_section(lines)
    if start is None:
        return "[options]\nIgnorePkg = {}\n".format(" ".join(names)) + text
    listed, first, example = [], None, None
    for index in range(start + 1, end):
        key, _, value = lines[index].partition("=")
        if key.strip() == "IgnorePkg":
            listed += value.split()
            first = index if first is None else first
        elif key.strip().lstrip("#").strip() == "IgnorePkg" and example is None:
            example = index
    added = [name for name in names if name not in listed]
    if not added:
        return text
    if first is not None:
        line = lines[first]
        body = line.rstrip("\r\n")
        space = "" if body.endswith((" ", "\t")) else " "
        lines[first] = body + space + " ".join(added) + line[len(body):]
    else:
        lines.insert((example if example is not None else start) + 1, "IgnorePkg = {}\n".format(" ".join(added)))
    return "".join(lines)


def _options_section(lines):
    """(index of the [options] header, index of the next section's header or the end), or (None, None)."""
    start = None
    for index, line in enumerate(lines):
        header = line.strip()
        if header.startswith("[") and header.endswith("]"):
            if start is not None:
                return start, index
            if header == "[options]":
                start = index
    return (start, len(lines)) if start is not None else (None, None)


def _boot_time():
    """When this machine booted (seconds since the epoch, /proc/stat's btime), or None."""
    try:
        with open("/proc/stat") as handle:
            for line in handle:
                if line.startswith("btime "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None
