"""Objects in kube-system through kubectl, with the API server's optimistic concurrency.

Every write names the resourceVersion it read: `kubectl replace -f -` of an object that changed since then fails with
Conflict, and `kubectl create -f -` of one that exists fails with AlreadyExists. Those two are answers, not errors
(create() and replace() return False: re-read and decide again); anything else kubectl says is a ClusterError.
Objects travel as JSON on stdin and back with `-o json`, so nothing of theirs is ever on a command line.
"""

import json

from .kube import ClusterError

NAMESPACE = "kube-system"
KUBECTL_TIMEOUT = 30  # seconds: a write the API server has not answered by then is a failure, not a wait


class KubeObjects(object):
    """get/list/create/replace/delete of `namespace`'s objects with the admin kubeconfig (kube.ClusterAdmin)."""

    def __init__(self, admin, namespace=NAMESPACE):
        self.admin = admin
        self.namespace = namespace

    def kubectl(self, *args, **options):
        """`kubectl -n NAMESPACE ARGS...` (a CommandResult)."""
        options.setdefault("timeout", KUBECTL_TIMEOUT)
        return self.admin.kubectl("-n", self.namespace, *args, **options)

    def get(self, kind, name):
        """The object as the API server has it (with its resourceVersion), or None when there is none."""
        result = self.kubectl("get", kind, name, "-o", "json")
        if not result.ok:
            if "(NotFound)" in result.stderr:
                return None
            raise ClusterError("cannot read {} {} (kubectl get): {}".format(kind, name, result.summary()))
        return _decoded(result, "kubectl get {} {}".format(kind, name))

    def list(self, kind, selector):
        """Every `kind` object whose labels match `selector` ("key=value"), in one call."""
        result = self.kubectl("get", kind, "-l", selector, "-o", "json")
        if not result.ok:
            raise ClusterError("cannot list {} (kubectl get -l {}): {}".format(kind, selector, result.summary()))
        items = _decoded(result, "kubectl get {} -l {}".format(kind, selector)).get("items")
        if not isinstance(items, list):
            raise ClusterError("kubectl get {} -l {} printed no item list".format(kind, selector))
        return items

    def create(self, document):
        """The object created (with its resourceVersion), or None when one of that name exists already."""
        return self._write("create", document, "(AlreadyExists)")

    def replace(self, document):
        """The object replaced (its new resourceVersion), or None when it changed since `document`'s
        resourceVersion was read (Conflict) or is gone (NotFound): read it again and decide again."""
        return self._write("replace", document, "(Conflict)", "(NotFound)")

    def delete(self, kind, name):
        """Delete the object; one that is gone already is fine."""
        result = self.kubectl("delete", kind, name)
        if not result.ok and "(NotFound)" not in result.stderr:
            raise ClusterError("cannot delete {} {} (kubectl delete): {}".format(kind, name, result.summary()))

    def _write(self, verb, document, *answers):
        document = dict(document, metadata=dict(document["metadata"], namespace=self.namespace))
        result = self.kubectl(verb, "-f", "-", "-o", "json", input_text=json.dumps(document))
        if result.ok:
            return _decoded(result, "kubectl " + verb)
        if any(answer in result.stderr for answer in answers):
            return None
        raise ClusterError("cannot {} {} {} (kubectl {}): {}".format(
            verb, document["kind"], document["metadata"]["name"], verb, result.summary()))


def _decoded(result, command):
    try:
        found = json.loads(result.stdout)
    except ValueError:
        raise ClusterError("{} printed no JSON: {}".format(command, result.summary())) from None
    if not isinstance(found, dict):
        raise ClusterError("{} printed no object".format(command))
    return found


def config_map(name, labels, data, resource_version=None):
    """A ConfigMap document (with the resourceVersion it replaces, for a compare-and-swap)."""
    metadata = {"name": name, "labels": labels}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
