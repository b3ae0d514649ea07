#!/usr/bin/python3
"""Test-only watcher in the booted guest: once first boot is over, record what the system looks like and power off.

"Over" is the first of: the agent's marker /var/lib/pi-image/firstboot.done exists and its unit is no longer running
(and multi-user.target was reached, so on a second boot the unit's condition was evaluated); the agent's log holds
the text of `pitest.stop_on=` (kernel command line); `pitest.timeout=` seconds of uptime (lab.py always
passes it).

The report holds what the node's own OS says: the runtime (`systemctl is-active containerd`, `ctr version`, the
SystemdCgroup lines of `containerd config dump`), the installed packages and apt's view of kubeadm (`apt-cache
policy`), the kubelet's unit and its drop-ins, the SHA-256 of the files in /usr/local/bin and /opt/cni/bin (the
release path's), the default routes, what netplan generated for networkd, resolv.conf, the clock and timesyncd's state.

Power-ons are counted in /var/lib/pi-image-test/boots; the report goes to /var/lib/pi-image-test/boot-<N>.json
and to the serial console as `PITEST report {...}`. With `pitest.stay_while=URL` the guest then stays up (a master
serving its token endpoint) while URL answers "stay", until it answers "release" or the timeout. Then the journal goes
to boot-<N>.journal and the guest powers off (filesystems unmounted cleanly), so the host can read the files back
with debugfs.
"""

import json
import os
import shlex
import subprocess
import time

RESULTS = "/var/lib/pi-image-test"
DONE = "/var/lib/pi-image/firstboot.done"
AGENT_LOG = "/var/lib/pi-image/firstboot.log"
NETWORKD_RUN = "/run/systemd/network"  # what netplan generated for systemd-networkd
UNIT = "pi-image-firstboot.service"
ENDPOINT_UNIT = "pi-image-tokend.service"  # a control-plane node's token endpoint, started by its agent
UNIT_PROPERTIES = ("ActiveState", "SubState", "Result", "ConditionResult", "ExecMainStatus",
                   "ExecMainStartTimestampMonotonic", "ExecMainExitTimestampMonotonic")
MANAGER_PROPERTIES = ("UserspaceTimestampMonotonic", "FinishTimestampMonotonic")
PROC_FILES = ("/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
              "/proc/sys/net/ipv4/ip_forward", "/proc/swaps", "/proc/cmdline", "/sys/fs/cgroup/cgroup.controllers")


def knobs():
    with open("/proc/cmdline") as handle:
        words = shlex.split(handle.read())
    return dict(word[len("pitest."):].split("=", 1) for word in words if word.startswith("pitest.") and "=" in word)


def uptime():
    with open("/proc/uptime") as handle:
        return float(handle.read().split()[0])


def output(*argv):
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True).stdout
    except FileNotFoundError:
        return "{}: not installed".format(argv[0])


def show(*argv):
    """`systemctl show` properties as a dict."""
    lines = output("systemctl", "show", *argv).splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def digests(*directories):
    """{path: SHA-256} of the files in `directories` (the release path's binaries and CNI plugins)."""
    import hashlib

    found = {}
    for directory in directories:
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                with open(path, "rb") as handle:
                    found[path] = hashlib.sha256(handle.read()).hexdigest()
    return found


def finished(stop_on):
    if os.path.exists(DONE):
        unit = show(UNIT, "-p", "ActiveState")
        target = show("multi-user.target", "-p", "ActiveState")
        if unit.get("ActiveState") != "activating" and target.get("ActiveState") == "active":
            return "done"
    if stop_on and stop_on in (read(AGENT_LOG) or ""):
        return "stop-on"
    return None


def report(reason, boot):
    loaded = read("/proc/modules") or ""
    return {
        "boot": boot, "reason": reason, "uptime": uptime(),
        "done": read(DONE), "unit": show(UNIT, *("-p" + name for name in UNIT_PROPERTIES)),
        "endpoint_unit": show(ENDPOINT_UNIT, *("-p" + name for name in UNIT_PROPERTIES)),
        "manager": show(*("-p" + name for name in MANAGER_PROPERTIES)),
        "network_online": show("network-online.target", "-p", "ActiveEnterTimestampMonotonic"),
        "modules": {name: (name + " ") in loaded for name in ("overlay", "br_netfilter")},
        "proc": {path: read(path) for path in PROC_FILES},
        "addresses": output("ip", "-o", "-4", "addr", "show").splitlines(),
        "hostname": read("/etc/hostname"),
        "failed_units": output("systemctl", "--failed", "--no-legend", "--plain").splitlines(),
        "runtime": {
            "is_active": output("systemctl", "is-active", "containerd").strip(),
            "ctr_version": output("ctr", "--address", "/run/containerd/containerd.sock", "version"),
            "systemd_cgroup": [line.strip() for line in output("containerd", "config", "dump").splitlines()
                               if "SystemdCgroup" in line],
            "sandbox_image": [line.strip() for line in output("containerd", "config", "dump").splitlines()
                              if "sandbox_image" in line],
            "images": output("ctr", "--address", "/run/containerd/containerd.sock", "-n", "k8s.io", "images", "ls",
                             "-q").split(),
        },
        "packages": [line.strip() for line in output(
            "dpkg-query", "-W", "-f=${Package} ${Version} ${db:Status-Abbrev}\n", "containerd", "runc", "kubelet",
            "kubeadm", "kubectl").splitlines()],
        "kubeadm_policy": output("apt-cache", "policy", "kubeadm"),
        "kubelet_unit": show("kubelet", "-p", "FragmentPath", "-p", "DropInPaths", "-p", "UnitFileState"),
        "release_files": digests("/usr/local/bin", "/opt/cni/bin"),
        "routes": output("ip", "-o", "-4", "route", "show", "default").splitlines(),
        "networkd": {name: read(os.path.join(NETWORKD_RUN, name)) for name in sorted(os.listdir(NETWORKD_RUN))}
        if os.path.isdir(NETWORKD_RUN) else {},
        "resolv_conf": read("/etc/resolv.conf"),
        "time": {"now": time.time(), "timesync": show("systemd-timesyncd", "-p", "ActiveState", "-p", "StatusText")},
    }


def count_boot():
    """This power-on's number (1, 2, ...), counted on disk at once so that a later power cut does not lose it."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "boots")
    boot = int(read(path) or "0") + 1
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(descriptor, str(boot).encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return boot


def stay(url, timeout):
    """Poll `url` until it answers "release" (or the uptime passes `timeout`)."""
    import urllib.request  # only here: with ssl, it costs every boot seconds of emulated CPU

    while uptime() < timeout:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.read().strip() == b"release":
                    return "released"
        except OSError:
            pass
        time.sleep(1)
    return "timeout"


def main():
    settings = knobs()
    stop_on, timeout = settings.get("stop_on"), float(settings["timeout"])
    boot = count_boot()
    reason = None
    while reason is None:
        reason = finished(stop_on) or ("timeout" if uptime() > timeout else None)
        if reason is None:
            time.sleep(0.5)
    data = report(reason, boot)
    with open(os.path.join(RESULTS, "boot-{}.json".format(boot)), "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())  # a master that stays up may have its power cut later (the upgrade story)
    with open("/dev/console", "w") as console:
        console.write("PITEST report " + json.dumps(data, sort_keys=True) + "\n")
    if settings.get("stay_while"):
        with open("/dev/console", "w") as console:
            console.write("PITEST staying up while {} says so\n".format(settings["stay_while"]))
        ended = stay(settings["stay_while"], timeout)
        with open("/dev/console", "w") as console:
            console.write("PITEST stay over ({}) at uptime {:.1f}\n".format(ended, uptime()))
    with open(os.path.join(RESULTS, "boot-{}.journal".format(boot)), "w") as handle:
        handle.write(output("journalctl", "-b", "-o", "short-monotonic", "--no-pager"))
    os.sync()
    subprocess.run(["systemctl", "poweroff", "--force"])  # no unit stops (seconds under emulation); still unmounts


if __name__ == "__main__":
    main()
