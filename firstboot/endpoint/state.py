"""The token endpoint's durable state: one SQLite row per node, shared with `pi-image approve` and `pi-image status`.

Only public facts are stored: the node's state, the *id* of its current bootstrap token (never the secret) and the
generation it was issued to, the generation that joined (a credential joins once), what the node last reported and
its story (the phases it reached and when, on the endpoint's clock; its address, architecture, OS, card generation,
the fix of its last failure). The database lives in a 0700 directory; WAL mode lets the CLI read and write while the
server runs. A database an older endpoint made gains the newer columns when it is opened.

Where: <the directory holding tokend.json>/state (default_state_dir), for `pi-image token-server|approve|status
--cluster DIR` (DIR/state) as for the shipped pi-image-tokend unit (/etc/pi-image/cluster/state).
"""

import json
import os
import sqlite3
import threading
import time

from .. import protocol
from ..protocol import PHASES

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
            "joined_generation", "address", "facts", "last_report", "last_error", "updated_at", "phases", "fix",
            "card_generation", "installed_from")
# Columns added since the first release, with their types: a database an older endpoint made gains them on open.
_ADDED_COLUMNS = (("generation", "INTEGER"), ("joined_generation", "INTEGER"), ("phases", "TEXT"), ("fix", "TEXT"),
                  ("card_generation", "INTEGER"), ("installed_from", "TEXT"))
_JSON_COLUMNS = ("facts", "phases")
# What an operator sees of a row over the network (/v1/admin/status): never the token's id or when it was issued.
# (last_report is not among them: a failure's repeats last_error, any other report says no more than state and phases)
PUBLIC_COLUMNS = ("name", "state", "approved", "replace_allowed", "address", "facts", "phases", "installed_from",
                  "card_generation", "joined_generation", "last_error", "fix", "updated_at")
REDACTED_COLUMNS = ("last_error", "fix")  # texts that come from a failure: redacted again on the way out
STORY_FACTS = ("node_ip", "arch", "os")
INSTALLED_FROM = ("bundle", "network")
FACT_LIMIT = 200


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
        self._shared = {}
        self._db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self):
        """ALTER TABLE ADD COLUMN for each column an older endpoint's database lacks (another process opening it at
        the same moment may add one first: that is fine)."""
        for column, kind in _ADDED_COLUMNS:
            if column in {row[1] for row in self._db.execute("PRAGMA table_info(nodes)")}:
                continue
            try:
                self._db.execute("ALTER TABLE nodes ADD COLUMN {} {}".format(column, kind))
            except sqlite3.OperationalError:
                if column not in {row[1] for row in self._db.execute("PRAGMA table_info(nodes)")}:
                    raise

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
        """Create or change a node's row; `facts` and `phases` may be given as dicts."""
        for column in _JSON_COLUMNS:
            if column in fields and not isinstance(fields[column], (str, type(None))):
                fields[column] = json.dumps(fields[column], sort_keys=True)
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
        self.update(name, **approval_changes(self.get(name), replace))

    def shared_value(self, key):
        """A fact about the whole cluster (when the kubeadm-certs Secret was uploaded), None if unknown. Kept in memory:
        where the state is SQLite one endpoint serves the cluster, and after a restart the fact is simply unknown."""
        return self._shared.get(key)

    def share_value(self, key, value):
        """Keep `value` as the cluster's `key` (see shared_value)."""
        self._shared[key] = value


def approval_changes(row, replace):
    """The fields an operator's approval sets on `row` (None: a node never seen)."""
    changes = {"approved": 1}
    if replace:
        changes["replace_allowed"] = 1
    if row is None or row["state"] == PENDING:
        changes["state"] = APPROVED
    return changes


def changed_row(row, name, fields, now):
    """`row` (None: a new one) with `fields` applied as NodeStore.update applies them, as a dict like get()'s;
    KeyError for a field that is no column."""
    unknown = set(fields) - set(_COLUMNS)
    if unknown:
        raise KeyError("unknown node fields: {}".format(sorted(unknown)))
    changed = dict(dict.fromkeys(_COLUMNS), name=name, state=PENDING, approved=0, replace_allowed=0)
    changed.update(row or {})
    changed.update(fields, updated_at=now)
    for column in _JSON_COLUMNS:
        if isinstance(changed[column], str):
            try:
                changed[column] = json.loads(changed[column])
            except ValueError:
                changed[column] = {}
        changed[column] = changed[column] or {}
    return changed


def story_fields(story, now, facts=None):
    """The columns a node's story sets (see firstboot.client): its phases, moved onto the endpoint's clock (`now`
    minus the device's `sent_at`: a Pi has no RTC), how its runtime came, its card's generation, and its facts
    merged into `facts`. What does not fit (an unknown phase, a wrong type, a long text) is dropped: the story comes
    from the network."""
    if not isinstance(story, dict):
        return {}
    changes = {}
    phases, sent_at = story.get("phases"), story.get("sent_at")
    if isinstance(phases, dict):
        skew = now - sent_at if _is_number(sent_at) else 0.0
        changes["phases"] = {name: at + skew for name, at in phases.items() if name in PHASES and _is_number(at)}
    if story.get("installed_from") in INSTALLED_FROM:
        changes["installed_from"] = story["installed_from"]
    generation = story.get("generation")
    if isinstance(generation, int) and not isinstance(generation, bool) and 0 <= generation < 10 ** 9:
        changes["card_generation"] = generation
    merged = dict(facts or {})
    merged.update((key, story[key][:FACT_LIMIT]) for key in STORY_FACTS if isinstance(story.get(key), str))
    if merged != (facts or {}):
        changes["facts"] = merged
    return changes


def story_fix(story):
    """The fix a failed report's story names (capped), or None."""
    fix = story.get("fix") if isinstance(story, dict) else None
    return protocol.redact(fix[:FACT_LIMIT * 5]) if isinstance(fix, str) and fix else None


def public_row(row):
    """The part of a row anyone holding the admin credential may read over the network (its texts redacted)."""
    public = {column: row.get(column) for column in PUBLIC_COLUMNS}
    for column in REDACTED_COLUMNS:
        if isinstance(public[column], str):
            public[column] = protocol.redact(public[column])
    return public


def _is_number(value):
    """A plausible Unix time or offset: a finite number (NaN and infinities fail the comparison), not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -1e11 < value < 1e11


def _row_dict(row):
    record = dict(zip(_COLUMNS, row))
    record["facts"] = json.loads(record["facts"]) if record["facts"] else {}
    try:
        record["phases"] = json.loads(record["phases"]) if record["phases"] else {}
    except ValueError:
        record["phases"] = {}
    return record
