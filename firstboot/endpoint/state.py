"""The token endpoint's durable state: one SQLite row per node, shared with `pi-image approve` and `pi-image status`.

Only public facts are stored: the node's state, the *id* of its current bootstrap token (never the secret) and the
generation it was issued to, the generation that joined (a credential joins once), what the node last reported.
The database lives in a 0700 directory; WAL mode lets the CLI read and write while the server runs.

Where: <the directory holding tokend.json>/state (default_state_dir), for `pi-image token-server|approve|status
--cluster DIR` (DIR/state) as for the shipped pi-image-tokend unit (/etc/pi-image/cluster/state).
"""

import json
import os
import sqlite3
import threading
import time

PENDING = "pending"
APPROVED = "approved"
TOKEN_ISSUED = "token-issued"
JOINED = "joined"
FAILED = "failed"

DATABASE_NAME = "tokend.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    approved INTEGER NOT NULL DEFAULT 0,
    replace_allowed INTEGER NOT NULL DEFAULT 0,
    token_id TEXT,
    token_issued_at REAL,
    generation INTEGER,
    joined_generation INTEGER,
    address TEXT,
    facts TEXT,
    last_report TEXT,
    last_error TEXT,
    updated_at REAL NOT NULL
)
"""
_COLUMNS = ("name", "state", "approved", "replace_allowed", "token_id", "token_issued_at", "generation",
            "joined_generation", "address", "facts", "last_report", "last_error", "updated_at")
# Columns added since the first release, with their types: a database an older endpoint made gains them on open.
_ADDED_COLUMNS = (("generation", "INTEGER"), ("joined_generation", "INTEGER"))


def default_state_dir(config_path):
    """The state directory next to tokend.json: DIR/state for a cluster directory DIR."""
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), "state")


def database_path(state_dir):
    """Where the nodes table lives in `state_dir` (it exists once an endpoint or `pi-image approve` wrote there)."""
    return os.path.join(state_dir, DATABASE_NAME)


class NodeStore(object):
    """Thread-safe access to the nodes table of `<state_dir>/tokend.db`."""

    def __init__(self, state_dir, clock=time.time):
        if not os.path.isdir(state_dir):
            os.makedirs(state_dir, mode=0o700)
        path = database_path(state_dir)
        if not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(nodes)")}
        for column, kind in _ADDED_COLUMNS:
            if column not in present:
                self._db.execute("ALTER TABLE nodes ADD COLUMN {} {}".format(column, kind))

    def close(self):
        with self._lock:
            self._db.close()

    def get(self, name):
        """The node's row as a dict (facts decoded), or None."""
        with self._lock:
            row = self._db.execute("SELECT {} FROM nodes WHERE name = ?".format(", ".join(_COLUMNS)),
                                   (name,)).fetchone()
        return _row_dict(row) if row else None

    def all(self):
        """Every node's row, by name."""
        with self._lock:
            rows = self._db.execute("SELECT {} FROM nodes ORDER BY name".format(", ".join(_COLUMNS))).fetchall()
        return [_row_dict(row) for row in rows]

    def update(self, name, **fields):
        """Create or change a node's row; `facts` may be given as a dict."""
        if "facts" in fields and not isinstance(fields["facts"], (str, type(None))):
            fields["facts"] = json.dumps(fields["facts"], sort_keys=True)
        fields["updated_at"] = self._clock()
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise KeyError("unknown node fields: {}".format(sorted(unknown)))
        update = ("UPDATE nodes SET {} WHERE name = ?".format(", ".join(n + " = ?" for n in sorted(fields))),
                  [fields[n] for n in sorted(fields)] + [name])
        row = dict(fields, name=name, state=fields.get("state", PENDING))
        insert = ("INSERT INTO nodes ({}) VALUES ({})".format(", ".join(sorted(row)), ", ".join("?" * len(row))),
                  [row[n] for n in sorted(row)])
        # One statement (one implicit transaction) per write, not BEGIN/INSERT/UPDATE/COMMIT: each statement runs
        # with the interpreter lock released, and under load every re-acquisition made the threads queued on
        # self._lock wait longer. (No UPSERT: Ubuntu 18.04's SQLite 3.22 does not have it.)
        with self._lock:
            if self._db.execute(*update).rowcount:
                return
            try:
                self._db.execute(*insert)
            except sqlite3.IntegrityError:  # `pi-image approve` inserted the row in between
                self._db.execute(*update)

    def approve(self, name, replace=False):
        """Let `name` join (and, with `replace`, take over a Ready node of that name once)."""
        row = self.get(name)
        changes = {"approved": 1}
        if replace:
            changes["replace_allowed"] = 1
        if row is None or row["state"] == PENDING:
            changes["state"] = APPROVED
        self.update(name, **changes)


def _row_dict(row):
    record = dict(zip(_COLUMNS, row))
    record["facts"] = json.loads(record["facts"]) if record["facts"] else {}
    return record
