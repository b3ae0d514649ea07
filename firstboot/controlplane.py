"""First boot of a control-plane node: `kubeadm init`, the admin kubeconfig, the CNI, the token endpoint.

    initialize()   kubeadm init from a generated configuration (initconfig.py, written 0600) on the node's subnet
                   address. An interrupted or failed init is reset (`kubeadm reset -f`) before the next try; after
                   MAX_INIT_ATTEMPTS failures in one boot the agent gives up (power the board off and on for
                   another round). Success is recorded in control-plane.initialized: no later run or boot inits again.
    finish()       the init's own bootstrap token deleted at once (nodes get theirs from the token endpoint); the
                   admin kubeconfig in root's and the admin user's ~/.kube/config (0600); the pinned flannel manifest
                   applied; the token endpoint's unit started; the node Ready, waited for within a bounded time.
                   Every step is safe to run again, so a reboot in the middle resumes.

Several control planes (node.json's control_plane.vip): the first initializes with `--upload-certs` and the
cluster's certificate key from its card, kube-vip's static Pod in place before init (kubevip.py); the others join
through the agent's join path (agent.py, `kubeadm join` with a controlPlane section), then joined() keeps the key
their endpoint gave (0600, where the first has it: their endpoints serve it too) and marks them initialized, and
finish() does what follows a join: kube-vip, the kubeconfigs, the token endpoint, Ready (the pod network is the
first's to apply; their state is the endpoint's, not this card's).

Imported only on control-plane images, which carry the endpoint package. Each outcome is logged and kept in the
token endpoint's state (its row for this node), where `pi-image status --cluster /etc/pi-image/cluster` on the
master shows it.
"""

import json
import logging
import os
import re
import time

from . import initconfig, kubevip, netinfo, protocol
from .endpoint import state as endpoint_state
from .endpoint.kube import ClusterAdmin, ClusterError, new_bootstrap_token
from .endpoint.kubestore import KubeStore
from .endpoint.objects import KubeObjects
from .errors import SetupFailed
from .nodeconfig import ENDPOINT_UNIT
from .runtime import kubeadm_reset

log = logging.getLogger("pi-image.agent")

MAX_INIT_ATTEMPTS = 3
INIT_TIMEOUT = 900
CNI_ATTEMPTS = 10
CNI_RETRY_SECONDS = 10
READY_TIMEOUT = 600
READY_POLL_SECONDS = 5
BOOT_ID = "/proc/sys/kernel/random/boot_id"
CERTIFICATE_KEY = re.compile(r"^[0-9a-f]{64}$")  # kubeadm's --certificate-key: hex AES-256


class ControlPlane(object):
    """One control-plane node's way from local setup done to a cluster that serves join tokens."""

    def __init__(self, config, paths, commands, setup, sleep=time.sleep, clock=time.monotonic,
                 ready_timeout=READY_TIMEOUT):
        self.config = config
        self.settings = config.control_plane
        self.paths = paths
        self.commands = commands
        self.setup = setup
        self.sleep = sleep
        self.clock = clock
        self.ready_timeout = ready_timeout

    @property
    def initialized(self):
        """True once kubeadm init (or, of several control planes, kubeadm join) succeeded on this node (in any
        earlier run or boot)."""
        return os.path.exists(self.paths.initialized)

    @property
    def joined_cluster(self):
        """True if this node became a control plane by joining the cluster, not by initializing it."""
        return self._initialized_record().get("joined") is True

    def certificate_key_in(self, answer):
        """The certificate key (64 hex) of the token endpoint's answer to this control plane's join, else None."""
        key = answer.get("certificate_key")
        return key if isinstance(key, str) and CERTIFICATE_KEY.match(key) else None

    def joined(self, node_ip, kubernetes_version, certificate_key):
        """After `kubeadm join` as a control plane succeeded: the cluster's certificate key kept (0600, for this
        node's endpoint), then the marker that this node is a control plane (the endpoint unit's condition)."""
        os.makedirs(os.path.dirname(self.paths.certificate_key), mode=0o700, exist_ok=True)
        self.paths.write_private(self.paths.certificate_key, certificate_key + "\n")
        self.paths.write_private(self.paths.initialized, json.dumps(
            {"advertise_address": node_ip, "kubernetes_version": kubernetes_version, "joined": True},
            sort_keys=True) + "\n")
        log.info("kubeadm join done: %s is a control plane of the cluster (%s)", self.config.node, node_ip)

    def initialize(self, patches=None):
        """Run kubeadm init once; True if the cluster is initialized, False to try again later.

        `patches`: the kubeadm patch directory for the kubelet, if it needs one. SetupFailed (no retry) after
        MAX_INIT_ATTEMPTS failed inits in this boot.
        """
        node = self.config.node
        built_at = self.config.built_at
        if built_at is not None and time.time() < built_at:
            log.warning("the clock (%s) is before this image was built: kubeadm init waits for the time to be set, "
                        "or its certificates would be dated wrong", time.strftime("%Y-%m-%d %H:%M", time.gmtime()))
            return False
        api_host = protocol.split_host_port(self.config.api_server, protocol.API_SERVER_PORT)[0]
        node_ip = netinfo.choose_node_ip(self.commands, self.config.node_subnet, api_host)
        if node_ip is None:
            log.warning("no address in %s yet: kubeadm init waits for the network", self.config.node_subnet)
            return False
        failures, last_error = self._failures_this_boot()
        if failures >= MAX_INIT_ATTEMPTS:
            raise self._gave_up(failures, last_error)
        if os.path.exists(self.paths.init_started):
            log.info("a previous kubeadm init did not finish; resetting kubeadm state first")
            self._reset()
        version = self._kubeadm_version()
        certificate_key = self._own_certificate_key() if self.settings.several else None
        token = new_bootstrap_token()
        text = initconfig.render(version, self.config.api_server, token, node, node_ip, self.config.runtime,
                                 self.settings.pod_subnet, self.settings.service_subnet, patches,
                                 certificate_key=certificate_key)
        self.paths.write_private(self.paths.init_config, text)
        self.paths.write_private(self.paths.init_started, "")
        argv = ["kubeadm", "init", "--config", self.paths.init_config, "--skip-token-print"]
        if self.settings.several:
            kubeconfig = kubevip.kubeconfig_during_init(version)
            kubevip.install(self.paths.root, self.paths.kube_vip_manifest, kubeconfig)
            argv += ["--upload-certs", "--skip-certificate-key-print"]  # the key is in the 0600 config only
            log.info("kube-vip holds %s while init runs (with %s); the certificates are uploaded for the other "
                     "control planes", self.settings.vip, kubeconfig)
        log.info("running kubeadm init (advertise address %s, Kubernetes %s)", node_ip, version)
        result = self.commands.run(argv, timeout=INIT_TIMEOUT)
        if result.ok:
            self.paths.write_private(self.paths.initialized, json.dumps(
                {"advertise_address": node_ip, "kubernetes_version": version, "init_token_id": token.split(".")[0]},
                sort_keys=True) + "\n")
            self.paths.discard(self.paths.init_started)
            self.paths.discard(self.paths.init_failures)
            self.paths.discard(self.paths.init_config)  # it names init's token, which finish() deletes
            log.info("kubeadm init done: the control plane runs on %s", node_ip)
            self.record("progress", "kubeadm init done")
            return True
        failures += 1
        message = "kubeadm init failed (attempt {} of {}): {}".format(failures, MAX_INIT_ATTEMPTS, result.summary())
        self._count_failure(failures, message)
        log.error("%s", message)
        self.record("failed", message)
        self._reset()
        if failures >= MAX_INIT_ATTEMPTS:
            raise self._gave_up(failures, message)
        return False

    def finish(self):
        """Everything after init or a control plane's join; each step is idempotent. SetupFailed (retry) if the CNI
        cannot be applied or the endpoint cannot start."""
        for leftover in (self.paths.init_started, self.paths.init_config):  # a power cut right after init
            self.paths.discard(leftover)
        joined = self.joined_cluster
        if not os.path.exists(self.paths.admin_kubeconfig):
            self.paths.discard(self.paths.initialized)  # someone ran `kubeadm reset`: initialize again
            raise SetupFailed("{} is gone although kubeadm {} succeeded here: setting up this control plane "
                              "again".format(self.paths.admin_kubeconfig, "join" if joined else "init"), retry=True)
        if self.settings.several:  # admin.conf again after init (kube-vip issue #684); after a join, at last
            kubevip.install(self.paths.root, self.paths.kube_vip_manifest)
        self._delete_init_token()
        self._install_kubeconfigs()
        if not joined:
            self._apply_cni()
        result = self.commands.run(["systemctl", "start", ENDPOINT_UNIT], timeout=120)
        if not result.ok:
            journal = self.commands.run(["journalctl", "-u", ENDPOINT_UNIT, "-n", "8", "--no-pager", "-o", "cat"])
            for line in journal.stdout.splitlines()[-8:]:
                log.warning("%s: %s", ENDPOINT_UNIT, protocol.redact(line))
            raise SetupFailed("cannot start the token endpoint ({}): {}; see `journalctl -u {}`".format(
                ENDPOINT_UNIT, result.summary(), ENDPOINT_UNIT), retry=True)
        log.info("token endpoint started (%s): nodes can join once it listens", ENDPOINT_UNIT)
        ready = self._wait_ready()
        if not joined:
            self.record("joined", "initialized the cluster" + ("" if ready else "; not Ready yet"))

    def record(self, state, message):
        """Best effort: this node's row in the token endpoint's state (what `pi-image status` shows): the card's
        SQLite, or, of several control planes once the cluster exists, the API the endpoints share (kubestore.py:
        the endpoint may have moved the card's rows there already)."""
        store = None
        try:
            if self.settings.several and os.path.exists(self.paths.admin_kubeconfig):
                store = KubeStore(KubeObjects(self._admin()))
            else:
                store = endpoint_state.NodeStore(os.path.join(self.paths.cluster_dir, "state"))
            message = protocol.redact(message)  # kubeadm init's output may name its bootstrap token
            changes = {"last_report": "{}: {}".format(state, message)}
            if state == "failed":
                changes.update(state=endpoint_state.FAILED, last_error=message)
            elif state == "joined":
                changes.update(state=endpoint_state.JOINED, last_error=None)
            store.update(self.config.node, **changes)
        except Exception as err:  # noqa: BLE001 - a status line never stops the control plane
            log.warning("could not record %r in the token endpoint's state: %s", state, err)
        finally:
            if store is not None:
                store.close()

    def _kubeadm_version(self):
        """The installed kubeadm's version, which must be the image's Kubernetes minor."""
        version = self.setup.kubeadm_version()
        try:
            same = protocol.minor_version(version) == protocol.minor_version(self.config.kubernetes_version)
        except ValueError:
            raise SetupFailed("kubeadm cannot tell its version (`kubeadm version -o short` printed {!r})".format(
                version), retry=True) from None
        if not same:
            raise SetupFailed("kubeadm is {} but this image was built for Kubernetes {}: rebuild the image".format(
                version, self.config.kubernetes_version), retry=False)
        return version

    def _admin(self):
        """kubectl with the cluster's admin kubeconfig (the token endpoint's own helper)."""

        return ClusterAdmin(self.commands, self.paths.admin_kubeconfig)

    def _initialized_record(self):
        """What the initialized marker keeps (advertise_address, kubernetes_version, init_token_id or joined), or
        {} when it is missing or unreadable."""
        try:
            with open(self.paths.initialized) as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _own_certificate_key(self):
        """The cluster's certificate key from this card (the first of several control planes carries it)."""
        path = self.paths.certificate_key
        try:
            with open(path) as handle:
                key = handle.read().strip()
        except OSError as err:
            raise SetupFailed("cannot read the cluster's certificate key {} ({}): the first control plane's card "
                              "carries it; rebuild the card".format(path, err.strerror or err), retry=False) from None
        if not CERTIFICATE_KEY.match(key):
            raise SetupFailed("{} is not a certificate key (64 hex digits): rebuild the card".format(path),
                              retry=False)
        return key

    def _delete_init_token(self):
        """kubeadm init's own bootstrap token (its id kept in the initialized marker) is spent at once."""
        token_id = self._initialized_record().get("init_token_id")
        if token_id and self._admin().delete_token(token_id):
            log.info("deleted kubeadm init's own bootstrap token")

    def _install_kubeconfigs(self):
        """admin.conf as ~/.kube/config of root and of the image's admin user (0600, theirs); the seed's
        `mkdir -p $HOME/.kube; cp -i /etc/kubernetes/admin.conf $HOME/.kube/config`."""
        with open(self.paths.admin_kubeconfig, "rb") as handle:
            data = handle.read()
        users = ["root"] + [u for u in [self.settings.admin_user] if u and u != "root"]
        accounts = _passwd(os.path.join(self.paths.root, "etc/passwd"))
        for user in users:
            if user not in accounts:
                log.warning("no user %s on this node: no ~/.kube/config for it", user)
                continue
            uid, gid, home = accounts[user]
            if _install_private(os.path.join(self.paths.root, home.lstrip("/")), data, uid, gid):
                log.info("the cluster's admin kubeconfig is in ~%s/.kube/config", user)

    def _apply_cni(self):
        """The pinned flannel manifest, applied with kubectl; retried while the API server is not answering."""
        for attempt in range(1, CNI_ATTEMPTS + 1):
            result = self._admin().kubectl("apply", "-f", self.paths.cni_manifest, timeout=120)
            if result.ok:
                log.info("applied the pod network (flannel, %s)", self.settings.pod_subnet)
                return
            log.warning("kubectl apply of the pod network failed (attempt %d of %d): %s", attempt, CNI_ATTEMPTS,
                        result.summary())
            self.sleep(CNI_RETRY_SECONDS)
        raise SetupFailed("cannot apply the pod network {}: see the log above".format(self.paths.cni_manifest),
                          retry=True)

    def _wait_ready(self):
        """True once this node is Ready, False after ready_timeout (logged either way: not Ready is no failure)."""
        node = self.config.node
        deadline = self.clock() + self.ready_timeout
        while True:
            try:
                ready = self._admin().node_ready(node)
            except ClusterError as err:
                log.info("%s; asking again", err)
                ready = False
            if ready:
                log.info("control plane %s is Ready", node)
                return True
            if self.clock() >= deadline:
                log.warning("control plane %s is not Ready after %d s: see `kubectl get pods -A` and "
                            "`kubectl describe node %s` on it", node, self.ready_timeout, node)
                return False
            self.sleep(READY_POLL_SECONDS)

    def _reset(self):
        """`kubeadm reset -f`: what a failed or interrupted init left is undone (init-started stays if not)."""
        result = kubeadm_reset(self.commands, self.config.runtime)
        if result.ok:
            self.paths.discard(self.paths.init_started)
        else:
            log.warning("kubeadm reset failed: %s", result.summary())

    def _failures_this_boot(self):
        """(failed inits in this boot, the last one's message)."""
        try:
            with open(self.paths.init_failures) as handle:
                record = json.load(handle)
            if record.get("boot") == self._boot_id():
                return int(record["count"]), str(record.get("error", ""))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return 0, ""

    def _count_failure(self, count, message):
        """Keep how many inits failed in this boot, and the last one's message."""
        self.paths.write_private(self.paths.init_failures, json.dumps(
            {"boot": self._boot_id(), "count": count, "error": message}, sort_keys=True))

    def _gave_up(self, failures, last_error):
        """The SetupFailed (no retry) that ends this boot's tries, recorded for `pi-image status`."""
        message = ("{}; giving up after {} failed inits in this boot (each was undone with `kubeadm reset -f`): fix "
                   "what it says, then power the board off and on for {} more tries, or reflash it").format(
                       last_error or "kubeadm init failed", failures, MAX_INIT_ATTEMPTS)
        self.record("failed", message)
        return SetupFailed(message, retry=False)

    def _boot_id(self):
        """This boot's id (the kernel's, below the agent's root), so that a reboot gives init new tries."""
        try:
            with open(os.path.join(self.paths.root, BOOT_ID.lstrip("/"))) as handle:
                return handle.read().strip()
        except OSError:
            return ""


def _passwd(path):
    """{user: (uid, gid, home)} from a passwd file."""
    accounts = {}
    try:
        with open(path) as handle:
            for line in handle:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 7 and fields[2].isdigit() and fields[3].isdigit():
                    accounts[fields[0]] = (int(fields[2]), int(fields[3]), fields[5])
    except OSError:
        pass
    return accounts


def _install_private(home, data, uid, gid):
    """<home>/.kube/config = data, 0600 and (uid, gid), the directory 0700.

    Every step goes through descriptors opened with O_NOFOLLOW (the home is its user's: a `.kube` swapped for a
    symlink between a check and a write must not send root's write elsewhere)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        home_fd = os.open(home, flags)
    except OSError as err:
        log.warning("%s: %s: no kubeconfig written there", home, err.strerror)
        return False
    try:
        try:
            os.mkdir(".kube", 0o700, dir_fd=home_fd)
        except FileExistsError:
            pass
        try:
            kube_fd = os.open(".kube", flags, dir_fd=home_fd)
        except OSError as err:
            log.warning("%s/.kube is not a plain directory (%s): no kubeconfig written there", home, err.strerror)
            return False
    finally:
        os.close(home_fd)
    try:
        os.fchown(kube_fd, uid, gid)
        os.fchmod(kube_fd, 0o700)
        temporary = ".config.pi-image.tmp"
        try:
            os.unlink(temporary, dir_fd=kube_fd)
        except FileNotFoundError:
            pass
        descriptor = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600, dir_fd=kube_fd)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            os.fchown(handle.fileno(), uid, gid)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, "config", src_dir_fd=kube_fd, dst_dir_fd=kube_fd)
    finally:
        os.close(kube_fd)
    return True
