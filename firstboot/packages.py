"""Debian packages at first boot: apt and dpkg as a freshly flashed board meets them.

Three things a workstation rarely shows, and what is done about each:

- The package locks are busy for minutes (on Ubuntu's first boot cloud-init and unattended-upgrades hold them).
  apt-get waits for the dpkg lock itself with DPkg::Lock::Timeout (apt >= 1.9.11); dpkg, the lists lock and older
  apt (Ubuntu 18.04 has 1.6) fail at once. A command that fails naming a lock is run again after a pause, for at most
  LOCK_WAIT_SECONDS, with a log line each time.
- A power cut in the middle of an install leaves dpkg half-configured: `dpkg --configure -a` runs before apt.
- The clock starts in the past (a Pi has no RTC), so apt refuses a Release file as "not valid yet" until NTP has
  set the time: that is a failure to retry later (the agent backs off), never for good.

Configuration files already on disk (pi-image's /etc/containerd/config.toml, written by the build before the
package exists) are kept: --force-confold, never a prompt. DEBIAN_FRONTEND=noninteractive comes from the agent.

The offline bundle's .debs are a closed set the build resolved against this image: one `dpkg --install` of those not
installed at their version yet, no resolver (apt-get spends seconds of a Pi's first boot loading its cache for
nothing there); when dpkg alone cannot (a Pre-Depends between two of them, an image changed since its build),
apt-get installs the same files. Packages the build host's dpkg already unpacked into the image (bundle.json's
"unpacked") are only configured, by the `dpkg --configure -a` that comes first. While packages install or configure,
man-db's trigger is paused (its cached debconf answer /var/lib/man-db/auto-update moved aside and put back after, also
by the next run if this one was killed): rebuilding the manual's index costs a Pi tens of seconds on every install,
and the daily man-db.timer does it anyway.
"""

import contextlib
import logging
import os
import time

from .errors import SetupFailed

log = logging.getLogger("pi-image.agent")

LOCK_WAIT_SECONDS = 1800
LOCK_PAUSE_SECONDS = 10
APT_LOCK_TIMEOUT = 60  # apt-get's own wait for the dpkg lock, per call (apt >= 1.9.11; older apt ignores it)
KEEP_OUR_CONFFILES = "--force-confold"
# apt: "Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 812 (unattended-upgr)";
# dpkg: "dpkg frontend lock was locked by another process with pid 812" (older: "... is locked by another process")
_LOCK_MARKERS = ("Could not get lock", "Unable to acquire the dpkg frontend lock", "locked by another process",
                 "Unable to lock")
_CLOCK_MARKER = "is not valid yet"
_UNREACHABLE_MARKERS = ("Failed to fetch", "Temporary failure resolving", "Could not resolve", "Could not connect",
                        "Unable to connect", "Network is unreachable", "Connection timed out")
MAN_DB_AUTO_UPDATE = "/var/lib/man-db/auto-update"  # while it exists, man-db's trigger runs mandb (man-db >= 2.7)
MAN_DB_PAUSED = MAN_DB_AUTO_UPDATE + ".pi-image-paused"
UNREACHABLE_FIX = ("check the node's network (address, gateway, DNS), or set kube_repo_url (a reachable mirror of "
                   "the Kubernetes repository) or proxy (http://HOST:PORT for apt and the runtime) in its profile")


class Apt(object):
    """Installs packages with apt-get through the command seam; every failure is a SetupFailed naming its fix."""

    def __init__(self, commands, sleep=time.sleep, clock=time.monotonic, root="/"):
        self.commands = commands
        self.sleep = sleep
        self.clock = clock
        self.root = root

    def missing(self, packages):
        """The packages of `packages` that dpkg does not have fully installed (a half-configured one is missing).
        dpkg's abbreviated status is want, state, error: "ii" or "hi" (held) when installed."""
        result = self.commands.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n"] + list(packages))
        installed = set()
        for line in result.stdout.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[1][1:] == "i":
                installed.add(fields[0].split(":")[0])
        return [package for package in packages if package not in installed]

    def install(self, packages, local_options=None):
        """Finish what a power cut interrupted, refresh the lists, install `packages` (the image's pins choose).
        With `local_options` (the offline bundle's: no source, no download), `packages` are .deb files and there is
        nothing to refresh."""
        self._checked(self.run(["dpkg", KEEP_OUR_CONFFILES, "--configure", "-a"]))
        if local_options is None:
            self._update()
        with self._man_db_paused():
            self._apt_install(packages, local_options)

    def install_files(self, debs, local_options):
        """Finish what a power cut interrupted and configure what the build host unpacked (`dpkg --configure -a`),
        then install the offline bundle's `debs` ((package, version, checked .deb path) each) that are not installed
        at their version yet with one `dpkg --install`; if dpkg alone cannot, apt-get installs them with
        `local_options` (no source, no download)."""
        started = self.clock()
        with self._man_db_paused():
            self._checked(self.run(["dpkg", KEEP_OUR_CONFFILES, "--configure", "-a"], timeout=3600))
            wanted = self._not_installed(debs)
            if wanted:
                log.info("installing %s with dpkg", " ".join(os.path.basename(path) for path in wanted))
                result = self.run(["dpkg", KEEP_OUR_CONFFILES, "--install"] + wanted, timeout=3600)
                if not result.ok:
                    log.info("dpkg could not install the bundle's packages by itself (%s); apt-get orders them",
                             result.summary(300))
                    self._apt_install(wanted, local_options)
        log.info("the bundle's packages are installed (%d from .debs) in %.1f s", len(wanted),
                 self.clock() - started)

    def _not_installed(self, debs):
        """The paths of `debs` whose package is not installed ("ii"/"hi") at exactly that version."""
        result = self.commands.run(["dpkg-query", "-W", "-f=${Package} ${Version} ${db:Status-Abbrev}\n"]
                                   + [package for package, _, _ in debs if package])
        installed = set()
        for line in result.stdout.splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[2][1:] == "i":
                installed.add((fields[0].split(":")[0], fields[1]))
        return [path for package, version, path in debs if (package, version) not in installed]

    def _apt_install(self, packages, local_options):
        names = [os.path.basename(package) for package in packages]
        log.info("installing %s (apt-get waits up to %d s for the dpkg lock)", " ".join(names), APT_LOCK_TIMEOUT)
        result = self.run(["apt-get", "install", "-y", "-o", "Dpkg::Options::=" + KEEP_OUR_CONFFILES,
                           "-o", "DPkg::Lock::Timeout={}".format(APT_LOCK_TIMEOUT)] + list(local_options or [])
                          + list(packages), timeout=3600)
        if result.ok and "Waiting for cache lock" in result.stdout + result.stderr:
            log.info("apt-get waited for the dpkg lock, then installed %s", " ".join(names))
        self._checked(result)

    @contextlib.contextmanager
    def _man_db_paused(self):
        """man-db's trigger does nothing while this runs (see the module's docstring)."""
        flag = os.path.join(self.root, MAN_DB_AUTO_UPDATE.lstrip("/"))
        try:
            os.rename(flag, os.path.join(self.root, MAN_DB_PAUSED.lstrip("/")))
        except FileNotFoundError:  # no man-db, or its auto-update is off: nothing to pause
            yield
            return
        try:
            yield
        finally:
            self.resume_man_db()

    def resume_man_db(self):
        """Put man-db's auto-update flag back where a run paused it (one that was killed leaves it aside)."""
        paused = os.path.join(self.root, MAN_DB_PAUSED.lstrip("/"))
        try:
            os.rename(paused, os.path.join(self.root, MAN_DB_AUTO_UPDATE.lstrip("/")))
        except FileNotFoundError:
            pass

    def hold(self, packages):
        """Keep `packages` at their installed version (apt-mark hold), so an upgrade never moves the node off the
        cluster's minor."""
        if self.commands.available("apt-mark"):
            self.commands.run(["apt-mark", "hold"] + list(packages))

    def unhold(self, packages):
        """Let apt-get move `packages` again (apt-mark unhold): a cluster upgrade, which holds them afterwards."""
        if self.commands.available("apt-mark"):
            self.commands.run(["apt-mark", "unhold"] + list(packages))

    def run(self, argv, timeout=900):
        """Run an apt or dpkg command; while it fails because another process holds a package lock, wait and retry."""
        return retry_while_locked(lambda: self.commands.run(argv, timeout=timeout), _LOCK_MARKERS, self.sleep,
                                  self.clock, argv[0], "the package lock",
                                  "{} could not get the package lock".format(" ".join(argv[:2])))

    def _update(self):
        self._checked(self.run(["apt-get", "update"]))

    def _checked(self, result):
        """Raise SetupFailed naming the cause: the clock, an unreachable archive (apt-get update exits 0 when only
        some index files failed, so its warnings count), or the command's own error."""
        output = result.stdout + result.stderr
        if _CLOCK_MARKER in output:
            log.info("this machine's clock says %s: apt refuses the archive's Release file until NTP sets the time",
                     time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
            raise SetupFailed("apt-get update: the package archive's Release file is not valid yet for this "
                              "machine's clock (no RTC, no time sync yet); waiting for NTP", retry=True)
        unreachable = line_with(output, _UNREACHABLE_MARKERS)
        if unreachable:
            raise SetupFailed("the package archive cannot be reached ({}): {}".format(unreachable, UNREACHABLE_FIX),
                              retry=True)
        if not result.ok:
            raise SetupFailed("{} failed: {}".format(" ".join(result.argv[:2]), result.summary()), retry=True)


def retry_while_locked(attempt, markers, sleep, clock, tool, lock, failure):
    """`attempt()` (a CommandResult) again while it fails because another process holds `lock` (a line of its output
    holds one of `markers`), a log line each time, for at most LOCK_WAIT_SECONDS; then SetupFailed("`failure` in N
    min: that line"). The package managers' one way to wait for each other (apt here, pacman in pacman.py)."""
    deadline = clock() + LOCK_WAIT_SECONDS
    waited = False
    while True:
        result = attempt()
        busy = None if result.ok else line_with(result.stdout + result.stderr, markers)
        if busy is None:
            if waited:
                log.info("%s is free; %s went on", lock, tool)
            return result
        if clock() > deadline:
            raise SetupFailed("{} in {} min: {}".format(failure, LOCK_WAIT_SECONDS // 60, busy), retry=True)
        log.info("waiting for %s (%s); %s again in %d s", lock, busy, tool, LOCK_PAUSE_SECONDS)
        waited = True
        sleep(LOCK_PAUSE_SECONDS)


def line_with(text, markers):
    """The first line of `text` containing one of `markers`, stripped, or None."""
    for line in text.splitlines():
        if any(marker in line for marker in markers):
            return line.strip()
    return None
