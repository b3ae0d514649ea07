"""The token endpoint's configuration: `tokend.json`, written by `pi-image` from the cluster directory.

Keys (relative paths are relative to the file's own directory):

    api_server           "HOST:6443"      handed to nodes for `kubeadm join`
    node_subnet          "CIDR"           handed to nodes for choosing their node-ip
    kubernetes_version   "1.31"           the minor images are built for (informational; the cluster decides)
    listen               "ADDR:PORT"      where to serve HTTPS
    approval_mode        bool             unknown nodes wait as "pending" instead of being refused
    nodes                {name: gen}      the inventory: nodes allowed to join without approval, each with the
                                          generation of its newest build (only that build's credential is valid);
                                          a plain list of names (older files) means generation 1 for each
    inventory_copy       bool             this file is a copy made when a control-plane card was built: an
                                          inventory pushed with `pi-image cluster sync` replaces its `nodes`
    enrollment_key_file  path             hex enrollment key (node credentials derive from it)
    tls_cert_file        path             the endpoint's certificate (PEM), pinned by fingerprint in images
    tls_key_file         path             its private key (PEM)
    ca_cert_file         path             the cluster CA, for the discovery hash (/etc/kubernetes/pki/ca.crt)
    kubeconfig           path             admin kubeconfig for kubeadm/kubectl (/etc/kubernetes/admin.conf)
    control_planes       [name, ...]      the inventory's control planes (absent: one, this endpoint's own card);
                                          only they get the certificate key, and with more than one the state
                                          lives in the Kubernetes API (kubestore.py), shared by every master
    certificate_key_file path             kubeadm's --certificate-key (64 hex), handed to joining control planes
    node_name            "NAME"           this master's node name (default: the host name): the holder of the
                                          per-node Leases and the etcd member asked to remove a stale one

The file is re-read when it changes, so nodes added to the inventory (or built again) can join without a restart;
a change that does not parse is ignored (and logged once) and the endpoint goes on with what it had.

Where tokend.json is a copy (the one a control-plane image carries, `inventory_copy`), `pi-image cluster sync DIR`
pushes the inventory's `nodes` to the endpoint (POST /v1/admin/inventory), which keeps it in its state directory
(SYNCED_INVENTORY) and prefers it to the copy's `nodes` from then on. An endpoint run from the cluster directory
itself reads the inventory there and refuses a push. A pushed file that cannot be read is logged and ignored.
"""

import json
import logging
import os
import re
import socket
import threading

from ..nodeconfig import write_private

REQUIRED_KEYS = ("api_server", "node_subnet", "listen", "nodes", "enrollment_key_file", "tls_cert_file",
                 "tls_key_file", "ca_cert_file", "kubeconfig")

log = logging.getLogger("pi-image.tokend")

SYNCED_INVENTORY = "inventory.json"

# The generation of a node the inventory does not list (one an operator approved): its first build.
UNLISTED_GENERATION = 1
CERTIFICATE_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


class SettingsError(Exception):
    """tokend.json is missing, unreadable or incomplete; the message names the file and the key."""


class ServerSettings(object):
    """tokend.json plus command-line overrides (a key given in `overrides` wins over the file)."""

    def __init__(self, path, overrides=None):
        self.path = os.path.abspath(path)
        self._overrides = {key: value for key, value in (overrides or {}).items() if value is not None}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._mtime = None
        self._ignored_mtime = None
        self._values = {}
        self._generations = {}
        self._synced_path = None
        self._reload_if_changed()
        self.enrollment_key = self._read_enrollment_key()

    def use_synced_inventory(self, state_dir):
        """Prefer the inventory `pi-image cluster sync` pushed (kept in `state_dir`) to tokend.json's `nodes`."""
        self._synced_path = os.path.join(state_dir, SYNCED_INVENTORY)
        self._mtime = None
        self._reload_if_changed()

    def replace_nodes(self, nodes):
        """Keep `nodes` ({name: generation}, checked) as the inventory from now on (SYNCED_INVENTORY, 0600).
        A node both know keeps the higher generation: a push that arrives after a newer one never takes a card back.
        SettingsError where this endpoint's tokend.json is no copy (it reads the cluster directory's own)."""
        if not self._values.get("inventory_copy") or not self._synced_path:
            raise SettingsError("{} is the cluster directory's own inventory, not a card's copy: nothing to "
                                "sync (add and remove nodes there)".format(self.path))
        generations = self._node_generations(nodes)
        with self._write_lock:
            self._reload_if_changed()
            stored = self._generations
            generations = {name: max(generation, stored.get(name, generation))
                           for name, generation in generations.items()}
            write_private(self._synced_path, json.dumps({"nodes": generations}, sort_keys=True) + "\n")
            self._reload_if_changed()
        return len(generations)

    def _reload_if_changed(self):
        try:
            mtime = (os.stat(self.path).st_mtime_ns, _mtime_or_none(self._synced_path))
        except OSError as err:
            if self._mtime is not None:
                return  # keep serving with what we have; the file is being replaced
            raise SettingsError("{}: cannot read: {}".format(self.path, err.strerror)) from None
        with self._lock:
            if mtime in (self._mtime, self._ignored_mtime):
                return
            try:
                values, generations = self._load()
            except SettingsError as err:
                if self._mtime is None:
                    raise
                self._ignored_mtime = mtime
                log.warning("%s; going on with the settings read before", err)
                return
            self._values, self._generations, self._mtime = values, generations, mtime

    def _load(self):
        try:
            with open(self.path) as handle:
                values = json.load(handle)
        except OSError as err:
            raise SettingsError("{}: cannot read: {}".format(self.path, err.strerror)) from None
        except ValueError as err:
            raise SettingsError("{}: not valid JSON: {}".format(self.path, err)) from None
        if not isinstance(values, dict):
            raise SettingsError("{}: not a JSON object".format(self.path))
        values.update(self._overrides)
        missing = [key for key in REQUIRED_KEYS if key not in values]
        if missing:
            raise SettingsError("{}: missing key(s) {}".format(self.path, ", ".join(missing)))
        control_planes = values.get("control_planes", [])
        if not isinstance(control_planes, list) or not all(isinstance(name, str) for name in control_planes):
            raise SettingsError("{}: 'control_planes' must be a list of node names".format(self.path))
        nodes = values["nodes"]
        if values.get("inventory_copy") and self._synced_path and os.path.exists(self._synced_path):
            try:
                with open(self._synced_path) as handle:
                    synced = json.load(handle)["nodes"]
                self._node_generations(synced)
                nodes = synced
            except (OSError, ValueError, KeyError, TypeError, SettingsError) as err:
                log.error("%s: unusable (%s); using %s's nodes until `pi-image cluster sync` pushes them again",
                          self._synced_path, err, self.path)
        return values, self._node_generations(nodes)

    def _node_generations(self, nodes):
        if isinstance(nodes, list) and all(isinstance(name, str) for name in nodes):
            return dict.fromkeys(nodes, UNLISTED_GENERATION)
        if isinstance(nodes, dict) and all(isinstance(g, int) and not isinstance(g, bool) and g >= 0
                                           for g in nodes.values()):
            return dict(nodes)
        raise SettingsError("{}: 'nodes' must map each node name to its generation (a whole number >= 0)".format(
            self.path))

    def __getattr__(self, key):
        if key.startswith("_") or key not in REQUIRED_KEYS + ("approval_mode", "kubernetes_version"):
            raise AttributeError(key)
        return self._values.get(key)

    def file(self, key):
        """The absolute path a *_file key names."""
        return os.path.join(os.path.dirname(self.path), os.path.expanduser(self._values[key]))

    def known_nodes(self):
        """Inventory node names, re-read when tokend.json changes."""
        self._reload_if_changed()
        return frozenset(self._generations)

    def generation(self, name):
        """The generation whose credential `name` must sign with: its newest build's (UNLISTED_GENERATION if the
        inventory does not list it)."""
        self._reload_if_changed()
        return self._generations.get(name, UNLISTED_GENERATION)

    def control_planes(self):
        """The control planes' node names (empty for a cluster of one: its only master never joins)."""
        self._reload_if_changed()
        return frozenset(self._values.get("control_planes") or ())

    def several_control_planes(self):
        """True when the endpoint runs on each of several masters: its state must then live in the API."""
        return len(self.control_planes()) > 1

    def node_name(self):
        """This master's node name: tokend.json's (or --node-name) `node_name`, else the host's short name."""
        return self._values.get("node_name") or socket.gethostname().split(".")[0]

    def certificate_key(self):
        """kubeadm's certificate key (64 hex) from `certificate_key_file`; SettingsError naming the file when there is
        none or it is not a key."""
        if not self._values.get("certificate_key_file"):
            raise SettingsError("{}: no certificate_key_file: this endpoint cannot let a control plane join".format(
                self.path))
        path = self.file("certificate_key_file")
        try:
            with open(path) as handle:
                key = handle.read().strip()
        except OSError as err:
            raise SettingsError("{}: cannot read the certificate key: {}".format(path, err.strerror)) from None
        if not CERTIFICATE_KEY_RE.match(key):
            raise SettingsError("{}: not a certificate key (64 hex characters)".format(path))
        return key

    def ca_cert_pem(self):
        """The cluster CA certificate (PEM text)."""
        with open(self.file("ca_cert_file")) as handle:
            return handle.read()

    def _read_enrollment_key(self):
        path = self.file("enrollment_key_file")
        try:
            with open(path) as handle:
                return bytes.fromhex(handle.read().strip())
        except (OSError, ValueError) as err:
            raise SettingsError("{}: cannot read the enrollment key: {}".format(path, err)) from None


def _mtime_or_none(path):
    """`path`'s modification time in ns, None when there is no such file (or no path)."""
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None
