#!/usr/bin/python3
"""`kubeadm join --config FILE` in the booted guest (system test only; the kubeadm stand-in recorded the call).

First kubeadm's preflight on this node (kubeadm_standin.node_errors); any failure ends the join with kubeadm's
message. There is no control plane to join, so the JoinConfiguration then goes to the test's fake API server on the
host, at the apiServerEndpoint the token endpoint handed out. It runs the join tests' kubeadm stand-in against their
fake cluster: the token must still be live there (else kubeadm's JWS message), the CA hash right, and the node
becomes Ready there. The exit code and output are kubeadm's, as the agent would see them.

A control plane's join (the configuration has `controlPlane:`) also meets kubeadm's preflight of this node's
/etc/kubernetes/manifests, which must be empty, and gets back what kubeadm writes here (admin.conf, the pki), written
with the modes the stand-in gave them (kubeadm_init.write_files).

    pitest.join_sleep=SECONDS   (kernel command line) the join takes this long before it reaches the API server
"""

import os
import re
import sys
import time

import kubeadm_init
import kubeadm_standin as standin

MANIFESTS = "/etc/kubernetes/manifests"


def control_plane_errors(config):
    """What kubeadm's preflight of a control plane's join checks on this node, in kubeadm's words."""
    if "controlPlane:" not in config:
        return []
    try:
        present = os.listdir(MANIFESTS)
    except FileNotFoundError:
        present = []
    if present:
        return ["[ERROR DirAvailable--etc-kubernetes-manifests]: {} is not empty".format(MANIFESTS)]
    return []


def main(argv):
    settings = standin.knobs()
    with open(argv[argv.index("--config") + 1]) as handle:
        config = handle.read()
    errors = standin.node_errors(config) + control_plane_errors(config)
    if errors:
        return standin.preflight_failed("kubeadm-join", errors, sys.stderr.write)
    time.sleep(float(settings.get("join_sleep", "0")))
    endpoint = re.search(r'apiServerEndpoint: "([^"]+)"', config).group(1)
    body = {"config": config, "kubeadm_version": standin.kubeadm_version(settings)}
    try:
        answer = standin.post_json(endpoint, "/pi-image-test/kubeadm-join", body)
    except (OSError, ValueError) as err:
        sys.stderr.write("error execution phase preflight: cannot reach the API server {}: {}\n".format(endpoint, err))
        return 1
    if answer["returncode"] == 0:
        kubeadm_init.write_files(answer.get("files", {}))
    sys.stdout.write(answer["stdout"])
    sys.stderr.write(answer["stderr"])
    standin.console("kubeadm-join exit {}: {}".format(answer["returncode"],
                                                      (answer["stderr"] or answer["stdout"]).strip()))
    return answer["returncode"]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
