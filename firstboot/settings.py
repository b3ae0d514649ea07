"""The token endpoint's configuration: `tokend.json`, written by `pi-image` from the cluster directory.

Keys (relative paths are relative to the file's own directory):

    api_server           "HOST:6443"      handed to nodes for `kubeadm join`
    node_subnet          "CIDR"           handed to nodes for choosing their node-ip
    kubernetes_version   "1.31"           the minor images are built for (informational; the cluster decides)
    listen               "ADDR:PORT"      where to serve HTTPS
    approval_mode        bool             unknown nodes wait as "pending" instead of being refused
    nodes                [names]          the inventory: nodes allowed to join without approval
    enrollment_key_file  path             hex enrollment key (node credentials derive from it)
    tls_cert_file        path             the endpoint's certificate (PEM), pinned by fingerprint in images
    tls_key_file         path             its private key (PEM)
    ca_cert_file         path             the cluster CA, for the discovery hash (/etc/kubernetes/pki/ca.crt)
    kubeconfig           path             admin kubeconfig for kubeadm/kubectl (/etc/kubernetes/admin.conf)

The file is re-read when it changes, so nodes added to the inventory can join without a restart.
"""

import json
import os
import threading

REQUIRED_KEYS = ("api_server", "node_subnet", "listen", "nodes", "enrollment_key_file", "tls_cert_file",
                 "tls_key_file", "ca_cert_file", "kubeconfig")


class SettingsError(Exception):
    """tokend.json is missing, unreadable or incomplete; the message names the file and the key."""


class ServerSettings(object):
    """tokend.json plus command-line overrides (a key given in `overrides` wins over the file)."""

    def __init__(self, path, overrides=None):
        self.path = os.path.abspath(path)
        self._overrides = {key: value for key, value in (overrides or {}).items() if value is not None}
        self._lock = threading.Lock()
        self._mtime = None
        self._values = {}
        self._nodes = frozenset()
        self._reload_if_changed()
        self.enrollment_key = self._read_enrollment_key()

    def _reload_if_changed(self):
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError as err:
            if self._mtime is not None:
                return  # keep serving with what we have; the file is being replaced
            raise SettingsError("{}: cannot read: {}".format(self.path, err.strerror))
        with self._lock:
            if mtime == self._mtime:
                return
            try:
                with open(self.path) as handle:
                    values = json.load(handle)
            except ValueError as err:
                if self._mtime is not None:
                    return
                raise SettingsError("{}: not valid JSON: {}".format(self.path, err))
            values.update(self._overrides)
            missing = [key for key in REQUIRED_KEYS if key not in values]
            if missing:
                raise SettingsError("{}: missing key(s) {}".format(self.path, ", ".join(missing)))
            self._values, self._nodes, self._mtime = values, frozenset(values["nodes"]), mtime

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
        return self._nodes

    def ca_cert_pem(self):
        with open(self.file("ca_cert_file")) as handle:
            return handle.read()

    def _read_enrollment_key(self):
        path = self.file("enrollment_key_file")
        try:
            with open(path) as handle:
                return bytes.fromhex(handle.read().strip())
        except (OSError, ValueError) as err:
            raise SettingsError("{}: cannot read the enrollment key: {}".format(path, err))
