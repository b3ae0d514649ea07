#!/usr/bin/python3
"""`kubeadm join --config FILE` in the booted guest (system test only; `standin` recorded the call and runs this).

There is no control plane to join, so the JoinConfiguration goes to the test's fake API server on the host, at the
apiServerEndpoint the token endpoint handed out. It runs the join tests' kubeadm stand-in against their fake
cluster: the token must still be live there (else kubeadm's JWS message), the CA hash right, and the node becomes
Ready there. The exit code and output are kubeadm's, as the agent would see them.

    pitest.join_sleep=SECONDS   (kernel command line) the join takes this long before it reaches the API server
"""

import json
import re
import sys
import time
import urllib.error
import urllib.request


def knobs():
    with open("/proc/cmdline") as handle:
        words = handle.read().split()
    return dict(word[len("pitest."):].split("=", 1) for word in words if word.startswith("pitest.") and "=" in word)


def console(line):
    try:
        with open("/dev/console", "w") as handle:
            handle.write("PITEST " + line + "\n")
    except OSError:
        pass


def main(argv):
    settings = knobs()
    with open(argv[argv.index("--config") + 1]) as handle:
        config = handle.read()
    time.sleep(float(settings.get("join_sleep", "0")))
    endpoint = re.search(r'apiServerEndpoint: "([^"]+)"', config).group(1)
    body = json.dumps({"config": config, "kubeadm_version": settings.get("kubeadm_version", "v1.31.4")}).encode()
    request = urllib.request.Request("http://{}/pi-image-test/kubeadm-join".format(endpoint), data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read().decode())
    except (OSError, urllib.error.URLError) as err:
        sys.stderr.write("error execution phase preflight: cannot reach the API server {}: {}\n".format(endpoint, err))
        return 1
    sys.stdout.write(answer["stdout"])
    sys.stderr.write(answer["stderr"])
    console("kubeadm-join exit {}: {}".format(answer["returncode"], (answer["stderr"] or answer["stdout"]).strip()))
    return answer["returncode"]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
