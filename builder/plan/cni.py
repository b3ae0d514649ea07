"""The flannel CNI manifest a control-plane image applies at first boot, with the cluster's pod subnet.

The manifest is upstream's file, pinned by tag (`data/cni/kube-flannel.yml`, see its header). The only thing that
differs per cluster is the `Network` of `net-conf.json` in the `kube-flannel-cfg` ConfigMap, so that one block is
edited in the original text rather than re-dumping the YAML: the result stays byte-identical to upstream apart from
that value, which keeps it easy to diff against a new release. The edit is then checked by parsing.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

import yaml

from .. import DATA_DIR

FLANNEL_MANIFEST = DATA_DIR / "cni" / "kube-flannel.yml"
FLANNEL_VERSION = "v0.28.9"  # the tag of ghcr.io/flannel-io/flannel in FLANNEL_MANIFEST (a test checks it)
CONFIG_MAP = "kube-flannel-cfg"
NET_CONF = "net-conf.json"

# `  net-conf.json: |` and the literal block under it (lines indented deeper than the key, or blank).
_NET_CONF_BLOCK = re.compile(r"^(?P<indent> *)net-conf\.json: \|\n(?P<body>(?:(?:(?P=indent) +\S.*)?\n)*)",
                             re.MULTILINE)


def flannel_manifest(pod_subnet: str) -> bytes:
    """The pinned flannel manifest with its pod network set to `pod_subnet` (an IPv4 CIDR such as 10.244.0.0/16)."""
    return with_pod_network(FLANNEL_MANIFEST.read_bytes(), pod_subnet)


def with_pod_network(manifest: bytes, pod_subnet: str) -> bytes:
    """`manifest` with the `Network` of the kube-flannel-cfg ConfigMap's net-conf.json set to `pod_subnet`.

    Raises ValueError if `pod_subnet` is not an IPv4 network (flannel's `Network` is IPv4; IPv6 has its own key) or
    if the manifest does not hold exactly one such ConfigMap with a net-conf.json block that can be edited in place.
    """
    try:
        if "/" not in pod_subnet:  # a bare address would be a /32: no room for one node, let alone a cluster
            raise ValueError("no prefix length")
        network = str(ipaddress.IPv4Network(pod_subnet))
    except ValueError as err:
        raise ValueError(f"pod subnet {pod_subnet!r}: not an IPv4 network like 10.244.0.0/16 ({err})") from None
    text = manifest.decode("utf-8")
    documents = list(yaml.safe_load_all(text))
    config = _net_conf(documents)
    config["Network"] = network
    new_conf = json.dumps(config, indent=2) + "\n"  # upstream's layout: two-space indent, `"key": value`

    blocks = list(_NET_CONF_BLOCK.finditer(text))
    if len(blocks) != 1 or not blocks[0]["body"].strip():
        raise ValueError(f"flannel manifest: expected one non-empty '{NET_CONF}: |' block, found {len(blocks)}")
    block = blocks[0]
    body = block["body"].rstrip("\n") + "\n"  # trailing blank lines are not part of the value: keep them as they are
    first_line = body.lstrip("\n")
    body_indent = first_line[:len(first_line) - len(first_line.lstrip(" "))]  # which YAML's literal style uses
    new_body = "".join(body_indent + line + "\n" for line in new_conf.splitlines())
    start, end = block.start("body"), block.start("body") + len(body)
    edited = text[:start] + new_body + text[end:]

    _config_map(documents)["data"][NET_CONF] = new_conf
    if list(yaml.safe_load_all(edited)) != documents:
        raise ValueError(f"flannel manifest: editing {NET_CONF} in place changed more than its Network")
    return edited.encode("utf-8")


def _config_map(documents: list[Any]) -> dict[str, Any]:
    """The one kube-flannel-cfg ConfigMap among the parsed `documents`."""
    found = [doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == "ConfigMap"
             and isinstance(doc.get("metadata"), dict) and doc["metadata"].get("name") == CONFIG_MAP]
    if len(found) != 1:
        raise ValueError(f"flannel manifest: expected one ConfigMap {CONFIG_MAP}, found {len(found)}")
    return found[0]


def _net_conf(documents: list[Any]) -> dict[str, Any]:
    """The parsed net-conf.json of the kube-flannel-cfg ConfigMap."""
    data = _config_map(documents).get("data")
    if not isinstance(data, dict) or not isinstance(data.get(NET_CONF), str):
        raise ValueError(f"flannel manifest: ConfigMap {CONFIG_MAP} has no {NET_CONF}")  # noqa: TRY004 - bad data
    try:
        config = json.loads(data[NET_CONF])
    except json.JSONDecodeError as err:
        raise ValueError(f"flannel manifest: {CONFIG_MAP} {NET_CONF} is not JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"flannel manifest: {CONFIG_MAP} {NET_CONF} is not a JSON object")  # noqa: TRY004
    return config
