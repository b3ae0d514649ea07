#!/usr/bin/python3
"""`kubeadm init --config FILE ...` in the booted guest (system test only; the kubeadm stand-in recorded the call).

First kubeadm's preflight: the node checks join and init share (kubeadm_standin.node_errors), and what init adds:
the API server's bindPort and the kubelet's port free, at least 1700 MB of memory. (Not kubeadm's two CPUs: a guest
here has one emulated CPU, a Pi has four.)

There is no control plane to bring up, so the configuration then goes to the test's fake API server on the host, at
its controlPlaneEndpoint. It runs the join tests' kubeadm stand-in (`kubeadm init --config`) against their fake
cluster and answers with its exit code, its output and the files it wrote (admin.conf, pki/ca.crt), which are
written here under /etc/kubernetes with the modes they had there, as kubeadm leaves them. Each init's start and end
(uptime) and exit code go to /var/lib/pi-image-test/inits.jsonl. The static pods already in
/etc/kubernetes/manifests (kube-vip's, on a cluster of several control planes) go along, so that the stand-in checks
them as the kubelet would run them.

`kubeadm init phase upload-certs --upload-certs --config FILE` (the token endpoint's, when the kubeadm-certs Secret
expired) goes to the fake API server as it is: it touches nothing on this node.
"""

import json
import os
import re
import socket
import sys

import kubeadm_standin as standin

KUBELET_PORT = 10250
MIN_MEMORY_MB = 1700
MANIFESTS = "/etc/kubernetes/manifests"
RECORD = "/var/lib/pi-image-test/inits.jsonl"


def init_errors(config):
    """What kubeadm init checks beyond the node checks, as kubeadm words it."""
    errors = []
    bind_port = re.search(r'bindPort:\s*"?(\d+)', config)
    for port in ([int(bind_port.group(1))] if bind_port else []) + [KUBELET_PORT]:
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                errors.append("[ERROR Port-{0}]: Port {0} is in use".format(port))
    with open("/proc/meminfo") as handle:
        total_mb = int(re.search(r"MemTotal:\s+(\d+) kB", handle.read()).group(1)) // 1024
    if total_mb < MIN_MEMORY_MB:
        errors.append("[ERROR Mem]: the system RAM ({} MB) is less than the minimum {} MB".format(
            total_mb, MIN_MEMORY_MB))
    return errors


def static_pods():
    """{file name: text} of /etc/kubernetes/manifests (empty before kubeadm writes its own there)."""
    pods = {}
    for name in sorted(os.listdir(MANIFESTS)) if os.path.isdir(MANIFESTS) else []:
        with open(os.path.join(MANIFESTS, name)) as handle:
            pods[name] = handle.read()
    return pods


def upload_certs(argv, config):
    """The phase as the fake API server plays it: its exit code and output."""
    endpoint = re.search(r'controlPlaneEndpoint: "([^"]+)"', config).group(1)
    mode = os.stat(argv[argv.index("--config") + 1]).st_mode & 0o777
    body = {"args": argv[1:], "config": config, "config_mode": mode,
            "kubeadm_version": standin.kubeadm_version(standin.knobs()), "manifests": {}}
    try:
        answer = standin.post_json(endpoint, "/pi-image-test/kubeadm-init", body)
    except (OSError, ValueError) as err:
        sys.stderr.write("error execution phase upload-certs: {}\n".format(err))
        return 1
    sys.stdout.write(answer["stdout"])
    sys.stderr.write(answer["stderr"])
    return answer["returncode"]


def write_files(files):
    """{path under /: {"content", "mode"}} written as the fake kubeadm wrote them, each synced."""
    for relative, entry in sorted(files.items()):
        path = os.path.join("/", relative)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, entry["mode"])
        with open(descriptor, "w") as handle:
            handle.write(entry["content"])
            handle.flush()
            os.fsync(handle.fileno())  # on disk, as kubeadm's are long before a later power cut (the upgrade story)
        os.chmod(path, entry["mode"])


def init(argv, config):
    errors = standin.node_errors(config, "init") + init_errors(config)
    if errors:
        return standin.preflight_failed("kubeadm-init", errors, sys.stderr.write)
    endpoint = re.search(r'controlPlaneEndpoint: "([^"]+)"', config).group(1)
    mode = os.stat(argv[argv.index("--config") + 1]).st_mode & 0o777
    body = {"args": argv[1:], "config": config, "config_mode": mode,
            "kubeadm_version": standin.kubeadm_version(standin.knobs()), "manifests": static_pods()}
    try:
        answer = standin.post_json(endpoint, "/pi-image-test/kubeadm-init", body)
    except (OSError, ValueError) as err:
        sys.stderr.write("error execution phase wait-control-plane: the API server at {} did not come up: {}\n"
                         .format(endpoint, err))
        return 1
    write_files(answer["files"])
    sys.stdout.write(answer["stdout"])
    sys.stderr.write(answer["stderr"])
    last = (answer["stderr"] or answer["stdout"]).strip().splitlines()
    standin.console("kubeadm-init exit {}: {}".format(answer["returncode"], last[-1] if last else ""))
    return answer["returncode"]


def main(argv):
    started = standin.uptime()
    with open(argv[argv.index("--config") + 1]) as handle:
        config = handle.read()
    if argv[1:3] == ["init", "phase"]:
        return upload_certs(argv, config)
    returncode = init(argv, config)
    with open(RECORD, "a") as handle:
        handle.write(json.dumps({"returncode": returncode, "started": started, "ended": standin.uptime()}) + "\n")
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
