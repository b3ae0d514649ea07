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
    kubectl_sleep          seconds every kubectl call takes (a slow API server)
    ip_addr / ip_route     output of `ip -o addr show` / `ip -o route get`
    init_fail              N: the next N `kubeadm init`s fail in wait-control-plane (the kubelet never comes up)
    init_sleep             seconds `kubeadm init` waits for the control plane (to kill the agent in the middle)
    expected_advertise_address  the only address `kubeadm init` can advertise (etcd binds to it)
    ca_cert_file           the CA certificate (PEM) `kubeadm init` installs (else it makes one)
    apply_fail             N: the next N `kubectl apply`s find the API server refusing connections

Bootstrap tokens are made as the API server knows them: `kubectl create -f -` with a bootstrap-token Secret on stdin
(checked field by field like the API server and kubeadm would), `kubectl -n kube-system delete secret
bootstrap-token-<id>` to remove one. The JoinConfiguration is checked like kubeadm would: it must parse as YAML with
the apiVersion this kubeadm version reads, the node-ip in the right shape, a live token and the right CA hash. Every
parsed config is kept in joins.jsonl.

The control plane: `kubeadm init --config FILE` checks the Init-, Cluster- and KubeletConfiguration like kubeadm and
the kubelet would (versions, addresses, subnets, token shape, cgroup driver) and refuses a second init without a
`kubeadm reset` in between, as kubeadm's preflight does. It initializes the fake cluster (its node NotReady, its
bootstrap token live) and keeps the parsed config in inits.jsonl (token secrets redacted). With $FAKE_ROOT (the
sandbox root of the agent running the tool) it writes what kubeadm writes below /etc/kubernetes there: admin.conf,
pki/ca.crt, manifests; `kubeadm reset` removes them (and, on the control plane, the cluster). `kubectl apply -f FILE`
keeps what it applied in applies.jsonl; once a kube-flannel-ds DaemonSet runs with a Network holding the pod subnet,
every node is Ready.

Several control planes (fake_control_planes.py keeps their state): `kubeadm init --upload-certs` needs the
InitConfiguration's certificateKey and uploads the kubeadm-certs Secret (2 h); `kubeadm init phase upload-certs
--upload-certs --config FILE` uploads it again (each kept in uploads.jsonl with the file's mode); both print the key
unless --skip-certificate-key-print, as kubeadm does. Init and control-plane joins add an etcd member. With kube-vip's
static Pod in the manifests directory, init's control plane never comes up unless kube-vip mounts super-admin.conf
(>= 1.29) or admin.conf (before). `kubeadm join` with a controlPlane section: an empty manifests directory, the
advertise address, the uploaded and unexpired certificates and the right key, no etcd member at that address; it
writes the control plane's files below $FAKE_ROOT (admin.conf, no super-admin.conf). `kubeadm reset` removes the
machine's etcd member; the cluster goes only with its last one. Configs kept in inits.jsonl and joins.jsonl have the
certificate key redacted.

A cluster upgrade (fake_upgrades.py plays it): `kubeadm upgrade plan|apply|node`, `kubectl drain|uncordon` and
`kubectl get nodes -o json` (with each node's kubelet version), apt-get moving the kube packages to the pinned minor,
`systemctl restart kubelet` moving the node's kubelet version.
"""

import base64
import calendar
import fcntl
import hashlib
import ipaddress
import json
import os
import random
import re
import shutil
import stat
import sys
import time
from contextlib import contextmanager

import fake_control_planes as control_planes
import fake_upgrades as upgrades

STATE = os.environ["FAKE_STATE"]
BOOTSTRAP_GROUP = "system:bootstrappers:kubeadm:default-node-token"
TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
STATIC_PODS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")
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
        print(upgrades.installed_version(STATE, "kubeadm", knob("kubeadm_version", "v1.31.4")))
    elif args[:1] == ["upgrade"]:
        upgrades.kubeadm_upgrade(args[1:], cluster, STATE, knob, set_knob)
    elif args[:1] == ["join"]:
        join(option(args, "--config"))
    elif args[:3] == ["init", "phase", "upload-certs"]:
        upload_certs_phase(args[3:])
    elif args[:1] == ["init"]:
        init(args[1:])
    elif args[:1] == ["reset"]:
        if "-f" not in args:
            fail("fake kubeadm: reset would prompt without -f")
        reset()
    else:
        fail("fake kubeadm: unexpected arguments {}".format(args))


def kubeadm_api_version():
    """(kubeadm's minor, the kubeadm.k8s.io version it reads): v1beta4 from 1.31, v1beta3 before."""
    minor = int(knob("kubeadm_version", "v1.31.4").split(".")[1])
    return minor, "kubeadm.k8s.io/v1beta4" if minor >= 31 else "kubeadm.k8s.io/v1beta3"


def kubelet_node_ip(registration, api_version):
    """nodeRegistration.kubeletExtraArgs' node-ip: a list of name/value pairs in v1beta4, a map in v1beta3."""
    extra = registration.get("kubeletExtraArgs")
    if api_version.endswith("v1beta4"):
        if not isinstance(extra, list) or not all(isinstance(arg, dict) and set(arg) == {"name", "value"}
                                                  for arg in extra):
            fail("json: cannot unmarshal object into Go struct field NodeRegistrationOptions.nodeRegistration."
                 "kubeletExtraArgs of type []v1beta4.Arg")
        extra = {arg["name"]: arg["value"] for arg in extra}
    elif not isinstance(extra, dict):
        fail("json: cannot unmarshal array into Go struct field NodeRegistrationOptions.nodeRegistration."
             "kubeletExtraArgs of type map[string]string")
    if not is_ip(extra.get("node-ip")):
        fail("fake kubeadm: kubeletExtraArgs has no valid node-ip ({!r})".format(extra.get("node-ip")))
    return extra["node-ip"]


def join(config_path):
    import yaml

    with open(config_path) as handle:
        config = yaml.safe_load(handle)
    _, expected_api = kubeadm_api_version()
    if config["apiVersion"] != expected_api or config["kind"] != "JoinConfiguration":
        fail("fake kubeadm: no kind JoinConfiguration is registered for version {}".format(config["apiVersion"]))
    registration = config["nodeRegistration"]
    node_ip = kubelet_node_ip(registration, expected_api)
    bootstrap = config["discovery"]["bootstrapToken"]
    token = bootstrap["token"]
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
    if "controlPlane" in config:
        join_control_plane(registration["name"], config["controlPlane"], node_ip)
        config["controlPlane"]["certificateKey"] = "<redacted>"
    time.sleep(float(knob("join_sleep", "0")))
    bootstrap["token"] = token[:6] + ".<secret>"
    append("joins.jsonl", {"node": registration["name"], "node_ip": node_ip, "config": config})
    with cluster() as state:  # a cluster that has a control plane but no CNI yet keeps new nodes NotReady
        state["nodes"][registration["name"]] = "NotReady" if state.get("initialized") and not state.get("cni") \
            else "Ready"
    print("This node has joined the cluster")


def init(args):
    """`kubeadm init --config FILE [--skip-token-print]`, checked and failing as kubeadm and the kubelet would."""
    config_path = option(args, "--config")
    mixed = [arg for arg in args if arg not in ("--config", config_path, "--upload-certs")
             and not arg.startswith(("--skip-", "--v="))]
    if config_path is None or mixed:
        fail("can not mix '--config' with arguments {}".format(mixed) if config_path else
             "fake kubeadm: init without --config (the defaults would pick this machine's first address)")
    minor, api_version = kubeadm_api_version()
    documents = init_documents(config_path, api_version)
    plan = checked_init(documents["InitConfiguration"], documents["ClusterConfiguration"], api_version, minor)
    certificate_key = documents["InitConfiguration"].get("certificateKey")
    if "--upload-certs" in args:
        problem = control_planes.key_problem(certificate_key, "InitConfiguration.certificateKey")
        if problem:  # kubeadm would make one and print it: the agent must give the cluster's
            fail(problem)
    root = os.environ.get("FAKE_ROOT", "")
    with cluster() as state:
        if root in state.setdefault("dirty_roots", []):
            fail("[preflight] Running pre-flight checks\nerror execution phase preflight: [preflight] Some fatal "
                 "errors occurred:\n" + "".join(
                     "\t[ERROR FileAvailable--etc-kubernetes-manifests-{0}.yaml]: /etc/kubernetes/manifests/{0}.yaml "
                     "already exists\n".format(name) for name in STATIC_PODS) +
                 "[preflight] If you know what you are doing, you can make a check non-fatal with "
                 "`--ignore-preflight-errors=...`")
        state["dirty_roots"].append(root)  # certificates, kubeconfigs and manifests are written from here on
    ca_pem = write_kubeadm_files(root, plan["endpoint"], minor)
    time.sleep(float(knob("init_sleep", "0")))  # waiting for the control plane's static Pods
    failure = control_plane_failure(plan, documents.get("KubeletConfiguration", {})) or \
        control_planes.kube_vip_problem(root, minor)
    if failure:
        print("[wait-control-plane] Waiting for the kubelet to boot up the control plane as static Pods from "
              "directory \"/etc/kubernetes/manifests\"\n[kubelet-check] The kubelet is not healthy after 4m0s\n"
              + failure)
        fail("error execution phase wait-control-plane: couldn't initialize a Kubernetes cluster\n"
             "To see the stack trace of this error execute with --v=5 or higher")
    with cluster() as state:
        drop_control_plane(state)  # one fake cluster: a control plane initialized elsewhere before is gone
        state.update(initialized=True, cni=False, control_plane={
            "node": plan["node"], "root": root, "endpoint": plan["endpoint"], "pod_subnet": plan["pod_subnet"],
            "version": plan["version"]})
        state["nodes"][plan["node"]] = "NotReady"  # until a CNI is applied
        control_planes.add_member(state, plan["node"], plan["advertise"], root)
        if "--upload-certs" in args:
            control_planes.upload_certs(state, certificate_key)
        for token, expires in plan["tokens"]:
            state["tokens"][token[:6]] = {"secret": token, "description": "kubeadm init", "expires": expires,
                                          "source": "kubeadm init"}
    for entry in documents["InitConfiguration"].get("bootstrapTokens") or []:
        entry["token"] = entry["token"][:6] + ".<secret>"
    if certificate_key is not None:
        documents["InitConfiguration"]["certificateKey"] = "<redacted>"
    append("inits.jsonl", {"node": plan["node"], "advertise_address": plan["advertise"], "node_ip": plan["node_ip"],
                           "root": root, "skip_token_print": "--skip-token-print" in args,
                           "config_mode": "{:04o}".format(stat.S_IMODE(os.stat(config_path).st_mode)),
                           "config": documents})
    if "--upload-certs" in args:
        print_certificate_key(certificate_key, args)
    token = "<value withheld>" if "--skip-token-print" in args else plan["tokens"][0][0]
    if "--skip-token-print" not in args:
        print("[bootstrap-token] Using token: " + token)
    print("[bootstrap-token] Creating the \"cluster-info\" ConfigMap in the \"kube-public\" namespace\n\n"
          "Your Kubernetes control-plane has initialized successfully!\n\n"
          "To start using your cluster, you need to run the following as a regular user:\n\n"
          "  mkdir -p $HOME/.kube\n  sudo cp -i /etc/kubernetes/admin.conf $HOME/.kube/config\n"
          "  sudo chown $(id -u):$(id -g) $HOME/.kube/config\n\n"
          "Then you can join any number of worker nodes by running the following on each as root:\n\n"
          "kubeadm join {} --token {} \\\n\t--discovery-token-ca-cert-hash {}".format(
              plan["endpoint"], token, discovery_hash(ca_pem)))


def init_documents(config_path, api_version):
    """{kind: document} of an init config: Init- and ClusterConfiguration required, a KubeletConfiguration allowed."""
    import yaml

    try:
        with open(config_path) as handle:
            documents = [doc for doc in yaml.safe_load_all(handle) if doc is not None]
    except (OSError, yaml.YAMLError) as err:
        fail("failed to load config file {}: {}".format(config_path, " ".join(str(err).split())))
    known = {"InitConfiguration": api_version, "ClusterConfiguration": api_version,
             "KubeletConfiguration": "kubelet.config.k8s.io/v1beta1"}
    found = {}
    for document in documents:
        document = document if isinstance(document, dict) else {}
        kind, version = document.get("kind"), document.get("apiVersion")
        if kind in found:
            fail("fake kubeadm: two {} documents in {}".format(kind, config_path))
        if known.get(kind) != version:
            fail('no kind "{}" is registered for version "{}" in scheme "k8s.io/kubernetes/cmd/kubeadm/app/apis/'
                 'kubeadm/scheme/scheme.go:31"'.format(kind, version))
        found[kind] = document
    missing = [kind for kind in ("InitConfiguration", "ClusterConfiguration") if kind not in found]
    if missing:
        fail("fake kubeadm: {} has no {}".format(config_path, " or ".join(missing)))
    return found


def checked_init(init_config, cluster_config, api_version, minor):
    """The values the init goes on with, or exit with kubeadm's validation errors (one per line)."""
    errors = []

    def invalid(field, value, why):
        errors.append("{}: Invalid value: {}: {}".format(field, json.dumps(value), why))

    version = str(cluster_config.get("kubernetesVersion", ""))
    match = re.match(r"^v?1\.(\d+)\.\d+$", version)
    if not match:
        fail('unable to parse kubernetesVersion "{}": expected v1.MINOR.PATCH'.format(version))
    if int(match.group(1)) != minor:  # newer than kubeadm is refused; this stand-in only deploys its own minor
        fail("this version of kubeadm only supports deploying clusters with the control plane version >= 1.{0}.0 "
             "and < 1.{1}.0. Current version: {2}".format(minor, minor + 1, version))
    endpoint = init_config.get("localAPIEndpoint") or {}
    advertise = endpoint.get("advertiseAddress")
    if not is_ip(advertise, ipaddress.IPv4Address):
        invalid("localAPIEndpoint.advertiseAddress", advertise, 'couldn\'t use "{}" as "apiserver-advertise-address", '
                "must be an IPv4 address".format(advertise))
    bind_port = endpoint.get("bindPort", 6443)
    if not isinstance(bind_port, int) or not 0 < bind_port < 65536:
        invalid("localAPIEndpoint.bindPort", bind_port, "port number is not valid")
    control_plane_endpoint = cluster_config.get("controlPlaneEndpoint")
    match = re.match(r"^[A-Za-z0-9.-]+:(\d+)$", str(control_plane_endpoint))
    if not match or not 0 < int(match.group(1)) < 65536:
        invalid("controlPlaneEndpoint", control_plane_endpoint, "must be HOST:PORT")
    subnets = checked_subnets(cluster_config.get("networking") or {}, invalid)
    tokens = checked_tokens(init_config.get("bootstrapTokens"), invalid)
    registration = init_config.get("nodeRegistration") or {}
    name = registration.get("name")
    if not isinstance(name, str) or not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", name):
        invalid("nodeRegistration.name", name, "a lowercase RFC 1123 subdomain must consist of lower case "
                "alphanumeric characters, '-' or '.'")
    if not str(registration.get("criSocket", "")).startswith("unix:///"):
        invalid("nodeRegistration.criSocket", registration.get("criSocket"), "must be a unix:/// socket URL")
    node_ip = kubelet_node_ip(registration, api_version)
    sans = (cluster_config.get("apiServer") or {}).get("certSANs", [])
    if not isinstance(sans, list) or not all(isinstance(san, str) and san for san in sans):
        invalid("apiServer.certSANs", sans, "must be a list of names and addresses")
    if errors:
        fail("\n".join(errors))
    return {"node": name, "advertise": advertise, "node_ip": node_ip, "endpoint": control_plane_endpoint,
            "pod_subnet": subnets["podSubnet"], "version": "v" + version.lstrip("v"), "tokens": tokens}


def checked_subnets(networking, invalid):
    """{podSubnet, serviceSubnet: CIDR}: valid, of sizes kubeadm accepts, not overlapping."""
    subnets = {}
    for key, default in (("podSubnet", None), ("serviceSubnet", "10.96.0.0/12")):
        value = networking.get(key, default)
        try:
            subnets[key] = ipaddress.IPv4Network(str(value), strict=False)
        except ValueError:
            invalid("networking." + key, value, "couldn't parse subnet")
    pods, services = subnets.get("podSubnet"), subnets.get("serviceSubnet")
    if services and services.prefixlen < 12:
        invalid("networking.serviceSubnet", str(services), "specified service subnet is too large; for 32-bit "
                "addresses, the mask must be >= 12")
    if pods and pods.prefixlen > 24:
        invalid("networking.podSubnet", str(pods), "the size of pod subnet with mask {} is smaller than the size of "
                "node subnet with mask 24".format(pods.prefixlen))
    if pods and services and pods.overlaps(services):
        invalid("networking.podSubnet", str(pods), "overlaps with networking.serviceSubnet {}".format(services))
    return {key: str(value) for key, value in subnets.items()}


def checked_tokens(entries, invalid):
    """[(token, expiry time)]: kubeadm makes a 24-hour token of its own when the config names none."""
    if entries is None:
        return [("".join(random.choice(TOKEN_CHARS) for _ in range(6)) + "." +
                 "".join(random.choice(TOKEN_CHARS) for _ in range(16)), time.time() + 86400)]
    tokens = []
    for index, entry in enumerate(entries if isinstance(entries, list) else [entries]):
        field = "bootstrapTokens[{}]".format(index)
        entry = entry if isinstance(entry, dict) else {}
        token = entry.get("token")
        if not isinstance(token, str) or not re.match(r"^[a-z0-9]{6}\.[a-z0-9]{16}$", token):
            invalid(field + ".token", "<redacted>", 'the bootstrap token was not of the form '
                    '"^([a-z0-9]{6})\\\\.([a-z0-9]{16})$"')
        if BOOTSTRAP_GROUP not in (entry.get("groups") or []):
            invalid(field + ".groups", entry.get("groups"), "nodes could not join with it: missing " + BOOTSTRAP_GROUP)
        if sorted(entry.get("usages") or []) != ["authentication", "signing"]:
            invalid(field + ".usages", entry.get("usages"), "kubeadm join needs the usages signing and authentication")
        try:
            ttl = go_duration(entry.get("ttl", "24h0m0s"))
        except ValueError:
            invalid(field + ".ttl", entry.get("ttl"), "time: invalid duration")
            ttl = 0
        tokens.append((token, time.time() + (ttl or 10 * 365 * 86400)))  # ttl 0: the token never expires
    return tokens


def go_duration(text):
    """Seconds in a Go duration such as "15m0s" or "24h"."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", str(text))
    if not parts or "".join(number + unit for number, unit in parts) != str(text):
        raise ValueError(text)
    return sum(float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit] for number, unit in parts)


def is_ip(value, kind=ipaddress.ip_address):
    try:
        kind(str(value))
        return value is not None
    except ValueError:
        return False


def control_plane_failure(plan, kubelet_config):
    """Why the static Pods would never come up (kubeadm's wait-control-plane then times out), or None."""
    pending = int(knob("init_fail", "0"))
    if pending:
        set_knob("init_fail", pending - 1)
        return "Unfortunately, an error has occurred: the kubelet is not running (test knob init_fail)"
    driver = kubelet_config.get("cgroupDriver", "systemd")  # kubeadm has defaulted it to systemd since 1.22
    if driver != "systemd":
        return ('kubelet: "Failed to run kubelet" err="failed to run Kubelet: misconfiguration: kubelet cgroup '
                'driver: \\"{}\\" is different from the container runtime cgroup driver: \\"systemd\\""'.format(driver))
    expected = knob("expected_advertise_address")
    if expected and plan["advertise"] != expected:
        return "etcd: listen tcp {}:2380: bind: cannot assign requested address".format(plan["advertise"])
    return None


def write_kubeadm_files(root, endpoint, minor, init=True):
    """What kubeadm writes before it waits for the control plane: the CA, kubeconfigs and static Pod manifests
    below $FAKE_ROOT/etc/kubernetes (nowhere without FAKE_ROOT); returns the CA certificate (PEM bytes). Only init
    writes super-admin.conf (from 1.29); a control plane that joins gets admin.conf."""
    if knob("ca_cert_file"):
        with open(knob("ca_cert_file"), "rb") as handle:
            ca_pem = handle.read()
    else:
        ca_pem = new_certificate("kubernetes", ca=True)[0]
    if not root:
        return ca_pem
    base = os.path.join(root, "etc/kubernetes")
    for directory in ("pki", "manifests"):
        os.makedirs(os.path.join(base, directory), mode=0o755, exist_ok=True)
    write_file(os.path.join(base, "pki/ca.crt"), ca_pem, 0o644)
    users = {"admin.conf": "kubernetes-admin", "super-admin.conf": "kubernetes-super-admin"}
    for name, user in users.items() if minor >= 29 and init else [("admin.conf", "kubernetes-admin")]:
        write_file(os.path.join(base, name), kubeconfig(endpoint, ca_pem, user), 0o600)
    for name in STATIC_PODS:
        write_file(os.path.join(base, "manifests", name + ".yaml"),
                   "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: kube-system\n".format(name).encode(),
                   0o600)
    return ca_pem


def kubeconfig(endpoint, ca_pem, user):
    """A kubeconfig like kubeadm's admin.conf: the cluster CA, https://<controlPlaneEndpoint>, a client certificate."""
    import yaml

    cert, key, ca = (base64.b64encode(data).decode() for data in new_certificate(user) + (ca_pem,))
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "kubernetes", "cluster": {"certificate-authority-data": ca,
                                                        "server": "https://" + endpoint}}],
        "contexts": [{"name": user + "@kubernetes", "context": {"cluster": "kubernetes", "user": user}}],
        "current-context": user + "@kubernetes",
        "users": [{"name": user, "user": {"client-certificate-data": cert, "client-key-data": key}}],
    }, default_flow_style=False).encode()


def new_certificate(common_name, ca=False):
    """(certificate PEM, key PEM): a self-signed ECDSA certificate valid for a day."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return (builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def discovery_hash(ca_pem):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    spki = x509.load_pem_x509_certificate(ca_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def write_file(path, data, mode):
    with open(os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, mode), "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)


def reset():
    """`kubeadm reset -f`: this machine's kubeadm state goes; on the control plane, the cluster with its etcd."""
    root = os.environ.get("FAKE_ROOT", "")
    with cluster() as state:
        if root in state.get("dirty_roots", []):
            state["dirty_roots"].remove(root)
        control_planes.remove_members_of(state, root)
        owner = state.get("control_plane") or {}
        if owner.get("root") == root and not state.get("etcd_members"):
            drop_control_plane(state)
        elif owner.get("root") == root:
            owner["root"] = None  # the first control plane left; the others keep the cluster
    for name in ("admin.conf", "super-admin.conf", "kubelet.conf", "controller-manager.conf", "scheduler.conf",
                 "pki", "manifests") if root else ():
        path = os.path.join(root, "etc/kubernetes", name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)
    print("[reset] Deleted contents of the etcd data directory and /etc/kubernetes")


def drop_control_plane(state):
    """The cluster goes with its control plane's etcd: its node, the init's tokens, the pod network."""
    owner = state.pop("control_plane", None)
    state.update(initialized=False, cni=False, flannel=False, flannel_network=None)
    control_planes.forget_all(state)
    if owner:
        state["nodes"].pop(owner["node"], None)
    state["tokens"] = {key: token for key, token in state["tokens"].items() if token.get("source") != "kubeadm init"}


def join_control_plane(name, control_plane, node_ip):
    """The control-plane part of `kubeadm join`: preflight, the certificates downloaded with the key, this machine's
    control-plane files and its etcd member (before the kubelet starts: a join killed after this leaves both)."""
    root = os.environ.get("FAKE_ROOT", "")
    unknown = sorted(set(control_plane) - {"localAPIEndpoint", "certificateKey"})
    if unknown:
        fail('strict decoding error: unknown field "controlPlane.{}"'.format(unknown[0]))
    endpoint = control_plane.get("localAPIEndpoint") or {}
    advertise = endpoint.get("advertiseAddress")
    if not is_ip(advertise, ipaddress.IPv4Address) or advertise != node_ip:
        fail("controlPlane.localAPIEndpoint.advertiseAddress: Invalid value: {}: must be this node's IPv4 address "
             "(node-ip {})".format(json.dumps(advertise), node_ip))
    if not isinstance(endpoint.get("bindPort"), int) or not 0 < endpoint["bindPort"] < 65536:
        fail("controlPlane.localAPIEndpoint.bindPort: Invalid value: {}: port number is not valid".format(
            json.dumps(endpoint.get("bindPort"))))
    key = control_plane.get("certificateKey")
    problem = control_planes.key_problem(key, "controlPlane.certificateKey")
    if problem:
        fail(problem)
    expected = knob("expected_advertise_address")
    minor, _ = kubeadm_api_version()
    with cluster() as state:
        preflight = control_planes.join_preflight_problems(root)
        if root in state.setdefault("dirty_roots", []):
            preflight.append("[ERROR FileAvailable--etc-kubernetes-kubelet.conf]: /etc/kubernetes/kubelet.conf "
                             "already exists")
        if preflight:
            fail("error execution phase preflight: [preflight] Some fatal errors occurred:\n\t" +
                 "\n\t".join(preflight))
        owner = state.get("control_plane")
        if not owner or not owner.get("endpoint"):
            fail("error execution phase preflight: One or more conditions for hosting a new control plane instance "
                 "is not satisfied.\n\nunable to add a new control plane instance to a cluster that doesn't have a "
                 "stable controlPlaneEndpoint address")
        problem = control_planes.download_problem(state, key)
        if problem:
            fail(problem)
        if expected and advertise != expected:
            fail("error execution phase control-plane-join/etcd: etcd: listen tcp {}:2380: bind: cannot assign "
                 "requested address".format(advertise))
        problem = control_planes.add_member(state, name, advertise, root)
        if problem:
            fail(problem)
        state["dirty_roots"].append(root)
        write_kubeadm_files(root, owner["endpoint"], minor, init=False)


def upload_certs_phase(args):
    """`kubeadm init phase upload-certs --upload-certs --config FILE`: the kubeadm-certs Secret written again."""
    import yaml

    if "--upload-certs" not in args:
        print("[upload-certs] Skipping phase. Please see --upload-certs")
        return
    config_path = option(args, "--config")
    if config_path is None:
        fail("fake kubeadm: upload-certs without --config would generate a key of its own")
    with open(config_path) as handle:
        documents = [doc for doc in yaml.safe_load_all(handle) if isinstance(doc, dict)]
    init_config = next((doc for doc in documents if doc.get("kind") == "InitConfiguration"), {})
    key = init_config.get("certificateKey")
    problem = control_planes.key_problem(key, "InitConfiguration.certificateKey")
    if problem:
        fail(problem)
    with cluster() as state:  # like the stand-in kubectl's Secrets: no `kubeadm init` needed before
        control_planes.upload_certs(state, key)
    append("uploads.jsonl", {"config_mode": "{:04o}".format(stat.S_IMODE(os.stat(config_path).st_mode)),
                             "at": time.time()})
    print("[upload-certs] Storing the certificates in Secret \"kubeadm-certs\" in the \"kube-system\" Namespace")
    print_certificate_key(key, args)


def print_certificate_key(key, args):
    """What kubeadm's upload-certs phase prints, unless --skip-certificate-key-print."""
    if "--skip-certificate-key-print" not in args:
        print("[upload-certs] Using certificate key:\n" + key)


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
    time.sleep(float(knob("kubectl_sleep", "0")))  # a slow API server (a busy master)
    kubeconfig = args[1] if args[:1] == ["--kubeconfig"] else None
    args = args[2:] if kubeconfig else args
    import fake_objects  # kube-system's ConfigMaps and Leases, etcdctl in an etcd Pod (several control planes)

    if fake_objects.handles(args):
        return fake_objects.kubectl(args, cluster)
    if upgrades.handles_kubectl(args):
        return upgrades.kubectl(args, cluster, knob)
    if args[:1] == ["version"]:
        with cluster() as state:
            version = (state.get("control_plane") or {}).get("version", "v1.31.4")
        print(json.dumps({"serverVersion": {"gitVersion": knob("cluster_version", version)}}))
        return
    if args == ["create", "-f", "-"]:
        create_bootstrap_token(sys.stdin.read())
        return
    if args[:4] == ["-n", "kube-system", "delete", "secret"] and len(args) == 5:
        delete_bootstrap_token(args[4])
        return
    if args[:2] == ["apply", "-f"] and len(args) == 3:
        apply(args[2], kubeconfig)
        return
    with cluster() as state:
        nodes = state["nodes"]
        name = args[2] if len(args) > 2 else None
        if args[:4] == ["get", "nodes", "-o", "name"]:
            print("\n".join("node/" + node for node in sorted(nodes)))
            return
        if args[:2] == ["get", "node"] and name in nodes:
            print(json.dumps(node_object(name, nodes[name])))
            return
        if args[:2] == ["delete", "node"] and name in nodes:
            del nodes[name]
            print('node "{}" deleted'.format(name))
            return
    if args[:2] in (["get", "node"], ["delete", "node"]):
        fail('Error from server (NotFound): nodes "{}" not found'.format(name))
    fail("fake kubectl: unexpected arguments {}".format(args))


def node_object(name, status):
    """The Node as `kubectl get node NAME -o json` shows it: Ready, NotReady (no CNI yet) or Unknown (gone quiet)."""
    ready, reason, message = {
        "Ready": ("True", "KubeletReady", "kubelet is posting ready status"),
        "NotReady": ("False", "KubeletNotReady", "container runtime network not ready: NetworkReady=false "
                     "reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized"),
    }.get(status, ("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."))
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"conditions": [{"status": ready, "reason": reason, "message": message, "type": "Ready"}]}}


def apply(path, kubeconfig):
    """`kubectl apply -f FILE`; a flannel DaemonSet whose Network holds the pod subnet makes every node Ready."""
    import yaml

    try:
        with open(path) as handle:
            documents = [doc for doc in yaml.safe_load_all(handle) if doc is not None]
    except OSError:
        fail('error: the path "{}" does not exist'.format(path))
    except yaml.YAMLError as err:
        fail("error: error parsing {}: error converting YAML to JSON: yaml: {}".format(path,
                                                                                     " ".join(str(err).split())))
    objects, network = [], None
    for document in documents:
        meta = document.get("metadata") if isinstance(document, dict) else None
        missing = [key + " not set" for key in ("apiVersion", "kind")
                   if not (isinstance(document, dict) and document.get(key))]
        if missing or not isinstance(meta, dict) or not meta.get("name"):
            fail('error: error validating "{}": error validating data: [{}]'.format(
                path, ", ".join(missing) or "metadata.name not set"))
        objects.append({"kind": document["kind"], "name": meta["name"], "namespace": meta.get("namespace"),
                        "group": document["apiVersion"].rpartition("/")[0]})
        if document["kind"] == "ConfigMap" and meta["name"] == "kube-flannel-cfg":
            try:
                network = json.loads((document.get("data") or {}).get("net-conf.json", "")).get("Network")
            except (ValueError, AttributeError):
                network = "(net-conf.json is not a JSON object)"
    pending = int(knob("apply_fail", "0"))
    with cluster() as state:
        owner = state.get("control_plane")
        if pending or not state.get("initialized"):
            if pending:
                set_knob("apply_fail", pending - 1)
            fail("The connection to the server {} was refused - did you specify the right host or port?".format(
                owner["endpoint"] if owner else "localhost:8080"))
        if network is not None:
            state["flannel_network"] = network
        if any(o["kind"] == "DaemonSet" and o["name"] == "kube-flannel-ds" for o in objects):
            state["flannel"] = True
        if state.get("flannel") and holds(state.get("flannel_network"), owner["pod_subnet"]):
            state["cni"] = True  # flannel runs: the kubelets report NetworkReady
            state["nodes"] = dict.fromkeys(state["nodes"], "Ready")
    append("applies.jsonl", {"file": path, "kubeconfig": kubeconfig, "objects": objects, "flannel_network": network})
    for item in objects:
        resource = item["kind"].lower() + ("." + item["group"] if item["group"] else "")
        print("{}/{} created".format(resource, item["name"]))


def holds(network, subnet):
    """True if flannel's `network` contains the cluster's pod `subnet` (else flannel cannot lease node subnets)."""
    try:
        return ipaddress.ip_network(subnet).subnet_of(ipaddress.ip_network(str(network)))
    except (ValueError, TypeError):
        return False


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
        upgrades.apt_install(args, STATE, knob)


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
               "ctr": ctr, "containerd": containerd,
               "systemctl": lambda args: upgrades.systemctl(args, cluster, STATE, knob)}.get(tool)
    if handler:
        handler(args)


if __name__ == "__main__":
    main()
