#!/usr/bin/python3
"""`kubeadm upgrade plan|apply|node ...` in the booted guest (system test only; the kubeadm stand-in recorded the call).

There is no control plane to upgrade: the arguments go to the test's fake API server on the host, at the server the
node's admin kubeconfig names (/etc/kubernetes/admin.conf, as the real kubeadm reads it), with the version of the
kubeadm installed here. The join tests' kubeadm stand-in answers there against their fake cluster: it checks the
order and the version skew as kubeadm would (apply at most one minor up, never past the installed kubeadm; `node`
only once the control plane runs the new version). The exit code and output are kubeadm's.

    pitest.upgrade_sleep=SECONDS   (kernel command line) `upgrade apply` takes this long before it reaches the API
                                   server (to cut the power in the middle)
"""

import re
import sys
import time

import kubeadm_standin as standin

ADMIN_CONF = "/etc/kubernetes/admin.conf"


def main(argv):
    settings = standin.knobs()
    try:
        with open(ADMIN_CONF) as handle:
            server = re.search(r"server: https?://([^/\s]+)", handle.read()).group(1)
    except (OSError, AttributeError):
        sys.stderr.write("couldn't create a Kubernetes client from file \"{}\": no server in it\n".format(ADMIN_CONF))
        return 1
    if argv[1:3] == ["upgrade", "apply"]:
        standin.console("kubeadm-upgrade apply starting")
        time.sleep(float(settings.get("upgrade_sleep", "0")))
    body = {"args": argv[1:], "kubeadm_version": standin.kubeadm_version(settings)}
    try:
        answer = standin.post_json(server, "/pi-image-test/kubeadm-upgrade", body)
    except (OSError, ValueError) as err:
        sys.stderr.write("[upgrade] FATAL: the API server at {} cannot be reached: {}\n".format(server, err))
        return 1
    sys.stdout.write(answer["stdout"])
    sys.stderr.write(answer["stderr"])
    standin.console("kubeadm-upgrade {} exit {}: {}".format(argv[2] if len(argv) > 2 else "", answer["returncode"],
                                                            (answer["stderr"] or answer["stdout"]).strip()[-300:]))
    return answer["returncode"]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
