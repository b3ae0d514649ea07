"""The container runtime the kubelet talks to: its socket, its service, and whether it is ready for kubeadm.

None of the stock Pi images ships a runtime, so first boot installs node.json's `runtime_packages` (see
localsetup.py); pi-image's /etc/containerd/config.toml (config version 2 with SystemdCgroup = true for runc, which
containerd 1.6, 1.7 and 2.x all read) is on disk before the package, and apt keeps it. Ready means what kubeadm's
preflight and the kubelet need: the CRI plugin loaded and answering on the socket (`ctr plugins ls`: the daemon
answers there, and `cri` is "ok" — a config that disables it, as Docker's containerd.io package ships, fails here),
and runc using the systemd cgroup driver in the configuration containerd actually runs (`containerd config dump`).
"""

import logging
import os
import socket
import stat
import time

log = logging.getLogger("pi-image.agent")

START_WAIT_SECONDS = 30
START_POLL_SECONDS = 2


class Runtime(object):
    """One runtime: the systemd service that provides the CRI, and the socket kubeadm's criSocket names."""

    def __init__(self, name, service, socket_path):
        self.name = name
        self.service = service
        self.socket_path = socket_path

    @property
    def cri_socket(self):
        """kubeadm's nodeRegistration.criSocket."""
        return "unix://" + self.socket_path


RUNTIMES = {
    "containerd": Runtime("containerd", "containerd", "/var/run/containerd/containerd.sock"),
    # Kubernetes >= 1.24 reaches Docker only through cri-dockerd (the build refuses docker without it).
    "docker": Runtime("docker", "cri-docker", "/var/run/cri-dockerd.sock"),
}


class RuntimeCheck(object):
    """Starts and checks one runtime (its socket under `root`) through the command seam."""

    def __init__(self, runtime, commands, root="/", sleep=time.sleep):
        self.runtime = runtime
        self.commands = commands
        self.socket_path = os.path.join(root, runtime.socket_path.lstrip("/"))
        self.sleep = sleep

    def start(self, installed):
        """Enable the service when `installed` (just now), and (re)start it when it is not ready, then wait up to
        START_WAIT_SECONDS for it to answer; one log line says how that went (preflight decides what follows).
        One that its package started (Debian's postinst does, with pi-image's configuration on disk since the build)
        and that answers as pi-image configured it is not restarted: that would cost seconds and change nothing."""
        service = self.runtime.service
        problem = self.problem()
        if problem is None:
            if installed:  # its package's postinst loaded the unit: no daemon-reload (seconds on a Pi) for a link
                self.commands.run(["systemctl", "enable", "--no-reload", service])
                log.info("%s answers on %s as its package started it (CRI plugin ok, runc with the systemd cgroup "
                         "driver)", self.runtime.name, self.socket_path)
            return
        log.info("starting %s with pi-image's configuration", service)
        self.commands.run(["systemctl", "enable", service])
        self.commands.run(["systemctl", "restart", service], timeout=120)
        problem = self.problem()
        for _ in range(START_WAIT_SECONDS // START_POLL_SECONDS):
            if problem is None:
                break
            self.sleep(START_POLL_SECONDS)
            problem = self.problem()
        if problem:
            log.error("the container runtime is not ready: %s (%s)", problem, self._service_state())
        else:
            log.info("%s answers on %s (CRI plugin ok, runc with the systemd cgroup driver)", self.runtime.name,
                     self.socket_path)

    def problem(self):
        """Why kubeadm could not use the runtime now, or None. No socket at all is told at once (ctr would wait
        for one)."""
        if not _is_socket(self.socket_path):
            return "{} does not answer on {} (no socket)".format(self.runtime.service, self.socket_path)
        if self.runtime.name == "containerd":
            return self._containerd_problem()
        return None if _socket_answers(self.socket_path) else \
            "{} does not answer on {}".format(self.runtime.service, self.socket_path)

    def _containerd_problem(self):
        plugins = self.commands.run(["ctr", "--connect-timeout", "5s", "--address", self.socket_path, "plugins", "ls"],
                                    timeout=30)
        if not plugins.ok:
            return "containerd does not answer on {}: {}".format(self.socket_path, plugins.summary(200))
        cri = [line.split() for line in plugins.stdout.splitlines()
               if line.split()[:2] == ["io.containerd.grpc.v1", "cri"]]
        if not cri or cri[0][-1] != "ok":
            return ("containerd's CRI plugin is {} (`ctr plugins ls`): is it in disabled_plugins of "
                    "/etc/containerd/config.toml?".format(cri[0][-1] if cri else "not loaded"))
        dump = self.commands.run(["containerd", "config", "dump"], timeout=30)
        if not _runc_uses_systemd_cgroup(dump.stdout):
            return ("containerd's runc does not use the systemd cgroup driver (no SystemdCgroup = true in `containerd "
                    "config dump`): was pi-image's /etc/containerd/config.toml replaced?")
        return None

    def _service_state(self):
        state = self.commands.run(["systemctl", "is-active", self.runtime.service]).stdout.strip() or "unknown"
        journal = self.commands.run(["journalctl", "-u", self.runtime.service, "-n", "3", "-o", "cat", "--no-pager"])
        lines = [line.strip() for line in journal.stdout.splitlines() if line.strip()]
        return "systemctl is-active {}: {}{}".format(self.runtime.service, state,
                                                     "; last log: " + " | ".join(lines) if lines else "")


def _is_socket(path):
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _socket_answers(path):
    """True if something accepts connections on the Unix socket `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(5)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _runc_uses_systemd_cgroup(config_dump):
    """SystemdCgroup = true inside the runc runtime's options table (config version 2 or 3 section names)."""
    in_runc_options = False
    for line in config_dump.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            in_runc_options = stripped.endswith(".containerd.runtimes.runc.options]")
        elif in_runc_options and stripped.replace(" ", "") == "SystemdCgroup=true":
            return True
    return False


def kubeadm_reset(commands, runtime):
    """`kubeadm reset -f` on the runtime's CRI socket: undo an interrupted or failed join or init."""
    return commands.run(["kubeadm", "reset", "-f", "--cri-socket", RUNTIMES[runtime].cri_socket], timeout=300)
