"""Make an installed machine a node: apply the plan `pi-image enroll` packed into enroll-NODE.sh, or undo it.

`sudo sh enroll-NODE.sh [--dry-run | --undo]` runs this file, which the script embeds verbatim, as
`python3 - enroll-NODE.sh ARGS`; `python3 -m firstboot.enroll FILE [--root R] [--dry-run] [--undo]` is the same
(R: a sandbox tree, for tests). The payload at the end of FILE (gzip + base64 JSON) holds the node's ops; the agent's
own modules among them serve this program's imports when it runs with no package of its own (_AgentImporter).

Every check runs before anything changes, and a failed one is one line and exit 1 (a usage error exits 2). Then,
for each change, the path's previous state goes into the journal (var/lib/pi-image/enroll/journal.json, 0600,
fsync'd) before the change is made, atomically (temporary + rename): absent, a directory, a symlink's target, or a
file, copied first into var/lib/pi-image/enroll/backup/ with its mode and owner. A run that was interrupted resumes:
a path already in the journal keeps its first record (and backup), and a change already made is skipped. `--undo`
stops the agent, restores the paths in reverse order from the journal (dropping each entry once done), then removes
the journal and the backups. What the agent did meanwhile (packages, a kubeadm join) is not the journal's.
"""

import argparse
import base64
import binascii
import importlib
import importlib.util
import json
import os
import shutil
import stat
import sys
import zlib

FORMAT = 1
PAYLOAD_MARKER = "PI_IMAGE_ENROLL_PAYLOAD"  # the payload's here-document in the script ends with this line
MAX_FILE = 64 << 20  # the script; the payload inflated may be no bigger either
STATE_DIR = "/var/lib/pi-image/enroll"
JOURNAL = STATE_DIR + "/journal.json"
BACKUPS = STATE_DIR + "/backup"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
TEMPORARY_SUFFIX = ".pi-image-enroll.tmp"
OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")
PLAN_VERBS = {"write": "writes a file", "symlink": "makes a link", "mkdir": "makes a directory",
              "remove": "removes a link"}


class Refused(Exception):
    """A check failed or a change could not be made: one line for the user (exit 1)."""


def content(op):
    """The bytes a write op puts in its file (text as UTF-8, or base64)."""
    return op["text"].encode("utf-8") if "text" in op else base64.b64decode(op["content"])


def payload_opener():
    """The shell line that opens the payload's here-document (a no-op for sh, which never reaches it)."""
    return ": <<'{}'".format(PAYLOAD_MARKER)


def read_payload(path):
    """The payload packed at the end of the script `path`, as a dict."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE + 1)
    except OSError as err:
        raise Refused("{}: cannot read it ({})".format(path, err.strerror)) from None
    start = data.rfind(("\n" + payload_opener() + "\n").encode())
    end = data.rfind(("\n" + PAYLOAD_MARKER + "\n").encode())
    if len(data) > MAX_FILE or start < 0 or end <= start:
        raise Refused("{}: not a whole pi-image enroll script: make it again with `pi-image enroll`".format(path))
    try:
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        text = inflate.decompress(base64.b64decode(data[start + len(payload_opener()) + 2:end]), MAX_FILE)
        payload = json.loads(text.decode("utf-8")) if not inflate.unconsumed_tail else None
    except (binascii.Error, zlib.error, ValueError):
        payload = None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise Refused("{}: its payload is damaged or from another pi-image version: make it again with "
                      "`pi-image enroll`".format(path))
    return payload


class _AgentImporter(object):
    """Serves `firstboot` and its modules from the payload's copy of the agent (run from the script, this program
    has no package around it, and the agent's command runner is the device's one way to run a command)."""

    def __init__(self, payload):
        prefix = payload["agent_dir"] + "/"
        self.sources = {}
        for op in payload["ops"]:
            name = op["path"][len(prefix):]
            if op["path"].startswith(prefix) and name.endswith(".py") and "/" not in name:
                module = "firstboot" if name == "__init__.py" else "firstboot." + name[:-3]
                self.sources[module] = (op["path"], content(op))

    def find_spec(self, name, path=None, target=None):
        if name not in self.sources:
            return None
        return importlib.util.spec_from_loader(name, self, origin=self.sources[name][0],
                                               is_package=name == "firstboot")

    def create_module(self, spec):
        return None  # the default module

    def exec_module(self, module):
        origin, source = self.sources[module.__name__]
        exec(compile(source, origin, "exec"), module.__dict__)


def agent_module(payload, name):
    """The agent's module `name` (commands, localsetup): this package's, else the payload's copy."""
    if not __package__ and not any(isinstance(finder, _AgentImporter) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AgentImporter(payload))
    return importlib.import_module("{}.{}".format(__package__ or "firstboot", name))


class Machine(object):
    """The system under `root` ("/" on a real machine) and what the payload does to it."""

    def __init__(self, root, payload, commands):
        self.root = root
        self.payload = payload
        self.commands = commands
        self.setup = agent_module(payload, "localsetup")
        self.agent_done = agent_module(payload, "nodeconfig").AgentPaths(root).done
        self.is_root = os.geteuid() == 0

    def path(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def read_json(self, path):
        try:
            with open(self.path(path), encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise Refused("{}: cannot read it ({})".format(path, getattr(err, "strerror", None) or err)) from None

    # --- checks: each returns nothing or raises Refused; none changes anything ------------------------------------

    def check(self, undo):
        """Every refusal, before any change."""
        payload, journal = self.payload, self.read_json(JOURNAL)
        if not self.is_root and self.root == "/":
            raise Refused("run it as root: sudo sh {}".format(self.payload["script"]))
        if journal is not None and (journal.get("node"), journal.get("cluster")) != (payload["node"],
                                                                                    payload["cluster"]):
            raise Refused("{} records the enrollment of node {} of cluster {}: undo it first with its own script "
                          "(sudo sh enroll-{}.sh --undo)".format(JOURNAL, journal.get("node"), journal.get("cluster"),
                                                                 journal.get("node")))
        if undo:
            if journal is None:
                raise Refused("nothing to undo: no enrollment is recorded in {}".format(JOURNAL))
            return
        self.check_os()
        if not os.path.isdir(self.path("/run/systemd/system")):
            raise Refused("this system is not running systemd (no /run/systemd/system): the node's agent and the "
                          "kubelet are systemd units")
        self.check_not_a_node()
        self.check_swap()

    def check_os(self):
        path = next((p for p in OS_RELEASE if os.path.isfile(self.path(p))), OS_RELEASE[0])
        values = self.setup.os_release(self.path(path))
        ids = [values.get("ID", "")] + values.get("ID_LIKE", "").split()
        if not set(ids) & set(self.payload["os_ids"]):
            raise Refused("this machine runs {} (ID={}{}): this script is for {} systems ({} plan); make one for a "
                          "profile of this system's target".format(
                              values.get("PRETTY_NAME", "an unknown system"), values.get("ID", "?"),
                              " ID_LIKE=" + values["ID_LIKE"] if values.get("ID_LIKE") else "",
                              "/".join(self.payload["os_ids"]), self.payload["target"]))

    def check_not_a_node(self):
        ours = json.loads(content(self.op(self.payload["node_config"])).decode("utf-8"))
        theirs = self.read_json(self.payload["node_config"])
        where = "{} names".format(self.payload["node_config"])
        if theirs is not None and _cluster_of(theirs) != _cluster_of(ours):
            raise Refused("{} another cluster ({}): this machine is a node of it; `kubeadm reset` and remove {} "
                          "first".format(where, _cluster_of(theirs)[0], self.payload["node_config"]))
        if theirs is not None and theirs.get("node") != ours.get("node"):
            raise Refused("{} node {}, but this script is for node {}: use that node's script, or remove {} "
                          "first".format(where, theirs.get("node"), ours.get("node"), self.payload["node_config"]))
        if theirs is None and os.path.lexists(self.path(KUBELET_CONF)):
            raise Refused("{} exists: this machine is a node of another cluster already; `kubeadm reset` it "
                          "first".format(KUBELET_CONF))
        if self.commands.run(["systemctl", "is-active", "kubelet"]).stdout.strip() == "active":
            raise Refused("the kubelet is running here (systemctl is-active kubelet): this machine is a Kubernetes "
                          "node already; `kubeadm reset` and stop the kubelet first")
        if os.path.lexists(self.agent_done):
            raise Refused("{} exists: the node's agent ran here before and would not start again; `kubeadm reset` "
                          "if this machine was a node, remove the file, then run this again".format(
                              "/" + os.path.relpath(self.agent_done, self.root)))

    def check_swap(self):
        """Swap the agent can turn off for good: listed in /etc/fstab (it comments the line out, then swapoff -a).
        zram and swap that a systemd unit turns on come back at the next boot, and the kubelet refuses swap."""
        active = _lines_after_header(self.path("/proc/swaps"))
        listed = set(self.real(line.split()[0]) for line in _lines_after_header(self.path("/etc/fstab"), 0)
                     if self.setup.is_fstab_swap(line))
        for entry in (line.split()[0].replace("\\040", " ") for line in active):
            if os.path.basename(entry).startswith("zram"):
                raise Refused("swap on {} is zram, which its generator makes again at each boot: remove it (the "
                              "zram-generator, zram-tools or zramswap package) and reboot, then run this "
                              "again".format(entry))
            if self.real(entry) not in listed:
                raise Refused("swap on {} is not in /etc/fstab: something else (a systemd .swap unit, the GPT "
                              "auto-generator) turns it on at each boot; turn it off for good (`systemctl mask` its "
                              "unit), then run this again".format(entry))

    def real(self, spec):
        """An fstab source or a /proc/swaps name as the path it stands for, links resolved (inside root)."""
        kind, sep, value = spec.partition("=")
        by = {"UUID": "by-uuid", "LABEL": "by-label", "PARTUUID": "by-partuuid", "PARTLABEL": "by-partlabel"}
        path = "/dev/disk/{}/{}".format(by[kind], value) if sep and kind in by else spec
        return os.path.realpath(self.path(path))

    def op(self, path):
        return next(op for op in self.payload["ops"] if op["path"] == path)

    # --- the changes ------------------------------------------------------------------------------------------

    def changes(self):
        """Each op with the directories it needs made first, as (action, path, op); a path in the way, or an owner
        this machine has no account for, is refused."""
        owners, planned, out = _Owners(self), set(), []
        for op in self.payload["ops"]:
            parent = os.path.dirname(op["path"])
            missing = []
            while op["action"] != "remove" and parent not in planned and not os.path.isdir(self.path(parent)):
                if os.path.lexists(self.path(parent)):
                    raise Refused("{} is not a directory, but the node's plan puts {} in it: move it away".format(
                        parent, op["path"]))
                missing.append(parent)
                parent = os.path.dirname(parent)
            for directory in reversed(missing):
                planned.add(directory)
                out.append(("mkdir", directory, {"mode": 0o755, "uid": 0, "gid": 0}))
            full = self.path(op["path"])
            if os.path.isdir(full) != (op["action"] == "mkdir") and os.path.lexists(full) \
                    and not (op["action"] == "remove" and os.path.islink(full)):
                raise Refused("{} is {}, where the node's plan {}: move it away".format(
                    op["path"], "a directory" if os.path.isdir(full) else "not a directory", PLAN_VERBS[op["action"]]))
            if "owner" in op:
                op = dict(op, uid=owners.uid(op), gid=owners.gid(op))
            planned.add(op["path"])
            out.append((op["action"], op["path"], op))
        return out

    def done(self, action, path, op):
        """True if `path` is already as the change leaves it."""
        try:
            status = os.lstat(self.path(path))
        except FileNotFoundError:
            return action == "remove"
        if action == "symlink":
            return stat.S_ISLNK(status.st_mode) and os.readlink(self.path(path)) == op["target"]
        if action not in ("write", "mkdir") or stat.S_ISLNK(status.st_mode) or not self.owned(status, op):
            return False
        if action == "mkdir" or not stat.S_ISREG(status.st_mode):
            return action == "mkdir" and stat.S_ISDIR(status.st_mode)
        with open(self.path(path), "rb") as handle:
            return handle.read() == content(op)

    def owned(self, status, op):
        return stat.S_IMODE(status.st_mode) == op["mode"] and (
            not self.is_root or (status.st_uid, status.st_gid) == (op["uid"], op["gid"]))

    def make(self, action, path, op):
        """Make one change, atomically."""
        full = self.path(path)
        if action == "write":
            _write_file(full, content(op), op["mode"], self.ids(op))
        elif action == "symlink":
            _remove(full + TEMPORARY_SUFFIX)
            os.symlink(op["target"], full + TEMPORARY_SUFFIX)
            os.replace(full + TEMPORARY_SUFFIX, full)
        elif action == "mkdir":
            if not os.path.isdir(full):
                os.mkdir(full, op["mode"])
            _set_mode(full, op["mode"], self.ids(op))
        elif action == "remove":
            _remove(full)
        _sync_directory(os.path.dirname(full))

    def ids(self, entry):
        return (entry["uid"], entry["gid"]) if self.is_root else None

    # --- the journal ------------------------------------------------------------------------------------------

    def previous(self, path):
        """The journal entry of `path` as it is now, its backup copied first for a file."""
        full = self.path(path)
        try:
            status = os.lstat(full)
        except FileNotFoundError:
            return {"path": path, "was": "absent"}
        entry = {"path": path, "mode": stat.S_IMODE(status.st_mode), "uid": status.st_uid, "gid": status.st_gid}
        if stat.S_ISLNK(status.st_mode):
            return {"path": path, "was": "symlink", "target": os.readlink(full)}
        if stat.S_ISDIR(status.st_mode):
            return dict(entry, was="dir")
        backup = self.path(BACKUPS + path)
        os.makedirs(os.path.dirname(backup), 0o700, exist_ok=True)
        shutil.copyfile(full, backup + TEMPORARY_SUFFIX, follow_symlinks=False)
        _write_file(backup, None, 0o600, None)
        return dict(entry, was="file", mtime_ns=status.st_mtime_ns)

    def save(self, journal):
        _write_file(self.path(JOURNAL), (json.dumps(journal, indent=1) + "\n").encode("utf-8"), 0o600, None)

    def new_journal(self):
        made, parent = [], STATE_DIR
        while not os.path.isdir(self.path(parent)):
            made.insert(0, parent)
            parent = os.path.dirname(parent)
        for directory in made:
            os.mkdir(self.path(directory), 0o700)
        journal = {"node": self.payload["node"], "cluster": self.payload["cluster"], "made": made, "entries": []}
        self.save(journal)
        return journal

    def restore(self, entry):
        """Put `path` back as the journal entry says; False if a directory made for the plan is not empty."""
        full = self.path(entry["path"])
        _remove(full + TEMPORARY_SUFFIX)
        if entry["was"] == "absent":
            if os.path.isdir(full) and not os.path.islink(full):
                if os.listdir(full):
                    return False
                os.rmdir(full)
            else:
                _remove(full)
        elif entry["was"] == "symlink":
            os.symlink(entry["target"], full + TEMPORARY_SUFFIX)
            os.replace(full + TEMPORARY_SUFFIX, full)
        elif entry["was"] == "dir":
            _set_mode(full, entry["mode"], self.ids(entry))
        else:
            shutil.copyfile(self.path(BACKUPS + entry["path"]), full + TEMPORARY_SUFFIX)
            os.utime(full + TEMPORARY_SUFFIX, ns=(entry["mtime_ns"], entry["mtime_ns"]))
            _write_file(full, None, entry["mode"], self.ids(entry))
        _sync_directory(os.path.dirname(full))
        return True


def _cluster_of(config):
    return (config.get("cluster") or {}).get("api_server"), config.get("endpoint")


class _Owners(object):
    """Owner names as this machine's /etc/passwd and /etc/group number them."""

    def __init__(self, machine):
        self.users = _ids(machine.path("/etc/passwd"))
        self.groups = _ids(machine.path("/etc/group"))

    def uid(self, op):
        return self._id(op, 0, self.users, "user")

    def gid(self, op):
        return self._id(op, 1, self.groups, "group")

    @staticmethod
    def _id(op, index, table, what):
        name = op["owner"].split(":")[index]
        if name == "root":
            return 0
        if name not in table:
            raise Refused("the node's plan gives {} to the {} {}, which this machine has no account for".format(
                op["path"], what, name))
        return table[name]


def _ids(path):
    ids = {}
    for line in _lines_after_header(path, 0):
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit():
            ids.setdefault(fields[0], int(fields[2]))
    return ids


def _lines_after_header(path, header=1):
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            return [line for line in handle.read().splitlines()[header:] if line.strip()]
    except FileNotFoundError:
        return []


def _write_file(path, data, mode, ids):
    """`data` at `path` complete or not at all, with `mode` and `ids` (uid, gid) before the rename; data None: the
    temporary is already written (a copy)."""
    temporary = path + TEMPORARY_SUFFIX
    if data is not None:
        _remove(temporary)
        descriptor = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
    _set_mode(temporary, mode, ids)
    descriptor = os.open(temporary, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
    _sync_directory(os.path.dirname(path))


def _set_mode(path, mode, ids):
    if ids is not None:
        os.chown(path, ids[0], ids[1], follow_symlinks=False)
    os.chmod(path, mode)


def _remove(path):
    if os.path.lexists(path):
        os.unlink(path)


def _sync_directory(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


VERBS = {"write": "write", "symlink": "link", "mkdir": "mkdir", "remove": "remove"}


def describe(machine, action, path, op):
    """One line of --dry-run."""
    verb = "replace" if action == "write" and os.path.lexists(machine.path(path)) else VERBS[action]
    what = " -> " + op["target"] if action == "symlink" else "  {} B".format(op["size"]) if "size" in op else ""
    return "  {:8} {}{}{}".format(verb, path, what, "  (already done)" if machine.done(action, path, op) else "")


def apply(machine, dry_run):
    """Check, journal and make every change, then start the agent (or, dry, list the changes)."""
    payload, changes = machine.payload, machine.changes()
    if dry_run:
        print("\n".join(["{}: would make node {} of cluster {} here:".format(payload["script"], payload["node"],
                                                                             payload["cluster"])]
                        + [describe(machine, *change) for change in changes]
                        + ["  then: systemctl daemon-reload; systemctl start --no-block " + " ".join(payload["units"]),
                           "dry run: nothing changed"]))
        return
    journal = machine.read_json(JOURNAL) or machine.new_journal()
    recorded = set(entry["path"] for entry in journal["entries"])
    made = 0
    for action, path, op in changes:
        if path not in recorded:
            journal["entries"].append(machine.previous(path))
            recorded.add(path)
            machine.save(journal)
        if not machine.done(action, path, op):
            machine.make(action, path, op)
            made += 1
    _systemctl(machine, ["daemon-reload"])
    for unit in payload["units"]:  # enabled already: its wants link is one of the changes
        _systemctl(machine, ["start", "--no-block", unit])
    kept = sum(1 for entry in journal["entries"] if entry["was"] == "file")
    print("\n".join([
        "{}: node {} of cluster {}: {} changes made ({} already done), {} replaced files backed up in {}; "
        "started {}".format(payload["script"], payload["node"], payload["cluster"], made, len(changes) - made, kept,
                            BACKUPS, ", ".join(payload["units"])),
        "undo: sudo sh {} --undo".format(payload["script"]),
        "watch: journalctl -fu pi-image-firstboot; pi-image status --cluster {}".format(payload["cluster_dir"])]))


def undo(machine, dry_run):
    """Stop the agent and put every path the journal records back, last change first."""
    journal = machine.read_json(JOURNAL)
    if dry_run:
        print("\n".join(["  {:8} {}".format("remove" if e["was"] == "absent" else "restore", e["path"])
                         for e in reversed(journal["entries"])] + ["dry run: nothing changed"]))
        return
    for unit in machine.payload["units"]:
        machine.commands.run(["systemctl", "disable", "--now", unit])
    kept = []
    while journal["entries"]:
        entry = journal["entries"][-1]
        if not machine.restore(entry):
            kept.append(entry["path"])
        journal["entries"].pop()
        machine.save(journal)
    _systemctl(machine, ["daemon-reload"])
    shutil.rmtree(machine.path(BACKUPS), ignore_errors=True)
    os.unlink(machine.path(JOURNAL))
    for directory in [STATE_DIR] + [d for d in reversed(journal["made"]) if d != STATE_DIR]:
        if os.path.isdir(machine.path(directory)) and not os.listdir(machine.path(directory)):
            os.rmdir(machine.path(directory))
    print("{}: undone: every file it changed is back, and the agent is stopped{}. What the agent did meanwhile "
          "stays (packages; `kubeadm reset` undoes a join).".format(
              machine.payload["script"], "; kept, not empty: " + ", ".join(kept) if kept else ""))


def _systemctl(machine, args):
    result = machine.commands.run(["systemctl"] + args)
    if not result.ok:
        raise Refused("systemctl {} failed: {}".format(" ".join(args), result.summary()))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="enroll", description="Make this installed machine the node its "
                                     "enroll script is for (pi-image enroll), or undo that.")
    parser.add_argument("file", help="the enroll-NODE.sh script (it carries the node's plan)")
    parser.add_argument("--root", default="/", help="the system's root (a sandbox tree, for tests)")
    parser.add_argument("--dry-run", action="store_true", help="list every change and make none")
    parser.add_argument("--undo", action="store_true", help="put back every file the script changed")
    args = parser.parse_args(argv)
    os.umask(0o077)  # backups and temporaries private until given their mode (a replaced file may hold a secret)
    name = os.path.basename(args.file)
    try:
        payload = dict(read_payload(args.file), script=args.file)
        machine = Machine(os.path.abspath(args.root), payload, agent_module(payload, "commands").CommandRunner())
        machine.check(args.undo)
        (undo if args.undo else apply)(machine, args.dry_run)
    except Refused as err:
        sys.stderr.write("{}: {}\n".format(name, err))
        return 1
    except OSError as err:
        sys.stderr.write("{}: stopped at {}: {}: run it again to finish (or with --undo to put everything "
                         "back)\n".format(name, err.filename or "a change", err.strerror or err))
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("{}: interrupted: run it again to finish (or with --undo to put everything back)\n".format(
            name))
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
