"""POST /v1/admin/upgrade: the operator asks this control plane to move to the next Kubernetes minor, in place.

The endpoint decides and records; the work is pi-image-upgrade.service's (firstboot/upgrade.py), a unit of its own:
it outlives this request, the endpoint's restarts and a power cut, and runs outside the endpoint's sandbox (apt and
kubeadm write /etc and /usr). The decision follows Kubernetes' version-skew policy as kubeadm enforces it:

    apply   the first control plane: `to` is exactly one minor above the API server's version (refused: the same
            minor, a downgrade, a jump of two); a failed upgrade to the same minor may be asked again, and resumes
    node    another control plane: the API server already runs `to` (else "upgrade the first control plane first"),
            and this node's kubelet is at most one minor behind it

Refused too: an upgrade while one is running here, a `to` that is not a minor ("1.32"), an endpoint that does not run
from a control plane's card (`pi-image token-server --cluster DIR` has no machine to upgrade). Each decision is one
audit line (admin-upgrade, or refused-admin-upgrade with the reason).

The record (protocol.py describes it) lives on the card at nodeconfig.UPGRADE_RECORD, 0600; the status answer
carries it (public_record: its known keys only, texts redacted), with the API server's version and each node's
kubelet version.
"""

import json
import logging
import os
import threading
import time

from .. import protocol
from ..nodeconfig import CLUSTER_DIR, UPGRADE_RECORD, UPGRADE_UNIT, ConfigError, load_node_config, write_private
from .audit import audit
from .kube import ClusterError

log = logging.getLogger("pi-image.tokend")

RECORD_KEYS = ("node", "to", "mode", "from", "release", "state", "phase", "phases", "error", "fix", "requested_at",
               "updated_at")
NODE_CONFIG = "etc/pi-image/node.json"  # below the card's root: whose card this is
STATUS_VERSION_AGE = 5.0  # seconds: the status shows an upgraded API server that soon (joins keep the version longer)


def card_root(settings_path):
    """The root of the control-plane card whose tokend.json is `settings_path` (<root>/etc/pi-image/cluster/), or
    None where the endpoint serves from a cluster directory elsewhere."""
    directory = os.path.dirname(os.path.abspath(settings_path))
    suffix = os.sep + CLUSTER_DIR
    if not directory.endswith(suffix):
        return None
    return directory[:-len(suffix)] or os.sep


def load_record(path):
    """The upgrade record at `path` (a dict), or None when there is none or it is not a JSON object."""
    try:
        with open(path) as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("%s cannot be read (%s): taken as no upgrade", path, err)
        return None
    return record if isinstance(record, dict) else None


def save_record(path, record, clock=time.time):
    """Write `record` to `path` (0600, atomically), its updated_at now."""
    record["updated_at"] = clock()
    write_private(path, json.dumps(record, sort_keys=True) + "\n")


def public_record(record):
    """What an operator sees of a record: its known keys only, the failure's texts redacted again."""
    if record is None:
        return None
    public = {key: record.get(key) for key in RECORD_KEYS}
    for key in ("error", "fix"):
        if public[key] is not None:
            public[key] = protocol.redact(str(public[key]))
    return public


def minor_of(version):
    """The minor number of 'v1.31.4' / '1.31', or None for anything else."""
    try:
        return protocol.minor_version(version)[1]
    except (ValueError, AttributeError):
        return None


class UpgradeRefused(Exception):
    """The request is refused (409); the message is one line with the fix."""


class Upgrades(object):
    """The admin route's decisions and the status answer's upgrade fields, for the card this endpoint runs on."""

    def __init__(self, settings, admin, clock=time.time):
        self.settings = settings
        self.admin = admin
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def root(self):
        """The card's root, or None (see card_root)."""
        return card_root(self.settings.path)

    def record_path(self):
        root = self.root
        return None if root is None else os.path.join(root, UPGRADE_RECORD)

    def request(self, to, mode, address):
        """(HTTP status, answer) for POST /v1/admin/upgrade {"to", "mode"}; ClusterError (503) when kubectl cannot
        tell the cluster's version."""
        if mode not in protocol.UPGRADE_MODES:
            return 400, {"error": "'mode' must be one of " + ", ".join(protocol.UPGRADE_MODES)}
        with self._lock:
            try:
                status, answer = self._decide(str(to), mode)
            except UpgradeRefused as refusal:
                audit("refused-admin-upgrade", protocol.ADMIN_NAME, address, str(refusal))
                return 409, {"error": str(refusal)}
        if status in (200, 202):
            audit("admin-upgrade", answer["node"], address, "to {} ({}) from {}: {}".format(
                to, mode, answer["from"], "started" if status == 202 else "already done"))
        else:
            audit("error", answer.get("node", "-"), address, answer["error"])
        return status, answer

    def _decide(self, to, mode):
        path = self.record_path()
        if path is None:
            raise UpgradeRefused("this token endpoint does not run from a control plane's card ({}): ask the "
                                 "endpoint of the control plane to upgrade".format(self.settings.path))
        if not protocol.MINOR_RE.match(to):
            raise UpgradeRefused("unknown Kubernetes version {!r}: give a minor such as 1.32".format(to[:40]))
        record = load_record(path)
        if record is not None and record.get("state") == "running":
            raise UpgradeRefused("an upgrade of {} to {} is running (phase {}): wait for it to end (`pi-image "
                                 "status`)".format(record.get("node"), record.get("to"), record.get("phase")))
        node = self._node_name()
        cluster_version = self.admin.cluster_version(max_age=0)
        target, running = minor_of(to), minor_of(cluster_version)
        same = record is not None and record.get("to") == to and record.get("mode") == mode
        if mode == "apply":
            current = cluster_version
            if same and record.get("state") == "done" and running == target:
                return 200, self._answer("done", node, record.get("from"), to)
            resumable = same and record.get("state") == "failed" and minor_of(record.get("from")) == target - 1
            if not (resumable and running in (target - 1, target)):
                _check_one_minor_up(cluster_version, running, to, target)
        else:
            current = self.admin.kubelet_versions().get(node) or cluster_version
            if running != target:
                raise UpgradeRefused("the API server runs {}, not {} yet: upgrade the first control plane first "
                                     "(`pi-image cluster upgrade DIR --to {}`)".format(cluster_version, to, to))
            if minor_of(current) == target and (record is None or (same and record.get("state") == "done")):
                return 200, self._answer("done", node, (record or {}).get("from", current), to)
            if minor_of(current) is not None and minor_of(current) < target - 1:
                raise UpgradeRefused("{} runs {}, more than one minor behind {}: reflash it with a card of {} "
                                     "(`pi-image build --cluster DIR --node {}`)".format(node, current, to, to, node))
        return self._start(path, record if same else None, node, to, mode, current)

    def _start(self, path, previous, node, to, mode, current):
        """Record the upgrade as running (a failed one of the same target keeps the phases it finished) and start
        its unit."""
        now = self._clock()
        if previous is not None:
            record = dict(previous, state="running", error=None, fix=None)
        else:
            record = {"node": node, "to": to, "mode": mode, "from": current, "release": None, "state": "running",
                      "phase": "requested", "phases": {"requested": now}, "error": None, "fix": None,
                      "requested_at": now}
        save_record(path, record, self._clock)
        result = self.admin.commands.run(["systemctl", "start", "--no-block", UPGRADE_UNIT], timeout=60)
        if not result.ok:
            message = "cannot start {}: {}".format(UPGRADE_UNIT, result.summary(300))
            save_record(path, dict(record, state="failed", error=message,
                                   fix="see `journalctl -u {}` on {}, then ask again".format(UPGRADE_UNIT, node)),
                        self._clock)
            return 503, {"error": message, "node": node}
        log.info("upgrade of %s to %s (%s) started", node, to, mode)
        return 202, self._answer("started", node, record["from"], to)

    @staticmethod
    def _answer(state, node, current, to):
        return {"state": state, "node": node, "from": current, "to": to}

    def _node_name(self):
        """Whose card this is: its node.json's node (the name the upgrade unit drains and uncordons)."""
        try:
            return load_node_config(os.path.join(self.root, NODE_CONFIG)).node
        except ConfigError as err:
            raise UpgradeRefused("{}: this card cannot be upgraded in place; reflash it".format(err)) from None

    def status(self, api_answered):
        """The status answer's fields: "cluster_version" (asked only when the API server just answered the node
        list: a status never waits for one that is down) and this card's "upgrade" record."""
        version = None
        if api_answered:
            try:
                version = self.admin.cluster_version(max_age=STATUS_VERSION_AGE)
            except ClusterError:
                version = None
        path = self.record_path()
        return {"cluster_version": version, "upgrade": public_record(load_record(path) if path else None)}

    def kubelet_versions(self):
        """{node: kubelet version or None} from the API server's node list, {} when it cannot say."""
        try:
            return self.admin.kubelet_versions()
        except ClusterError:
            return {}


def _check_one_minor_up(cluster_version, running, to, target):
    """UpgradeRefused unless `target` is one minor above the cluster's (`running`)."""
    if running is None:
        raise ClusterError("cannot read the cluster version: the API server says {!r}".format(cluster_version))
    if target == running + 1:
        return
    if target == running:
        raise UpgradeRefused("the cluster already runs {} (Kubernetes {}): nothing to upgrade".format(
            cluster_version, to))
    if target < running:
        raise UpgradeRefused("the cluster runs {}: Kubernetes cannot be downgraded to {}; keep 1.{}".format(
            cluster_version, to, running))
    raise UpgradeRefused("the cluster runs {}: {} is {} minors ahead and Kubernetes upgrades one minor at a time: "
                         "upgrade to 1.{} first".format(cluster_version, to, target - running, running + 1))
