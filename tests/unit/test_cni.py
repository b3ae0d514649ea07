"""The pinned flannel manifest is upstream's, runs on arm64 and amd64, and takes the cluster's pod subnet."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest
import yaml

from builder.plan.cni import (
    FLANNEL_MANIFEST,
    FLANNEL_VERSION,
    flannel_manifest,
    with_pod_network,
)

UPSTREAM_NETWORK = "10.244.0.0/16"


def documents(manifest: bytes) -> list[dict[str, Any]]:
    """The manifest's YAML documents, by an independent parser."""
    return [doc for doc in yaml.safe_load_all(manifest) if doc is not None]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def net_conf(manifest: bytes) -> dict[str, Any]:
    return json.loads(one(documents(manifest), "ConfigMap", "kube-flannel-cfg")["data"]["net-conf.json"])


def pod_spec(manifest: bytes) -> dict[str, Any]:
    return one(documents(manifest), "DaemonSet", "kube-flannel-ds")["spec"]["template"]["spec"]


def schedulable(spec: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a node with `labels` passes the pod's nodeSelector and required node affinity."""
    if any(labels.get(key) != value for key, value in spec.get("nodeSelector", {}).items()):
        return False
    required = spec.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is None:
        return True

    def holds(expr: dict[str, Any]) -> bool:
        value, op = labels.get(expr["key"]), expr["operator"]
        return {"In": value in expr.get("values", []), "NotIn": value not in expr.get("values", []),
                "Exists": value is not None, "DoesNotExist": value is None}[op]

    return any(all(holds(expr) for expr in term.get("matchExpressions", []))
               for term in required["nodeSelectorTerms"])


def test_the_data_file_is_upstream_byte_for_byte_below_its_header():
    text = FLANNEL_MANIFEST.read_bytes()
    header_end = text.index(b"\n---\n") + 1
    header, upstream = text[:header_end].decode(), text[header_end:]
    assert all(line.startswith("#") for line in header.splitlines())
    blob = re.search(r"blob: +([0-9a-f]{40})", header)[1]
    assert hashlib.sha1(b"blob %d\0" % len(upstream) + upstream).hexdigest() == blob  # = git hash-object
    assert re.search(r"tag: +(\S+)", header)[1] == FLANNEL_VERSION
    assert f"/flannel-io/flannel/{FLANNEL_VERSION}/Documentation/kube-flannel.yml" in header


def test_manifest_holds_the_namespace_the_config_map_and_the_daemon_set():
    docs = documents(FLANNEL_MANIFEST.read_bytes())
    assert one(docs, "Namespace", "kube-flannel")
    assert one(docs, "ConfigMap", "kube-flannel-cfg")["metadata"]["namespace"] == "kube-flannel"
    assert one(docs, "DaemonSet", "kube-flannel-ds")["metadata"]["namespace"] == "kube-flannel"


def test_every_image_is_pinned_and_flannel_is_the_pinned_version():
    spec = pod_spec(FLANNEL_MANIFEST.read_bytes())
    images = [c["image"] for c in spec["initContainers"] + spec["containers"]]
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert "/" in name and "/" not in tag and tag not in ("", "latest"), image
    flannel_tags = {i.rpartition(":")[2] for i in images if i.rpartition(":")[0].endswith("/flannel")}
    assert flannel_tags == {FLANNEL_VERSION}
    assert any("/flannel-cni-plugin:v" in image for image in images)


@pytest.mark.parametrize("arch", ["arm64", "amd64"])
def test_daemon_set_schedules_on_linux_nodes_of_both_architectures(arch):
    spec = pod_spec(FLANNEL_MANIFEST.read_bytes())
    assert schedulable(spec, {"kubernetes.io/os": "linux", "kubernetes.io/arch": arch})
    assert not schedulable(spec, {"kubernetes.io/os": "windows", "kubernetes.io/arch": arch})


@pytest.mark.parametrize("subnet", ["10.244.0.0/16", "10.32.0.0/16"])
def test_the_pod_subnet_becomes_flannels_network_and_vxlan_stays(subnet):
    config = net_conf(flannel_manifest(subnet))
    assert config["Network"] == subnet
    assert config["Backend"]["Type"] == "vxlan"


def test_rendering_is_deterministic():
    assert flannel_manifest("10.32.0.0/16") == flannel_manifest("10.32.0.0/16")


def test_upstream_subnet_gives_back_the_data_file_unchanged():
    assert flannel_manifest(UPSTREAM_NETWORK) == FLANNEL_MANIFEST.read_bytes()


def test_only_the_network_changes():
    original, rendered = FLANNEL_MANIFEST.read_bytes(), flannel_manifest("10.32.0.0/16")

    def normalised(manifest: bytes) -> list[dict[str, Any]]:
        docs = documents(manifest)
        data = one(docs, "ConfigMap", "kube-flannel-cfg")["data"]
        data["net-conf.json"] = json.loads(data["net-conf.json"]) | {"Network": "NORMALISED"}
        return docs

    assert normalised(rendered) == normalised(original)
    assert len(original.splitlines()) == len(rendered.splitlines())
    changed = [(a, b) for a, b in zip(original.splitlines(), rendered.splitlines(), strict=True) if a != b]
    assert changed == [(b'      "Network": "10.244.0.0/16",', b'      "Network": "10.32.0.0/16",')]


@pytest.mark.parametrize("subnet", ["10.32.0.0", "10.32.0.1/16", "fd00:10:244::/56", "10.32.0.0/16\n---", ""])
def test_a_subnet_that_is_not_an_ipv4_network_is_refused(subnet):
    with pytest.raises(ValueError, match="pod subnet"):
        flannel_manifest(subnet)


def test_a_manifest_without_the_config_map_is_refused():
    original = FLANNEL_MANIFEST.read_bytes()
    manifest = original.replace(b"name: kube-flannel-cfg\n  namespace", b"name: other\n  namespace")
    assert manifest != original
    with pytest.raises(ValueError, match="expected one ConfigMap kube-flannel-cfg, found 0"):
        with_pod_network(manifest, "10.32.0.0/16")


def test_a_manifest_with_two_config_maps_is_refused():
    original = FLANNEL_MANIFEST.read_bytes()
    start = original.index(b"---\nkind: ConfigMap")
    config_map = original[start:original.index(b"---\n", start + 4)]
    with pytest.raises(ValueError, match="expected one ConfigMap kube-flannel-cfg, found 2"):
        with_pod_network(original + config_map, "10.32.0.0/16")
