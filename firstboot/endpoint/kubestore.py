"""The endpoint's state in the Kubernetes API, where several masters serve joins: one truth for all of them.

A KubeStore has NodeStore's interface (get, all, update, approve, close, shared_value, share_value). Each node's row
is one ConfigMap in kube-system, `pi-image-node-<name>` labelled ROW_LABEL, its row as JSON under data.row (only public
facts, as in SQLite: a token's id, never its secret). Every write is a compare-and-swap on the resourceVersion it
read: a write another master made in between makes `kubectl replace` fail with Conflict, and the change is applied
again to the row as it is now; a new row is created, and AlreadyExists (another master created it first) is read
again the same way. A write starts from the ConfigMap as this master last read or wrote it (one kubectl call when no
other master wrote since; reads are always fresh). all() is one `kubectl get configmaps -l`. Facts about the whole
cluster (when the kubeadm-certs Secret was uploaded) live in the ConfigMap SHARED_NAME the same way.

Before the API server exists (the first master's `kubeadm init`) the agent writes its rows into the SQLite state of
its card; each master's endpoint moves those rows into the API once (migrate_local_state: MIGRATED_MARKER in the state
directory says it is done), a row the API already has only gaining the phases and facts it lacked.
"""

import json
import logging
import os
import threading
import time

from ..nodeconfig import write_private
from . import state
from .kube import ClusterError
from .objects import config_map

log = logging.getLogger("pi-image.tokend")

ROW_PREFIX = "pi-image-node-"
ROW_LABEL = ("pi-image/state", "node")
SHARED_NAME = "pi-image-cluster"
SHARED_LABEL = ("pi-image/state", "cluster")
MIGRATED_MARKER = "migrated-to-api"
CAS_ATTEMPTS = 20  # writes of one row racing this often mean something else is wrong
MIGRATION_RETRY_SECONDS = 30.0


class KubeStore(object):
    """Nodes' rows as ConfigMaps, written with resourceVersion compare-and-swap (see the module docstring)."""

    def __init__(self, objects, clock=time.time):
        self.objects = objects
        self._clock = clock
        self._seen = {}  # ConfigMap name -> the document as last read or written here (its resourceVersion)
        self._seen_lock = threading.Lock()

    def close(self):
        """Nothing to close: every call is its own kubectl."""

    def get(self, name):
        """The node's row as a dict (facts and phases decoded), or None."""
        found = self._read(ROW_PREFIX + name)
        return _row(found) if found else None

    def all(self):
        """Every node's row, by name (one kubectl call)."""
        rows = [_row(item) for item in self.objects.list("configmaps", "=".join(ROW_LABEL))]
        return sorted((row for row in rows if row), key=lambda row: row["name"])

    def update(self, name, **fields):
        """Create or change a node's row (NodeStore.update's fields); a concurrent write is re-read, not lost."""
        state.changed_row(None, name, fields, 0)  # unknown fields fail before anything is written
        self._change(ROW_PREFIX + name, ROW_LABEL, lambda data: _row_data(state.changed_row(
            _decoded_row(data), name, dict(fields), self._clock())))

    def approve(self, name, replace=False):
        """Let `name` join (and, with `replace`, take over a Ready node of that name once)."""
        self._change(ROW_PREFIX + name, ROW_LABEL, lambda data: _row_data(state.changed_row(
            _decoded_row(data), name, state.approval_changes(_decoded_row(data), replace), self._clock())))

    def shared_value(self, key):
        """A fact about the whole cluster every master sees (SHARED_NAME's data), None if unknown."""
        found = self._read(SHARED_NAME)
        value = ((found or {}).get("data") or {}).get(key)
        return json.loads(value) if value else None

    def share_value(self, key, value):
        """Keep `value` (JSON) as the cluster's `key`."""
        self._change(SHARED_NAME, SHARED_LABEL, lambda data: dict(data, **{key: json.dumps(value)}))

    def _change(self, name, label, changed):
        """Write `changed(data)` over the ConfigMap's data, compare-and-swap: re-read and re-apply on a conflict."""
        with self._seen_lock:
            found = self._seen.get(name)
        for _ in range(CAS_ATTEMPTS):
            found = found or self._read(name)
            data = dict((found or {}).get("data") or {})
            document = config_map(name, dict([label]), changed(data),
                                  found["metadata"]["resourceVersion"] if found else None)
            written = self.objects.replace(document) if found else self.objects.create(document)
            if written is not None:
                self._remember(name, written)
                return
            found = None
        raise ClusterError("configmap {}: {} writes in a row lost to other masters' writes".format(
            name, CAS_ATTEMPTS))

    def _read(self, name):
        found = self.objects.get("configmap", name)
        self._remember(name, found)
        return found

    def _remember(self, name, document):
        with self._seen_lock:
            if document is None:
                self._seen.pop(name, None)
            else:
                self._seen[name] = document

    def migrate_local_state(self, state_dir):
        """Move the SQLite rows of `state_dir` into the API once (see the module docstring); returns how many, None
        when there was nothing to do. A ClusterError leaves the marker unwritten: the next attempt does it all."""
        marker = os.path.join(state_dir, MIGRATED_MARKER)
        if os.path.exists(marker) or not os.path.exists(state.database_path(state_dir)):
            return None
        local = state.NodeStore(state_dir)
        try:
            rows = local.all()
        finally:
            local.close()
        for row in rows:
            self._change(ROW_PREFIX + row["name"], ROW_LABEL, lambda data, row=row: _row_data(_merged(
                _decoded_row(data), row)))
        write_private(marker, json.dumps({"rows": [row["name"] for row in rows], "at": self._clock()}) + "\n")
        log.info("moved %d node rows of %s into the Kubernetes API", len(rows), state_dir)
        return len(rows)

    def migrate_until_done(self, state_dir, retry_seconds=MIGRATION_RETRY_SECONDS):
        """migrate_local_state now, and while the API server cannot be reached again every `retry_seconds` in the
        background (the endpoint serves meanwhile)."""
        try:
            self.migrate_local_state(state_dir)
        except ClusterError as err:
            log.warning("cannot move the local state into the Kubernetes API yet (%s): trying again in %.0f s", err,
                        retry_seconds)
            retry = threading.Timer(retry_seconds, self.migrate_until_done, (state_dir, retry_seconds))
            retry.daemon = True
            retry.start()


def _merged(current, local):
    """`local` where the API has no row yet; else the API's row, gaining only the phases and facts it lacked."""
    if current is None:
        return dict(local)
    merged = dict(current)
    for column in ("phases", "facts"):
        merged[column] = dict(local.get(column) or {}, **(current.get(column) or {}))
    return merged


def _decoded_row(data):
    try:
        row = json.loads(data["row"]) if "row" in data else None
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _row_data(row):
    return {"row": json.dumps(row, sort_keys=True)}


def _row(document):
    """The row a ConfigMap holds, its columns all present (a row written by a newer endpoint loses nothing)."""
    row = _decoded_row(document.get("data") or {})
    if row is None or not isinstance(row.get("name"), str):
        return None
    return state.changed_row(row, row["name"], {}, row.get("updated_at"))
