"""Recording stand-in for kubeadm, kubectl, ip, modprobe, sysctl, swapoff, systemctl, apt-get, apt-mark.

Run as `python fake_tool.py TOOL ARGS...` by the wrappers harness.install_fakes() puts on PATH. Shared state lives in
$FAKE_STATE: a fake cluster (cluster.json: version, nodes, bootstrap tokens), the calls log (calls.jsonl: every argv
exactly as the tool got it, so a test can prove no secret was on a command line), the bootstrap tokens created
(bootstrap-tokens.jsonl: their public part) and knobs a test sets to inject faults:

    kubeadm_version        what `kubeadm version -o short` prints (default v1.31.4)
    cluster_version        the API server's gitVersion (default v1.31.4)
    expected_ca_hash       the caCertHashes entry a JoinConfiguration must carry
    expire_before_join     N: the next N joins find their token gone and fail with kubeadm's JWS message
    join_sleep             seconds `kubeadm join` takes (to kill the agent in the middle)
    ip_addr / ip_route     output of `ip -o addr show` / `ip -o route get`

Bootstrap tokens are made as the API server knows them: `kubectl create -f -` with a bootstrap-token Secret on stdin
(checked field by field like the API server and kubeadm would), `kubectl -n kube-system delete secret
bootstrap-token-<id>` to remove one. The JoinConfiguration is checked like kubeadm would: it must parse as YAML with
the apiVersion this kubeadm version reads, the node-ip in the right shape, a live token and the right CA hash. Every
parsed config is kept in joins.jsonl.
"""

import calendar
import fcntl
import json
import os
import re
import sys
import time
from contextlib import contextmanager

STATE = os.environ["FAKE_STATE"]
BOOTSTRAP_GROUP = "system:bootstrappers:kubeadm:default-node-token"
DEFAULT_IP_ADDR = """1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\\       valid_lft forever preferred_lft forever
3: eth1    inet 192.168.6.15/24 brd 192.168.6.255 scope global eth1\\       valid_lft forever preferred_lft forever
3: eth1    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever
"""


def knob(name, default=None):
    path = os.path.join(STATE, name)
    if not os.path.exists(path):
        return default
    with open(path) as handle:
        return handle.read().strip()


def set_knob(name, value):
    with open(os.path.join(STATE, name), "w") as handle:
        handle.write(str(value))


def append(name, record):
    with open(os.path.join(STATE, name), "a") as handle:
        handle.write(json.dumps(record) + "\n")


@contextmanager
def cluster():
    """The fake cluster's state, locked for the duration of one command."""
    with open(os.path.join(STATE, "lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = os.path.join(STATE, "cluster.json")
        data = {"nodes": {}, "tokens": {}}
        if os.path.exists(path):
            with open(path) as handle:
                data = json.load(handle)
        yield data
        with open(path + ".tmp", "w") as handle:
            json.dump(data, handle)
        os.replace(path + ".tmp", path)


def fail(message, code=1):
    sys.stderr.write(message + "\n")
    sys.exit(code)


def option(args, name):
    return args[args.index(name) + 1] if name in args else None


def kubeadm(args):
    if args[:1] == ["version"]:
        print(knob("kubeadm_version", "v1.31.4"))
    elif args[:1] == ["join"]:
        join(option(args, "--config"))
    elif args[:1] == ["reset"]:
        if "-f" not in args:
            fail("fake kubeadm: reset would prompt without -f")
    else:
        fail("fake kubeadm: unexpected arguments {}".format(args))


def join(config_path):
    import yaml

    with open(config_path) as handle:
        config = yaml.safe_load(handle)
    minor = int(knob("kubeadm_version", "v1.31.4").split(".")[1])
    expected_api = "kubeadm.k8s.io/v1beta4" if minor >= 31 else "kubeadm.k8s.io/v1beta3"
    registration = config["nodeRegistration"]
    extra = registration["kubeletExtraArgs"]
    node_ip = {a["name"]: a["value"] for a in extra}["node-ip"] if minor >= 31 else extra["node-ip"]
    bootstrap = config["discovery"]["bootstrapToken"]
    token = bootstrap["token"]
    if config["apiVersion"] != expected_api or config["kind"] != "JoinConfiguration":
        fail("fake kubeadm: no kind JoinConfiguration is registered for version {}".format(config["apiVersion"]))
    if knob("expected_ca_hash") and bootstrap["caCertHashes"] != [knob("expected_ca_hash")]:
        fail("fake kubeadm: cluster CA found in cluster-info ConfigMap is invalid: none of the public keys match")
    expire = int(knob("expire_before_join", "0"))
    with cluster() as state:
        if expire:
            state["tokens"].pop(token[:6], None)
            set_knob("expire_before_join", expire - 1)
        live = state["tokens"].get(token[:6])
        if not live or live["secret"] != token or live["expires"] < time.time():
            fail('error execution phase preflight: couldn\'t validate the identity of the API Server: could not find '
                 'a JWS signature in the cluster-info ConfigMap for token ID "{}"'.format(token[:6]))
    time.sleep(float(knob("join_sleep", "0")))
    bootstrap["token"] = token[:6] + ".<secret>"
    append("joins.jsonl", {"node": registration["name"], "node_ip": node_ip, "config": config})
    with cluster() as state:
        state["nodes"][registration["name"]] = "Ready"
    print("This node has joined the cluster")


def create_bootstrap_token(text):
    """`kubectl create -f -`: only a bootstrap-token Secret, complete, as kubeadm itself would write it."""
    import yaml

    secret = yaml.safe_load(text)
    data = secret.get("stringData", {})
    token_id, token_secret = data.get("token-id", ""), data.get("token-secret", "")
    expected = {"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
                "metadata": {"name": "bootstrap-token-" + token_id, "namespace": "kube-system"}}
    wrong = sorted(key for key, value in expected.items() if secret.get(key) != value)
    if wrong or not re.match(r"^[a-z0-9]{6}$", token_id) or not re.match(r"^[a-z0-9]{16}$", token_secret):
        fail("fake kubectl: not a bootstrap token Secret ({})".format(", ".join(wrong) or "token-id/token-secret"))
    if data.get("usage-bootstrap-authentication") != "true" or data.get("usage-bootstrap-signing") != "true" or \
            BOOTSTRAP_GROUP not in data.get("auth-extra-groups", "").split(","):
        fail("fake kubectl: the token would not let kubeadm join (usages or auth-extra-groups)")
    try:
        expires = calendar.timegm(time.strptime(data.get("expiration", ""), "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        fail("fake kubectl: expiration is not an RFC 3339 UTC time")
    with cluster() as state:
        if token_id in state["tokens"]:
            fail('Error from server (AlreadyExists): secrets "bootstrap-token-{}" already exists'.format(token_id))
        state["tokens"][token_id] = {"secret": token_id + "." + token_secret, "description": data.get("description"),
                                     "expires": expires}
    append("bootstrap-tokens.jsonl", {"token_id": token_id, "description": data.get("description"),
                                      "ttl_seconds": round(expires - time.time()), "groups": data["auth-extra-groups"]})
    print("secret/bootstrap-token-{} created".format(token_id))


def delete_bootstrap_token(name):
    with cluster() as state:
        token = state["tokens"].pop(name[len("bootstrap-token-"):], None) if name.startswith("bootstrap-token-") \
            else None
    if token is None:
        fail('Error from server (NotFound): secrets "{}" not found'.format(name))
    print('secret "{}" deleted'.format(name))


def kubectl(args):
    args = args[2:] if args[:1] == ["--kubeconfig"] else args
    if args[:1] == ["version"]:
        print(json.dumps({"serverVersion": {"gitVersion": knob("cluster_version", "v1.31.4")}}))
        return
    if args == ["create", "-f", "-"]:
        create_bootstrap_token(sys.stdin.read())
        return
    if args[:4] == ["-n", "kube-system", "delete", "secret"] and len(args) == 5:
        delete_bootstrap_token(args[4])
        return
    with cluster() as state:
        nodes = state["nodes"]
        name = args[2] if len(args) > 2 else None
        if args[:4] == ["get", "nodes", "-o", "name"]:
            print("\n".join("node/" + node for node in sorted(nodes)))
            return
        if args[:2] == ["get", "node"] and name in nodes:
            status = "True" if nodes[name] == "Ready" else "Unknown"
            print(json.dumps({"status": {"conditions": [{"type": "Ready", "status": status}]}}))
            return
        if args[:2] == ["delete", "node"] and name in nodes:
            del nodes[name]
            print('node "{}" deleted'.format(name))
            return
    if args[:2] in (["get", "node"], ["delete", "node"]):
        fail('Error from server (NotFound): nodes "{}" not found'.format(name))
    fail("fake kubectl: unexpected arguments {}".format(args))


def ip(args):
    if args[:3] == ["-o", "addr", "show"]:
        sys.stdout.write(knob("ip_addr", DEFAULT_IP_ADDR).replace("\\n", "\n") + "\n")
    elif args[:3] == ["-o", "route", "get"]:
        print(knob("ip_route", "{} via 10.0.2.2 dev eth0 src 10.0.2.15 uid 0 \\    cache".format(args[3])))
    else:
        fail("fake ip: unexpected arguments {}".format(args))


def apt_get(args):
    """`apt-get install` puts stand-ins for the kube tools next to this one, as the real packages would."""
    from wrappers import write_wrapper

    if args[:1] == ["install"]:
        for package in ("kubelet", "kubeadm", "kubectl"):
            if package in args:
                write_wrapper(os.environ["FAKE_BIN"], package)


def dpkg_query(args):
    """A package is installed ("ii") when its stand-in is on PATH, as apt_get() puts it there."""
    for package in [arg for arg in args if not arg.startswith("-") and "$" not in arg]:
        if os.path.exists(os.path.join(os.environ["FAKE_BIN"], package)):
            print("{} ii".format(package))


def ctr(args):
    """containerd's client: the daemon answers with its CRI plugin loaded (knob `cri_plugin` overrides its status)."""
    if args[-2:] == ["plugins", "ls"]:
        print("TYPE                  ID    PLATFORMS      STATUS")
        print("io.containerd.grpc.v1 cri   linux/amd64    {}".format(knob("cri_plugin", "ok")))


def containerd(args):
    """`containerd config dump`: the configuration the daemon runs, with runc on the systemd cgroup driver."""
    if args[-2:] == ["config", "dump"]:
        print('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n'
              "  SystemdCgroup = true")


def main():
    tool, args = sys.argv[1], sys.argv[2:]
    append("calls.jsonl", {"tool": tool, "args": args})
    handler = {"kubeadm": kubeadm, "kubectl": kubectl, "ip": ip, "apt-get": apt_get, "dpkg-query": dpkg_query,
               "ctr": ctr, "containerd": containerd}.get(tool)
    if handler:
        handler(args)


if __name__ == "__main__":
    main()
