"""The stand-ins' part of a cluster upgrade (issue 31), called by fake_tool.py with the fake cluster's state
(cluster.json, locked for the call) and its knobs. Messages are kubeadm's and kubectl's own.

    apt-get install   with $FAKE_ROOT's kube-repo files (etc/apt/sources.list.d/kubernetes.list and the pin in
                      etc/apt/preferences.d/kubernetes): kubelet/kubeadm/kubectl named are installed at the pinned
                      minor's release (knob `releases`: {"1.32": "v1.32.1"}; default vMINOR.1, or the kubeadm_version
                      knob where it is that minor) - only when the source's repository is that minor's, as apt's
                      candidate would be; kept per machine in installed.json ({root: {package: version}})
    kubeadm version   the machine's installed kubeadm, else the kubeadm_version knob
    kubeadm upgrade   plan [V]: refuses a V newer than the installed kubeadm. apply -y V: refuses without -y, a V
                      newer than the installed kubeadm, more than one minor above the cluster's version or below it;
                      the cluster's version becomes V (knob upgrade_sleep: seconds it takes first, to cut the power in
                      the middle) and this control plane's kube-apiserver manifest names V. node: refuses while the
                      cluster's version is older than the installed kubeadm's minor ("the control plane must be
                      upgraded first"); a control plane's manifest moves. Each success kept in upgrades.jsonl.
    kubectl drain NODE --ignore-daemonsets --delete-emptydir-data --timeout=T: cordons it; knob drain_blocked
                      (a pod's name): the eviction violates its PodDisruptionBudget and the drain fails, cordoned.
    kubectl uncordon NODE; kubectl get nodes -o json: every node Ready or not, unschedulable when cordoned, with
                      status.nodeInfo.kubeletVersion (cluster.json's kubelet_versions, else the kubeadm_version knob:
                      the version it joined with)
    systemctl restart kubelet   the machine's node (its node.json) reports the installed kubelet's version
"""

import json
import os
import re
import sys
import time

INSTALLED = "installed.json"
KUBE_PACKAGES = ("kubelet", "kubeadm", "kubectl")
SOURCE_LIST = "etc/apt/sources.list.d/kubernetes.list"
PIN_FILE = "etc/apt/preferences.d/kubernetes"
APISERVER_MANIFEST = "etc/kubernetes/manifests/kube-apiserver.yaml"
DEFAULT_VERSION = "v1.31.4"
_VERSION = re.compile(r"^v?1\.(\d+)\.(\d+)$")


def fail(message, code=1):
    sys.stderr.write(message + "\n")
    sys.exit(code)


def version_key(version):
    """(minor, patch) of 'v1.32.1'; exits with kubeadm's words for anything else."""
    match = _VERSION.match(str(version))
    if not match:
        fail('[upgrade/version] FATAL: the --version argument is invalid due to these errors:\n\n\t- unable to parse '
             'version "{}"'.format(version))
    return int(match.group(1)), int(match.group(2))


def _root():
    return os.environ.get("FAKE_ROOT", "")


def _installed(state_dir):
    path = os.path.join(state_dir, INSTALLED)
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def installed_version(state_dir, package, default):
    """The version of `package` installed on this machine ($FAKE_ROOT) by an upgrade, else `default`."""
    return _installed(state_dir).get(_root(), {}).get(package, default)


def apt_install(args, state_dir, knob):
    """`apt-get install ... PACKAGES`: the kube packages named move to the pinned minor's release, if the source
    is that minor's repository (else apt's candidate stays the installed version)."""
    root = _root()
    try:
        with open(os.path.join(root, PIN_FILE)) as handle:
            pin = re.search(r"^Pin: version (1\.\d+)\.\*$", handle.read(), re.M)
        with open(os.path.join(root, SOURCE_LIST)) as handle:
            source = handle.read()
    except OSError:
        return  # no kube-repo files: a first boot's install, as fake_tool.apt_get plays it
    if not root or not pin or "/v{}/".format(pin.group(1)) not in source:
        return
    minor = pin.group(1)
    releases = json.loads(knob("releases", "{}"))
    default = knob("kubeadm_version", DEFAULT_VERSION)
    release = releases.get(minor) or (default if default.startswith("v{}.".format(minor)) else "v{}.1".format(minor))
    installed = _installed(state_dir)
    for package in KUBE_PACKAGES:
        if package in args:
            installed.setdefault(root, {})[package] = release
    with open(os.path.join(state_dir, INSTALLED), "w") as handle:
        json.dump(installed, handle)


def cluster_version(state, knob):
    """The API server's version, as the stand-in kubectl reports it."""
    return knob("cluster_version", (state.get("control_plane") or {}).get("version", DEFAULT_VERSION))


def kubeadm_upgrade(args, cluster, state_dir, knob, set_knob):
    """`kubeadm upgrade plan [V] | apply -y V | node`."""
    kubeadm = installed_version(state_dir, "kubeadm", knob("kubeadm_version", DEFAULT_VERSION))
    root = _root()
    verb, rest = (args[0] if args else ""), args[1:]
    if verb not in ("plan", "apply", "node"):
        fail("fake kubeadm: unexpected arguments upgrade {}".format(args))
    if root and not os.path.exists(os.path.join(root, "etc/kubernetes/admin.conf" if verb != "node" else
                                                "etc/kubernetes")):  # no FAKE_ROOT: the boot test's guest asks
        fail('[upgrade/config] FATAL: failed to get config map: couldn\'t create a Kubernetes client from file '
             '"/etc/kubernetes/admin.conf": open /etc/kubernetes/admin.conf: no such file or directory')
    wanted = [arg for arg in rest if not arg.startswith("-")]
    if verb == "node":
        with cluster() as state:
            current = cluster_version(state, knob)
        if version_key(current)[0] < version_key(kubeadm)[0]:
            fail("[upgrade] FATAL: the control plane must be upgraded first: the cluster runs {} and this kubeadm is "
                 "{}".format(current, kubeadm))
        move_manifest(root, current)
        record(state_dir, root, "node", current)
        print("[upgrade] The configuration for this node was successfully updated!")
        return
    if verb == "apply" and not {"-y", "--yes"} & set(rest):
        fail("fake kubeadm: upgrade apply would prompt without -y")
    if len(wanted) > 1 or (verb == "apply" and not wanted):
        fail("fake kubeadm: upgrade {} takes one version, not {}".format(verb, wanted))
    target = wanted[0] if wanted else kubeadm
    if version_key(target) > version_key(kubeadm):
        fail('[upgrade/version] FATAL: the --version argument is invalid due to these errors:\n\n\t- Specified version '
             'to upgrade to "{}" is higher than the kubeadm version "{}". Upgrade kubeadm first using the tool you '
             'used to install kubeadm'.format(target, kubeadm))
    with cluster() as state:
        current = cluster_version(state, knob)
    running, minor = version_key(current)[0], version_key(target)[0]
    if minor > running + 1:
        fail('[upgrade/version] FATAL: the --version argument is invalid due to these errors:\n\n\t- Specified version '
             'to upgrade to "{}" is too high; kubeadm can upgrade only 1 minor version at a time'.format(target))
    if minor < running:
        fail('[upgrade/version] FATAL: the --version argument is invalid due to these errors:\n\n\t- Specified version '
             'to downgrade to "{}" is lower than the cluster version "{}"'.format(target, current))
    if verb == "plan":
        print("[upgrade/versions] Cluster version: {}\n[upgrade/versions] kubeadm version: {}\n\nYou can now apply "
              "the upgrade by executing the following command:\n\n\tkubeadm upgrade apply {}".format(
                  current, kubeadm, target))
        return
    time.sleep(float(knob("upgrade_sleep", "0")))
    with cluster() as state:
        (state.get("control_plane") or {})["version"] = target
        if knob("cluster_version") is not None:
            set_knob("cluster_version", target)
    move_manifest(root, target)
    record(state_dir, root, "apply", target)
    print('[upgrade/successful] SUCCESS! Your cluster was upgraded to "{}". Enjoy!'.format(target))


def move_manifest(root, version):
    """A control plane's kube-apiserver static Pod runs `version` (the kubelet restarts it)."""
    path = os.path.join(root, APISERVER_MANIFEST)
    if root and os.path.exists(path):
        with open(path, "w") as handle:
            handle.write("apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\n  namespace: kube-system\n"
                         "spec:\n  containers:\n  - name: kube-apiserver\n    image: registry.k8s.io/kube-apiserver:{}"
                         "\n".format(version))


def record(state_dir, root, verb, version):
    with open(os.path.join(state_dir, "upgrades.jsonl"), "a") as handle:
        handle.write(json.dumps({"root": root, "verb": verb, "version": version, "at": time.time()}) + "\n")


def handles_kubectl(args):
    """True for the kubectl calls played here."""
    return args[:1] in (["drain"], ["uncordon"]) or args[:4] == ["get", "nodes", "-o", "json"]


def kubectl(args, cluster, knob):
    """`kubectl drain|uncordon NODE ...`, `kubectl get nodes -o json ...`."""
    with cluster() as state:
        nodes, cordoned = state["nodes"], state.setdefault("cordoned", [])
        if args[0] == "get":
            versions = state.get("kubelet_versions", {})
            default = knob("kubeadm_version", DEFAULT_VERSION)
            print(json.dumps({"items": [node_item(name, status, name in cordoned, versions.get(name, default))
                                        for name, status in sorted(nodes.items())]}))
            return
        name = args[1] if len(args) > 1 else None
        if name not in nodes:
            fail('Error from server (NotFound): nodes "{}" not found'.format(name))
        if args[0] == "uncordon":
            if name in cordoned:
                cordoned.remove(name)
            print("node/{} uncordoned".format(name))
            return
        for flag, why in (("--ignore-daemonsets", "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to "
                                                  "ignore)"),
                          ("--delete-emptydir-data", "cannot delete Pods with local storage (use "
                                                     "--delete-emptydir-data to override)")):
            if flag not in args:
                fail("error: unable to drain node \"{}\" due to error: {}".format(name, why))
        if name not in cordoned:
            cordoned.append(name)
    print("node/{} cordoned".format(name))
    blocked = knob("drain_blocked")
    if blocked:
        fail('error when evicting pods/"{0}" -n "default" (will retry after 5s): Cannot evict pod as it would violate '
             'the pod\'s disruption budget.\nerror: unable to drain node "{1}" due to error: [error when evicting '
             'pods/"{0}" -n "default": global timeout reached: 5m0s], continuing command...'.format(blocked, name))
    print("node/{} drained".format(name))


def node_item(name, status, unschedulable, kubelet_version):
    """A Node as `kubectl get nodes -o json` lists it."""
    return {"metadata": {"name": name}, "spec": {"unschedulable": True} if unschedulable else {},
            "status": {"conditions": [{"type": "Ready", "status": "True" if status == "Ready" else "False",
                                       "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}],
                       "nodeInfo": {"kubeletVersion": kubelet_version}}}


def systemctl(args, cluster, state_dir, knob):
    """`systemctl restart kubelet`: this machine's node reports the installed kubelet's version."""
    if args != ["restart", "kubelet"]:
        return
    try:
        with open(os.path.join(_root(), "etc/pi-image/node.json")) as handle:
            node = json.load(handle)["node"]
    except (OSError, ValueError, KeyError):
        return
    version = installed_version(state_dir, "kubelet", knob("kubeadm_version", DEFAULT_VERSION))
    with cluster() as state:
        state.setdefault("kubelet_versions", {})[node] = version
