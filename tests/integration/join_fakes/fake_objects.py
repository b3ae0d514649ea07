"""The stand-in kubectl's objects: ConfigMaps and Leases in kube-system, and etcdctl inside an etcd Pod.

Called by fake_tool.kubectl() for `kubectl -n kube-system ...` (handles() says which calls are ours), with the fake
cluster's state (cluster.json, locked for the call). Objects live in its `objects` ({"configmaps/NAME": object}) and
behave as the API server's do: every write gets the next resourceVersion; `replace -f -` of an object whose
resourceVersion is not the stored one is a Conflict, of a missing one NotFound; `create -f -` of an existing name is
AlreadyExists (and one carrying a resourceVersion is refused); `get KIND -l KEY=VALUE -o json` lists by label. Errors
are the ones real kubectl prints, with its exit code 1.

`exec etcd-NODE -- etcdctl FLAGS member list -w json | member remove HEX` answers from cluster.json's `etcd_members`
([{"id": "<16 hex>", "name", "peer_urls"}], written by the kubeadm stand-in at init and control-plane joins) in
etcdctl's own JSON shape (IDs as unsigned integers); the Pod exists on a node that has an etcd member.
"""

import json
import sys

NAMESPACE = "kube-system"
ETCDCTL_FLAGS = ["--endpoints=https://127.0.0.1:2379", "--cacert=/etc/kubernetes/pki/etcd/ca.crt",
                 "--cert=/etc/kubernetes/pki/etcd/server.crt", "--key=/etc/kubernetes/pki/etcd/server.key"]
# kubectl's names of a resource -> (the collection, how the API server names it in messages, its apiVersion, kind)
RESOURCES = {}
for _names, _resource in (
        (("configmap", "configmaps", "cm"), ("configmaps", "configmaps", "v1", "ConfigMap")),
        (("lease", "leases", "leases.coordination.k8s.io"),
         ("leases", "leases.coordination.k8s.io", "coordination.k8s.io/v1", "Lease"))):
    RESOURCES.update(dict.fromkeys(_names, _resource))
KINDS = {kind: collection for collection, _, _, kind in RESOURCES.values()}
SHORT = {"configmaps": "configmap", "leases": "lease.coordination.k8s.io"}  # what `kubectl create` prints


def handles(args):
    """True for the calls this module plays: kube-system's ConfigMaps and Leases, and exec into an etcd Pod."""
    if args[:2] != ["-n", NAMESPACE] or len(args) < 4:
        return False
    verb, what = args[2], args[3]
    return (verb in ("get", "delete") and what in RESOURCES) or (verb in ("create", "replace") and what == "-f") or \
        (verb == "exec" and what.startswith("etcd-"))


def kubectl(args, cluster):
    """Play `kubectl -n kube-system ARGS...` (handles(args) is true) against `cluster()`, the locked state."""
    verb, rest = args[2], args[3:]
    if verb == "exec":
        return etcd_exec(rest, cluster)
    with cluster() as state:
        objects = state.setdefault("objects", {})
        if verb == "get":
            get(objects, rest)
        elif verb == "delete":
            collection, name = RESOURCES[rest[0]][0], rest[1]
            if objects.pop(collection + "/" + name, None) is None:
                missing(rest[0], name)
            print('{} "{}" deleted'.format(SHORT[collection], name))
        else:
            write(state, objects, verb, rest)


def fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(1)


def missing(what, name, when=""):
    fail('Error from server (NotFound): {}{} "{}" not found'.format(when, RESOURCES[what][1], name))


def get(objects, rest):
    collection, _, api_version, _ = RESOURCES[rest[0]]
    if rest[1:2] == ["-l"]:
        key, _, value = rest[2].partition("=")
        items = [item for path, item in sorted(objects.items()) if path.startswith(collection + "/") and
                 (item["metadata"].get("labels") or {}).get(key) == value]
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}))
        return
    if rest[2:] != ["-o", "json"]:
        fail("fake kubectl: unexpected get {}".format(rest))
    found = objects.get(collection + "/" + rest[1])
    if found is None:
        missing(rest[0], rest[1])
    print(json.dumps(found))


def write(state, objects, verb, rest):
    """`create|replace -f - [-o json]` of the object on stdin, as the API server decides it."""
    if rest not in (["-f", "-"], ["-f", "-", "-o", "json"]):
        fail("fake kubectl: unexpected {} {}".format(verb, rest))
    document = json.loads(sys.stdin.read())
    collection = KINDS.get(document.get("kind"))
    metadata = document.get("metadata") or {}
    name = metadata.get("name")
    if collection is None or document.get("apiVersion") != RESOURCES[collection][2] or not name or \
            metadata.get("namespace", NAMESPACE) != NAMESPACE:
        fail("fake kubectl: not a kube-system ConfigMap or Lease: {}".format(json.dumps(document)[:200]))
    path, stored = collection + "/" + name, objects.get(collection + "/" + name)
    message = '{} "{}"'.format(RESOURCES[collection][1], name)
    if verb == "create" and stored is not None:
        fail('Error from server (AlreadyExists): error when creating "STDIN": {} already exists'.format(message))
    if verb == "create" and metadata.get("resourceVersion"):
        fail('The {} "{}" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be empty'.format(
            document["kind"], name))
    if verb == "replace" and stored is None:
        missing(collection, name, 'error when replacing "STDIN": ')
    if verb == "replace" and metadata.get("resourceVersion") not in (None, stored["metadata"]["resourceVersion"]):
        fail('Error from server (Conflict): error when replacing "STDIN": Operation cannot be fulfilled on {} '
             '"{}": the object has been modified; please apply your changes to the latest version and try '
             'again'.format(RESOURCES[collection][1], name))
    state["resource_version"] = state.get("resource_version", 1000) + 1
    document["metadata"] = dict(metadata, namespace=NAMESPACE, resourceVersion=str(state["resource_version"]))
    objects[path] = document
    if rest[-2:] == ["-o", "json"]:
        print(json.dumps(document))
    else:
        print("{}/{} {}".format(SHORT[collection], name, "created" if verb == "create" else "replaced"))


def etcd_exec(rest, cluster):
    """`exec etcd-NODE -- etcdctl FLAGS member list -w json | member remove HEX`."""
    pod, command = rest[0], rest[2:]
    if rest[1:2] != ["--"] or command[:1] != ["etcdctl"] or command[1:5] != ETCDCTL_FLAGS:
        fail("fake kubectl: exec {}: not etcdctl with the etcd Pod's endpoint and certificates: {}".format(pod, rest))
    request = command[5:]
    with cluster() as state:
        members = state.setdefault("etcd_members", [])
        if not any("etcd-" + member["name"] == pod for member in members):
            fail('Error from server (NotFound): pods "{}" not found'.format(pod))
        if request == ["member", "list", "-w", "json"]:
            print(json.dumps({"header": {"cluster_id": 14841639068965178418, "member_id": int(members[0]["id"], 16),
                                         "raft_term": 2},
                              "members": [{"ID": int(member["id"], 16), "name": member["name"],
                                           "peerURLs": member["peer_urls"],
                                           "clientURLs": [url.replace(":2380", ":2379")
                                                          for url in member["peer_urls"]]}
                                          for member in members]}))
            return
        if request[:2] != ["member", "remove"] or len(request) != 3:
            fail("fake etcdctl: unexpected arguments {}".format(request))
        kept = [member for member in members if int(member["id"], 16) != int(request[2], 16)]
        if len(kept) == len(members):
            fail("Error: etcdserver: member not found\ncommand terminated with exit code 1")
        state["etcd_members"] = kept
    print("Member {} removed from cluster cdf818194e3a8c32".format(request[2]))
