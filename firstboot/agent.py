"""The first-boot agent: prepares the node, gets a short-lived token from the endpoint, runs `kubeadm join`.

    cd /usr/lib/pi-image && python3 -m firstboot.agent [--root /] [--config /etc/pi-image/node.json]

Runs once per installation (systemd skips it once <root>/var/lib/pi-image/firstboot.done exists) and loops inside
with capped exponential backoff and jitter, since systemd 237 (L4T) cannot restart oneshot units. Safe to kill at any
point: a join that was interrupted is reset and redone, or recognised as finished by the endpoint.

A join token is asked for (or kubeadm init run) only when kubeadm's preflight can pass and the installed kubeadm and
kubelet are the cluster's Kubernetes (preflight.py); a failure is reported to the endpoint once per change of its
reason (`pi-image status` shows it); a token still valid is reused, not re-minted.
The only control plane of a cluster never runs `kubeadm join`: built for a cluster, it runs `kubeadm init` and
starts the token endpoint (controlplane.py). Of several control planes (node.json's control_plane.vip), each asks
its endpoints for a token as a worker does, its join request marked `"control_plane": true`, and joins as a control
plane with the certificate key of the answer, through the same join path; the first (control_plane.may_initialize)
runs `kubeadm init --upload-certs` instead when no endpoint answers: there is no cluster yet. The endpoints are asked
in order (node.json's endpoint, then fallback_endpoints) until one answers (client.py). Once one answered a control
plane, a cluster exists: the state directory's CLUSTER_FOUND keeps that, so that it never initializes later.

The node's story - the phases it reached and when (protocol.PHASES), its address, architecture, OS and card
generation, the fix of its last failure - is kept in <root>/var/lib/pi-image/phases.json and sent with every join and
report; a control plane writes it into its own endpoint's state. `pi-image status` shows it.
"""

import argparse
import json
import logging
import os
import platform
import random
import sys
import time

from . import joinconfig, localsetup, netinfo, preflight, protocol
from .bundle import Bundle
from .client import EndpointBusy, EndpointClient, EndpointUnreachable, NodeStory, PinMismatch, split_fix
from .commands import CommandRunner
from .errors import SetupFailed
from .logsetup import log_to
from .nodeconfig import AgentPaths, ConfigError, load_node_config
from .runtime import kubeadm_reset

log = logging.getLogger("pi-image.agent")

DONE, RETRY_NOW, RETRY_LATER = "done", "retry-now", "retry-later"
CLOCK_SKEW_TOLERANCE = 300
NETWORK_ONLINE = "network-online.target"  # the unit wants it, but waits for it here (_wait_for_network)
NETWORK_WAIT_SECONDS = 300  # the network managers' own waits give up sooner (systemd-networkd-wait-online: 120 s)
TOKEN_REUSE_MARGIN = 300  # a kept token is used only while it has at least this long to live

_EXPIRED_TOKEN_MARKERS = ("could not find a JWS signature", "JWS signature", "token has expired", "token is expired")
# kubeadm join as a control plane when the kubeadm-certs Secret (2 h) is gone: the endpoint uploads it again when asked
_EXPIRED_CERTIFICATES_MARKER = "This Secret might have expired"

PHASES_FILE = "phases.json"  # in the agent's state directory
# in the agent's state directory: an endpoint answered this control plane's join, so a cluster exists and this node
# never runs kubeadm init, even if every endpoint is down at a later boot (two clusters would hold one VIP)
CLUSTER_FOUND = "cluster-found"
RETRY_FIX = "the agent tries again by itself; its log: `journalctl -u pi-image-firstboot` on the node"
GAVE_UP_FIX = ("the agent gave up: fix the cause (`journalctl -u pi-image-firstboot` on the node), then power the "
               "board off and on, or reflash its card")


class Backoff(object):
    """Capped exponential backoff with jitter: initial, 2x, 4x... up to maximum, each scaled by 0.5-1.0 at random."""

    def __init__(self, initial, maximum, rng=None):
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.SystemRandom()

    def next_delay(self):
        delay = min(self.maximum, self.initial * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return delay * self._rng.uniform(0.5, 1.0)

    def reset(self):
        self.attempt = 0


class _NarratedSetup(localsetup.LocalSetup):
    """Local setup that tells the story: the local steps are done when the packages come next, and the runtime is
    installed after them, from the card's bundle or from the network."""

    def __init__(self, reached, *args, **fields):
        localsetup.LocalSetup.__init__(self, *args, **fields)
        self._reached = reached

    def install_packages(self):
        self._reached("local-setup")
        localsetup.LocalSetup.install_packages(self)
        self._reached("runtime-installed", installed_from="bundle" if Bundle(self.root).present else "network")


class FirstBootAgent(object):
    """One node's way from a fresh image to a joined Kubernetes node."""

    def __init__(self, config, paths, commands, backoff, max_attempts=0, time_sync_timeout=120.0, sleep=time.sleep):
        self.config = config
        self.paths = paths
        self.commands = commands
        self.backoff = backoff
        self.max_attempts = max_attempts
        self.time_sync_timeout = time_sync_timeout
        self.sleep = sleep
        self.story = NodeStory(os.path.join(paths.state_dir, PHASES_FILE), paths.root, {
            "arch": os.uname().machine, "os": localsetup.os_pretty_name(paths.root),
            "generation": config.generation})
        self.setup = _NarratedSetup(self._reached, paths.root, commands, runtime=config.runtime,
                                    runtime_packages=config.runtime_packages, package_manager=config.package_manager,
                                    kube_install=config.kube_install, release=config.release,
                                    kubernetes_release=config.kubernetes_release, sleep=sleep)
        self.reported_problem = None
        self._network_waited = False
        self.control_plane = None
        if config.role == "control-plane" and config.control_plane is not None:
            from .controlplane import ControlPlane  # with the endpoint package, on control-plane images only

            self.control_plane = ControlPlane(config, paths, commands, self.setup, sleep)
        self.client = None
        if config.endpoint:
            self.client = EndpointClient(config.endpoint, config.endpoint_fingerprint, config.node,
                                         config.credential, generation=config.generation,
                                         story=self.story.body, fallback_endpoints=config.fallback_endpoints)

    def run(self):
        """0 once the node is set up (and joined, if it has an endpoint); 1 if it gave up."""
        if self.config.unstamped:
            log.error("this card was written from a profile image without a node identity (no name, no credential): "
                      "nothing is set up; write it with `pi-image flash IMAGE DEVICE`, which stamps a node onto it")
            return 1
        self.paths.discard(self.paths.join_config)  # a power cut may have left the last token behind
        self._reached("booted")
        attempts = 0
        while True:
            attempts += 1
            try:
                outcome = self._attempt()
            except SetupFailed as failure:
                log.error("%s", failure)
                self._report_problem(str(failure), failure.retry)
                if not failure.retry:
                    return 1
                outcome = RETRY_LATER
            except EndpointUnreachable as err:
                log.warning("%s; retrying", err)
                if not isinstance(err, PinMismatch):
                    self._reached("waiting-for-control-plane")
                outcome = RETRY_LATER
            if outcome == DONE:
                return 0
            if self.max_attempts and attempts >= self.max_attempts:
                log.error("giving up after %d attempts", attempts)
                return 1
            if outcome == RETRY_LATER:
                delay = self.backoff.next_delay()
                log.info("next attempt in %.1f s", delay)
                self.sleep(delay)

    def _attempt(self):
        if not Bundle(self.paths.root).present:
            self._wait_for_network()  # the packages (and the release's files) come from the network
        self.setup.run()
        self._wait_for_network()
        problems = preflight.problems(self.paths.root, self.setup.runtime)
        if problems:
            raise SetupFailed("kubeadm's preflight would fail, so no join token is asked for: " + "; ".join(problems),
                              retry=True)
        skew = preflight.version_skew(self.config.kubernetes_version, self.config.kubernetes_release, [
            ("kubeadm", self.setup.kubeadm_version()), ("kubelet", self.setup.kubelet_version())])
        if skew:
            raise SetupFailed(skew, retry=False)
        control_plane = self.control_plane
        if control_plane is not None and (control_plane.initialized or not control_plane.settings.several):
            return self._set_up_control_plane()
        if self.client is None or (self.config.role == "control-plane" and control_plane is None):
            return self._done_without_join()
        return self._join_cluster()

    def _join_cluster(self):
        """Join with the token kept from an earlier answer, else with one the endpoint issues now; the first of
        several control planes initializes the cluster instead when no endpoint answers."""
        api_server = self.config.api_server
        node_ip = netinfo.choose_node_ip(self.commands, self.config.node_subnet,
                                         protocol.split_host_port(api_server, protocol.API_SERVER_PORT)[0]
                                         if api_server else None)
        if node_ip is None:
            log.warning("no address in %s and no route to the API server yet", self.config.node_subnet)
            return RETRY_LATER
        self.story.facts["node_ip"] = node_ip
        kept = self._kept_token()
        if kept is not None:
            log.info("local setup done; node-ip %s; using the join token the endpoint issued earlier (still valid)",
                     node_ip)
            self._reached("token-issued")
            return self._join(kept, node_ip)
        log.info("local setup done; node-ip %s; asking %s for a join token", node_ip, self.config.endpoint)
        try:
            answer = self.client.join(self._facts(node_ip))
        except EndpointUnreachable as err:
            if isinstance(err, (PinMismatch, EndpointBusy)) or not self._may_initialize():
                raise  # something answered: another certificate, or this cluster's endpoint too slow to finish
            log.info("%s: no control plane answers, so there is no cluster yet: this node initializes it", err)
            return self._set_up_control_plane()
        if self.control_plane is not None and not self._found_cluster():
            self.paths.write_private(os.path.join(self.paths.state_dir, CLUSTER_FOUND), self.client.answered + "\n")
        state = answer.payload.get("state")
        if answer.status == 200 and state == "joined":
            log.info("the endpoint says this node already joined")
            return self._finish()
        if answer.status == 200 and state == "token-issued":
            if self.control_plane is not None and self.control_plane.certificate_key_in(answer.payload) is None:
                message = ("the token endpoint at {} answered this control plane without the cluster's certificate "
                           "key: build and flash the control plane that serves it with this pi-image".format(
                               self.client.answered))
                log.error("%s", message)
                self._report_problem(message)
                return RETRY_LATER
            self.backoff.reset()
            self._reached("token-issued")
            self._keep_token(answer.payload)
            return self._join(answer.payload, node_ip)
        if answer.status == 202:
            log.info("waiting for an operator: %s", answer.payload.get("message", "pending approval"))
        elif answer.status == 429 and answer.retry_after:
            log.info("rate limited by the endpoint; waiting %.0f s", answer.retry_after)
            self.sleep(answer.retry_after)
        else:
            log.error("the endpoint refused to issue a token: %s", answer.error)
        return RETRY_LATER

    def _may_initialize(self):
        """True if this node may run kubeadm init now that no endpoint answered: the first of several control
        planes, unless an endpoint ever answered it (the cluster exists then)."""
        return self.control_plane is not None and self.control_plane.settings.may_initialize and \
            not self._found_cluster()

    def _found_cluster(self):
        """True once an endpoint answered this control plane (CLUSTER_FOUND)."""
        return os.path.exists(os.path.join(self.paths.state_dir, CLUSTER_FOUND))

    def _set_up_control_plane(self):
        """kubeadm init (once) and what follows it; or, on a control plane that joined, what follows its join."""
        control_plane = self.control_plane
        try:
            if not control_plane.initialized and not control_plane.initialize(self._kubelet_patches()):
                return RETRY_LATER
            joined = control_plane.joined_cluster
            if not joined:
                self._reached("initialized")
            control_plane.finish()
        except OSError as err:
            raise SetupFailed("cannot set up the control plane: {}: {}".format(
                getattr(err, "filename", None) or "a file", err.strerror or err), retry=True) from err
        if joined:
            return self._finish()
        self._reached("joined")
        self.paths.mark_done({"node": self.config.node, "initialized": True})
        log.info("control plane %s is set up", self.config.node)
        return DONE

    def _done_without_join(self):
        self.paths.mark_done({"node": self.config.node, "joined": False})
        if self.config.role == "control-plane":
            log.info("local setup done; this is a control-plane node built without a cluster: it never runs "
                     "kubeadm join, and kubeadm init is the operator's step (build it with --cluster to have it "
                     "initialize the cluster by itself)")
        else:
            log.info("local setup done; this image has no cluster endpoint, so the node does not join")
        return DONE

    def _keep_token(self, issued):
        """Keep the issued answer (0600) so that a retry or a reboot uses it while it is valid: `expires_in`, the
        token's lifetime in seconds, counted on this machine's clock from now (an answer without it is not kept)."""
        lifetime = issued.get("expires_in")
        if isinstance(lifetime, (int, float)) and lifetime > TOKEN_REUSE_MARGIN:
            record = dict(issued, reuse_until=time.time() + lifetime - TOKEN_REUSE_MARGIN)
            self.paths.write_private(self.paths.issued_token, json.dumps(record, sort_keys=True))

    def _kept_token(self):
        """The kept answer if its token is still valid by this machine's clock, else None (and it is dropped)."""
        try:
            with open(self.paths.issued_token) as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            return None
        if isinstance(record, dict) and isinstance(record.get("reuse_until"), (int, float)) \
                and time.time() < record["reuse_until"]:
            return record
        self.paths.discard(self.paths.issued_token)
        return None

    def _facts(self, node_ip):
        facts = {"macs": netinfo.mac_addresses(self.paths.root), "arch": platform.machine(),
                 "os": localsetup.os_pretty_name(self.paths.root), "node_ip": node_ip,
                 "kubeadm_version": self.setup.kubeadm_version()}
        if self.control_plane is not None:
            facts["control_plane"] = True  # the endpoint answers a control plane of the inventory with the key
        return facts

    def _join(self, issued, node_ip):
        """kubeadm join with the `issued` answer; as a control plane (with its certificate key) on a control
        plane."""
        self._wait_for_clock(issued.get("server_time"))
        as_control_plane = self.control_plane is not None
        if os.path.exists(self.paths.join_started):
            log.info("a previous join was interrupted; resetting kubeadm state first")
            self._kubeadm_reset()
        certificate_key = issued["certificate_key"] if as_control_plane else None
        text = joinconfig.render(issued["kubernetes_version"], issued["api_server"], issued["token"],
                                 issued["ca_cert_hashes"], self.config.node, node_ip, self.config.runtime,
                                 self._kubelet_patches(), certificate_key=certificate_key)
        self.paths.write_private(self.paths.join_config, text)
        self.paths.write_private(self.paths.join_started, "")
        log.info("running kubeadm join%s against %s", " as a control plane" if as_control_plane else "",
                 issued["api_server"])
        try:
            result = self.commands.run(["kubeadm", "join", "--config", self.paths.join_config], timeout=900)
        finally:
            self.paths.discard(self.paths.join_config)
        if result.ok and as_control_plane:
            self.control_plane.joined(node_ip, issued["kubernetes_version"], certificate_key)
            return self._set_up_control_plane()
        if result.ok:
            return self._finish()
        output = result.stdout + result.stderr
        if any(marker in output for marker in _EXPIRED_TOKEN_MARKERS):
            log.warning("the token expired before kubeadm could use it; asking for a new one")
            self._report("progress", "token expired before join; fetching a new token")
            self.paths.discard(self.paths.issued_token)
            self.paths.discard(self.paths.join_started)  # nothing was joined: no reset needed before the retry
            return RETRY_NOW
        if _EXPIRED_CERTIFICATES_MARKER in output:
            log.warning("the cluster's certificates expired from the kubeadm-certs Secret; the endpoint is asked again "
                        "(it uploads them anew)")
            self.paths.discard(self.paths.issued_token)
        log.error("kubeadm join failed: %s", result.summary())
        self._report_problem("kubeadm join failed: " + result.summary())
        self._kubeadm_reset()
        return RETRY_LATER

    def _kubelet_patches(self):
        """The kubeadm patch directory with this node's kubelet settings (sized to the board; another resolv.conf
        where kubeadm's choice does not exist), or None when it has none."""
        settings = dict(self.config.kubelet)
        resolv_conf = self.setup.kubelet_resolv_conf()
        if resolv_conf is not None:
            log.info("no systemd-resolved on this node: the kubelet reads %s", resolv_conf)
            settings["resolvConf"] = resolv_conf
        if not settings:
            return None
        if not os.path.isdir(self.paths.kubeadm_patches):
            os.makedirs(self.paths.kubeadm_patches, mode=0o700)
        self.paths.write_private(os.path.join(self.paths.kubeadm_patches, joinconfig.KUBELET_PATCH),
                                 joinconfig.kubelet_patch(settings))
        return self.paths.kubeadm_patches

    def _kubeadm_reset(self):
        kubeadm_reset(self.commands, self.config.runtime)
        self.paths.discard(self.paths.join_started)

    def _finish(self):
        self._reached("joined")
        self.paths.mark_done({"node": self.config.node, "joined": True})
        self.paths.discard(self.paths.join_started)
        self.paths.discard(self.paths.issued_token)
        log.info("node %s joined the cluster", self.config.node)
        for _ in range(5):
            if self._report("joined"):
                break
            self.sleep(self.backoff.next_delay())
        return DONE

    def _report_problem(self, message, retry=True):
        """Report a failure and its fix, once per change of its text (the same failure again is only logged)."""
        message = protocol.redact(message)
        if message == self.reported_problem:
            return
        self.story.fix = split_fix(message)[1] or (RETRY_FIX if retry else GAVE_UP_FIX)
        if self._report("failed", message):
            self.reported_problem = message

    def _records_locally(self):
        """True where this node's story and reports go to its own endpoint's state on the card, not to an endpoint:
        the only control plane, and the first of several until it joins instead of initializing."""
        control_plane = self.control_plane
        return control_plane is not None and (
            self.client is None or (control_plane.settings.may_initialize and not self._found_cluster()))

    def _reached(self, phase, **details):
        """Record a phase of the node's story; a control plane that initializes keeps it in its own endpoint's state
        at once."""
        if self.story.reached(phase, **details) and self._records_locally():
            self._record_story()

    def _record_story(self, failed=False):
        """Best effort, as ControlPlane.record: the story (and a failure's fix) in this control plane's row of its
        endpoint's state."""
        from .endpoint import state as endpoint_state  # control-plane images carry the endpoint package

        store = None
        try:
            store = endpoint_state.NodeStore(os.path.join(self.paths.cluster_dir, "state"))
            story, row = self.story.body(), store.get(self.config.node) or {}
            changes = endpoint_state.story_fields(story, time.time(), row.get("facts"))
            if failed:
                changes["fix"] = endpoint_state.story_fix(story)
            store.update(self.config.node, **changes)
        except Exception as err:  # noqa: BLE001 - a status line never stops the control plane
            log.warning("could not record the node's phases in the token endpoint's state: %s", err)
        finally:
            if store is not None:
                store.close()

    def _report(self, state, message=""):
        """Best effort: a lost report never stops the node. A control plane records its own (its endpoint's
        state), with the fix of a failure."""
        if self._records_locally():
            self.control_plane.record(state, message)
            self._record_story(failed=state == "failed")
            return True
        if self.client is None:
            return False
        try:
            return self.client.report(state, message).status == 200
        except EndpointUnreachable as err:
            log.warning("could not report %r: %s", state, err)
            return False

    def _wait_for_network(self):
        """Wait, once, for network-online.target. The unit is not ordered after it, so that a card's bundle installs
        while the network comes up (DHCP, Wi-Fi); `systemctl start` joins the boot's own start job of the target and
        returns when the target is reached, as it is even when the network manager's wait failed (Wants=)."""
        if self._network_waited:
            return
        started = time.monotonic()
        result = self.commands.run(["systemctl", "start", NETWORK_ONLINE], timeout=NETWORK_WAIT_SECONDS)
        self._network_waited = True
        if not result.ok:
            log.warning("%s was not reached (%s); going on", NETWORK_ONLINE, result.summary(200))
        elif time.monotonic() - started >= 1:
            log.info("waited %.1f s for %s", time.monotonic() - started, NETWORK_ONLINE)

    def _wait_for_clock(self, server_time):
        """kubeadm checks the API server's certificate dates: wait (bounded) while our clock is far behind."""
        if not isinstance(server_time, (int, float)):
            return
        deadline = time.monotonic() + self.time_sync_timeout
        while time.time() < server_time - CLOCK_SKEW_TOLERANCE and time.monotonic() < deadline:
            log.info("clock is %.0f s behind the endpoint; waiting for time sync", server_time - time.time())
            self.sleep(5)


def configure_logging(log_file):
    """Agent log to stderr (the journal) and <root>/var/lib/pi-image/firstboot.log, tokens redacted."""
    log_to(logging.FileHandler(log_file))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m firstboot.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/", help="the system to set up (a sandbox tree in tests)")
    parser.add_argument("--config", help="node.json (default: <root>/etc/pi-image/node.json)")
    parser.add_argument("--backoff-initial", type=float, default=2.0, help="first retry delay in seconds")
    parser.add_argument("--backoff-max", type=float, default=300.0, help="longest retry delay in seconds")
    parser.add_argument("--max-attempts", type=int, default=0, help="give up after this many (0: never)")
    parser.add_argument("--time-sync-timeout", type=float, default=120.0, help="longest wait for a sane clock")
    args = parser.parse_args(argv)
    os.umask(0o077)
    paths = AgentPaths(args.root)
    if paths.is_done():
        sys.stderr.write("pi-image-firstboot: already done ({})\n".format(paths.done))
        return 0
    paths.ensure_state_dir()
    configure_logging(paths.log_file)
    try:
        config = load_node_config(args.config or paths.node_config)
    except ConfigError as err:
        log.error("%s", err)
        return 2
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    agent = FirstBootAgent(config, paths, CommandRunner(env), Backoff(args.backoff_initial, args.backoff_max),
                           args.max_attempts, args.time_sync_timeout)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
