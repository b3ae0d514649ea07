"""A control plane's upgrade to the next Kubernetes minor, in place: `python3 -m firstboot.upgrade [--root /]`.

pi-image-upgrade.service runs it when the token endpoint recorded an upgrade (endpoint/upgrades.py decides, writes
/var/lib/pi-image/upgrade.json and starts the unit); the unit is enabled too, so a power cut in the middle resumes at
the next boot. A record that is done or failed makes the run a no-op. kubeadm's procedure, one phase at a time, each
recorded when done (a run skips what is done; the phase under way is done again):

    repository  the apt source's deb line rendered from node.json's `kube_repo` with the new minor (else the running
                minor "v1.31" replaced by "v1.32" in the line there), the pin file's `Pin: version 1.32.*`; the
                files keep the shape the build gave them (the kube-repo overlay)
    kubeadm     unhold, `apt-get update`, install, hold kubeadm; its `kubeadm version -o short` is the release
    plan        `kubeadm upgrade plan RELEASE` (mode apply only)
    apply       `kubeadm upgrade apply -y RELEASE` (mode apply) or `kubeadm upgrade node` (mode node)
    drain       `kubectl drain NODE --ignore-daemonsets --delete-emptydir-data --timeout=300s`
    kubelet     unhold, install, hold kubelet and kubectl; `systemctl daemon-reload`, `systemctl restart kubelet`
    uncordon    `kubectl uncordon NODE`
    done

A failure records state "failed", the phase, one line and its fix, and ends the run (exit 1): kubeadm's own apply
rolls back, so the previous version keeps running; a node drained is uncordoned first (and the drain is done again
when the upgrade is asked again). The record and the log (/var/lib/pi-image/upgrade.log) never hold a secret: every
command's output goes through protocol.redact, and the record keeps versions, times and one-line messages only.
"""

import argparse
import logging
import os
import re
import sys
import time

from . import protocol
from .commands import CommandRunner
from .endpoint.kube import ClusterAdmin
from .endpoint.upgrades import load_record, minor_of, save_record
from .errors import SetupFailed
from .localsetup import replace_text
from .logsetup import log_to
from .nodeconfig import UPGRADE_RECORD, AgentPaths, ConfigError, load_node_config
from .packages import Apt

log = logging.getLogger("pi-image.upgrade")

SOURCE_LIST = "etc/apt/sources.list.d/kubernetes.list"  # the kube-repo overlay's two files (below the root)
PIN_FILE = "etc/apt/preferences.d/kubernetes"
LOG_NAME = "upgrade.log"  # in the agent's state directory
KUBEADM_TIMEOUT = 1800
DRAIN_TIMEOUT = "300s"
_DEB_LINE = re.compile(r"^(deb\s+(?:\[[^\]]*\]\s+)?)(\S+)(\s.*)$")
_KUBERNETES_WORD = re.compile(r"Kubernetes \S+")


class UpgradeFailed(Exception):
    """A phase cannot finish: `message` says what happened, `fix` what to do (one line each)."""

    def __init__(self, message, fix):
        Exception.__init__(self, message)
        self.fix = fix


class ControlPlaneUpgrade(object):
    """Runs one recorded upgrade's phases on the card below `paths.root`."""

    def __init__(self, config, paths, commands, clock=time.time, sleep=time.sleep):
        self.config = config
        self.paths = paths
        self.commands = commands
        self.clock = clock
        self.record_path = os.path.join(paths.root, UPGRADE_RECORD)
        self.apt = Apt(commands, sleep, root=paths.root)
        self.admin = ClusterAdmin(commands, paths.admin_kubeconfig)
        self.record = {}

    def run(self):
        """0 when the upgrade is done (or there is nothing to do), 1 when it failed (recorded)."""
        record = load_record(self.record_path)
        if record is None or record.get("state") != "running":
            log.info("no upgrade to run (%s)", "no record" if record is None else "it is " + str(record.get("state")))
            return 0
        self.record = record
        if record.get("node") != self.config.node or record.get("mode") not in protocol.UPGRADE_MODES or \
                not protocol.MINOR_RE.match(str(record.get("to"))) or not isinstance(record.get("phases"), dict):
            record["phases"] = {}
            return self._failed("requested", UpgradeFailed(
                "the upgrade record names {} ({}, to {!r}), not this node {}".format(
                    record.get("node"), record.get("mode"), record.get("to"), self.config.node),
                "ask for the upgrade again with `pi-image cluster upgrade`"))
        log.info("upgrading %s to Kubernetes %s (%s)", self.config.node, record["to"], record["mode"])
        for phase, step in self._phases():
            if phase in record["phases"]:
                continue
            self._enter(phase)
            try:
                step()
            except (UpgradeFailed, SetupFailed) as err:
                return self._failed(phase, err)
            self._finish(phase)
        record.update(state="done", phase="done")
        self._finish("done")
        log.info("%s runs Kubernetes %s now", self.config.node, record.get("release"))
        return 0

    def _phases(self):
        steps = [("repository", self.repository), ("kubeadm", self.kubeadm), ("plan", self.plan),
                 ("apply", self.apply), ("drain", self.drain), ("kubelet", self.kubelet),
                 ("uncordon", self.uncordon)]
        return [(phase, step) for phase, step in steps if phase != "plan" or self.record["mode"] == "apply"]

    def _enter(self, phase):
        log.info("phase %s", phase)
        self.record["phase"] = phase
        save_record(self.record_path, self.record, self.clock)

    def _finish(self, phase):
        self.record["phases"][phase] = self.clock()
        save_record(self.record_path, self.record, self.clock)

    def _failed(self, phase, err):
        """Record the failure (and uncordon a node this upgrade drained); the run's exit code."""
        message = protocol.redact(str(err))
        fix = getattr(err, "fix", None) or "fix what it says, then run `pi-image cluster upgrade DIR --to {}` " \
                                           "again".format(self.record.get("to"))
        if phase in ("drain", "kubelet", "uncordon"):
            self.record["phases"].pop("drain", None)  # asked again, the upgrade drains again
            if not self._uncordon().ok:
                message += "; and {} could not be uncordoned: run `kubectl uncordon {}`".format(
                    self.config.node, self.config.node)
        self.record.update(state="failed", phase=phase, error=message, fix=protocol.redact(fix))
        save_record(self.record_path, self.record, self.clock)
        log.error("upgrade to %s failed in phase %s: %s; %s", self.record.get("to"), phase, message, fix)
        return 1

    def repository(self):
        """The apt source and the pin moved to the new minor, in the files' own shape."""
        to = self.record["to"]
        if self.config.kube_install != "packages":
            raise UpgradeFailed("this card installs Kubernetes from its release binaries, not apt packages",
                                "not yet: reflash it with a card of {}".format(to))
        source = self._read(SOURCE_LIST)
        lines = source.splitlines(True)
        deb = [index for index, line in enumerate(lines) if _DEB_LINE.match(line)]
        if len(deb) != 1:
            raise UpgradeFailed("/{} holds {} deb lines, not one".format(SOURCE_LIST, len(deb)),
                                "reflash this node with a card of {}".format(to))
        lines[deb[0]] = self._moved_deb_line(lines[deb[0]], to)
        replace_text(os.path.join(self.paths.root, SOURCE_LIST), "".join(_retitled(lines, to)))
        pin = [re.sub(r"^Pin: version .*$", "Pin: version {}.*".format(to), line.rstrip("\n")) + "\n"
               for line in self._read(PIN_FILE).splitlines()]
        replace_text(os.path.join(self.paths.root, PIN_FILE), "".join(_retitled(pin, to)))
        log.info("apt source and pin moved to Kubernetes %s", to)

    def _moved_deb_line(self, line, to):
        """The deb line with the repository of `to`: node.json's kube_repo template, else the running minor's
        "vX.Y" replaced in the line."""
        head, url, tail = _DEB_LINE.match(line).groups()
        if self.config.kube_repo:
            return head + self.config.kube_repo.format(version=to) + tail + ("\n" if line.endswith("\n") else "")
        running = minor_of(self.record.get("from"))
        old = "v1.{}".format(running)
        if running is None or old not in url:
            raise UpgradeFailed("the apt source {} names no v1.{} repository to move".format(url, running),
                                "reflash this node with a card of {}".format(to))
        return line.replace(url, url.replace(old, "v" + to))

    def _read(self, relative):
        try:
            with open(os.path.join(self.paths.root, relative)) as handle:
                return handle.read()
        except OSError as err:
            raise UpgradeFailed("cannot read /{}: {}".format(relative, err.strerror),
                                "reflash this node with a card of {}".format(self.record["to"])) from None

    def kubeadm(self):
        """The new minor's kubeadm installed and held; its version is the release the cluster moves to."""
        self._install(["kubeadm"])
        result = self.commands.run(["kubeadm", "version", "-o", "short"])
        release = result.stdout.strip() if result.ok else ""
        if minor_of(release) != minor_of(self.record["to"]):
            raise UpgradeFailed("apt installed kubeadm {!r}, not a {}".format(release or result.summary(200),
                                                                              self.record["to"]),
                                "check /{} and /{} (`apt-cache policy kubeadm`)".format(SOURCE_LIST, PIN_FILE))
        self.record["release"] = release

    def plan(self):
        self._kubeadm(["upgrade", "plan", self.record["release"]], "kubeadm upgrade plan")

    def apply(self):
        if self.record["mode"] == "apply":
            self._kubeadm(["upgrade", "apply", "-y", self.record["release"]], "kubeadm upgrade apply")
        else:
            self._kubeadm(["upgrade", "node"], "kubeadm upgrade node")

    def _kubeadm(self, args, what):
        result = self.commands.run(["kubeadm"] + args, timeout=KUBEADM_TIMEOUT)
        if not result.ok:
            raise UpgradeFailed("{} failed ({} still runs {}): {}".format(what, self.config.node,
                                                                          self.record.get("from"), result.summary()),
                                "fix what it says, then run `pi-image cluster upgrade DIR --to {}` again".format(
                                    self.record["to"]))
        log.info("%s %s done", what, " ".join(args[2:]))

    def drain(self):
        node = self.config.node
        result = self.admin.kubectl("drain", node, "--ignore-daemonsets", "--delete-emptydir-data",
                                    "--timeout=" + DRAIN_TIMEOUT, timeout=KUBEADM_TIMEOUT)
        if result.ok:
            return
        output = result.stdout + result.stderr
        if "disruption budget" in output:
            raise UpgradeFailed("cannot drain {}: evicting a pod would violate its PodDisruptionBudget ({})".format(
                node, result.summary(300)), "relax the PodDisruptionBudget or scale the workload up, then run "
                                            "`pi-image cluster upgrade DIR --to {}` again".format(self.record["to"]))
        raise UpgradeFailed("cannot drain {}: {}".format(node, result.summary(300)),
                            "see `kubectl get pods -A -o wide`, then run `pi-image cluster upgrade DIR --to {}` "
                            "again".format(self.record["to"]))

    def kubelet(self):
        self._install(["kubelet", "kubectl"])
        for argv in (["systemctl", "daemon-reload"], ["systemctl", "restart", "kubelet"]):
            result = self.commands.run(argv, timeout=120)
            if not result.ok:
                raise UpgradeFailed("{} failed: {}".format(" ".join(argv), result.summary(300)),
                                    "see `journalctl -u kubelet` on {}".format(self.config.node))

    def uncordon(self):
        result = self._uncordon()
        if not result.ok:
            raise UpgradeFailed("cannot uncordon {}: {}".format(self.config.node, result.summary(300)),
                                "run `kubectl uncordon {}`".format(self.config.node))

    def _uncordon(self):
        return self.admin.kubectl("uncordon", self.config.node, timeout=120)

    def _install(self, packages):
        """`packages` moved to the pinned minor: unheld, installed (apt-get update first), held again."""
        self.apt.unhold(packages)
        try:
            self.apt.install(packages)
        finally:
            self.apt.hold(packages)


def _retitled(lines, to):
    """The files' comment lines name the new minor ("Kubernetes 1.32")."""
    return [_KUBERNETES_WORD.sub("Kubernetes " + to, line) if line.startswith("#") else line for line in lines]


def main(argv=None):
    """The unit's entry point: run the recorded upgrade of the card below --root."""
    parser = argparse.ArgumentParser(prog="python3 -m firstboot.upgrade", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/", help="the system to upgrade (a sandbox tree in tests)")
    args = parser.parse_args(argv)
    os.umask(0o077)
    paths = AgentPaths(args.root)
    paths.ensure_state_dir()
    log_to(logging.FileHandler(os.path.join(paths.state_dir, LOG_NAME)))
    try:
        config = load_node_config(paths.node_config)
    except ConfigError as err:
        log.error("%s", err)
        return 2
    commands = CommandRunner(dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    return ControlPlaneUpgrade(config, paths, commands).run()


if __name__ == "__main__":
    sys.exit(main())
