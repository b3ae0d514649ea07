"""The join protocol spoken by the device agent and the token endpoint (both import this module).

Wire format, all over HTTPS with the endpoint's certificate pinned by SHA-256 fingerprint:

    GET  /v1/challenge   -> 200 {"nonce": "...", "expires_in": 60}
    POST /v1/join        -> 200 {"state": "token-issued", "api_server", "token", "ca_cert_hashes",
                                 "kubernetes_version", "node_subnet", "server_time",
                                 "expires_in" (the token's lifetime in seconds)}
                            200 {"state": "joined"}   (the node already joined with the last issued token)
                            202 {"state": "pending"}  (unknown node waiting for `pi-image approve`)
                            409 {"error": "..."}      (this credential already joined, version skew, Ready namesake)
                            4xx/5xx {"error": "..."}
    POST /v1/report      -> 200 {"state": "..."}
    POST /v1/admin/kubeconfig -> 200 {"kubeconfig": "..."}   (the cluster's admin kubeconfig, once initialized)
                                 503 {"error": "..."}        (the control plane is not initialized yet)
    POST /v1/admin/inventory  {"nodes": {name: generation}} -> 200 {"nodes": N}   (the inventory, pushed by the host)
    POST /v1/admin/status     {} -> 200 {"nodes": [row, ...], "inventory": {name: generation}, "server_time": unix time}
    POST /v1/admin/approve    {"node", "replace": bool, "listed": bool} -> 200 {"node", "state"}
                                 404 a name neither known there nor `listed` (in the operator's inventory)
    POST /v1/admin/upgrade    {"to": "1.32", "mode": "apply" | "node"}   (this master moves to that minor in place)
                              -> 202 {"state": "started", "node", "from": "v1.31.4", "to": "1.32"}  (recorded, its
                                     upgrade unit started)
                                 200 {"state": "done", "node", "from", "to"}   (it runs that minor, its upgrade done)
                                 409 {"error": "..."}   (one running; apply of anything but one minor up from the
                                     cluster's version; node before the API server runs `to`; not a 1.NN minor)
                                 503 {"error": "..."}   (kubectl cannot tell the cluster's version)

The status answer also holds "cluster_version" (the API server's gitVersion, null when unknown), "upgrade" (the
answering master's upgrade record, below, or null) and per node row "kubelet_version" (null when unknown).

An upgrade record (a control plane's /var/lib/pi-image/upgrade.json, 0600, no secret in it): {"node", "to", "mode",
"from", "release" (the installed kubeadm's version, once installed), "state": running | done | failed, "phase" (of
UPGRADE_PHASES: the one under way, where it failed, or "done"), "phases" {phase: unix time done}, "error", "fix"
(one line each, or null), "requested_at", "updated_at"}. Mode "node" runs `kubeadm upgrade node` in the "apply"
phase and has no "plan".

POST bodies are JSON objects of at most MAX_BODY_BYTES. Each POST carries three headers: the node name, a nonce from
/v1/challenge (one-time, expires after NONCE_TTL_SECONDS) and an HMAC-SHA256 made with the node credential over
method, path, nonce and body. Challenge-response instead of timestamps because Raspberry Pis have no RTC.

Admin requests (/v1/admin/...) are signed the same way with the admin credential, derived from the enrollment key
in another domain than any node's (admin_credential), with ADMIN_NAME in the node header: a node credential never
opens them, the admin credential never joins.

A credential belongs to one build of a node: its generation, which every build of that node bumps in the inventory.
The endpoint accepts the node's current generation - or a newer one the card names in HEADER_GENERATION (a card built
after the endpoint's copy of the inventory, e.g. the master's, was made: only the enrollment key's holder can make
one) - never an older one, and never one older than a generation it has already issued a token to; each generation
joins once.
"""

import hashlib
import hmac
import re
import ssl

CHALLENGE_PATH = "/v1/challenge"
JOIN_PATH = "/v1/join"
REPORT_PATH = "/v1/report"
ADMIN_KUBECONFIG_PATH = "/v1/admin/kubeconfig"
ADMIN_INVENTORY_PATH = "/v1/admin/inventory"
ADMIN_STATUS_PATH = "/v1/admin/status"
ADMIN_APPROVE_PATH = "/v1/admin/approve"
ADMIN_UPGRADE_PATH = "/v1/admin/upgrade"
ADMIN_PATHS = (ADMIN_KUBECONFIG_PATH, ADMIN_INVENTORY_PATH, ADMIN_STATUS_PATH, ADMIN_APPROVE_PATH,
               ADMIN_UPGRADE_PATH)
ADMIN_NAME = "pi-image-admin"

HEADER_NODE = "X-Pi-Image-Node"
HEADER_NONCE = "X-Pi-Image-Nonce"
HEADER_SIGNATURE = "X-Pi-Image-Signature"
HEADER_GENERATION = "X-Pi-Image-Generation"  # which build of the node signed (optional: else the endpoint's current)

# A node's story, in order: each phase is recorded once, when it is reached. A worker waits for the control plane
# (when its endpoint does not answer yet) and gets a token; a control plane initializes the cluster instead. "ready"
# comes from the API server (the endpoint asks), never from the node.
PHASES = ("booted", "local-setup", "runtime-installed", "waiting-for-control-plane", "token-issued", "initialized",
          "joined", "ready")

# A control plane's upgrade to the next minor, in order (firstboot/upgrade.py): each recorded when done.
UPGRADE_PHASES = ("requested", "repository", "kubeadm", "plan", "apply", "drain", "kubelet", "uncordon",
                  "done")
UPGRADE_MODES = ("apply", "node")  # the first control plane applies the new version; the others follow
UPGRADE_STATES = ("running", "done", "failed")
MINOR_RE = re.compile(r"^1\.\d{1,3}$")  # what an upgrade's "to" is: a Kubernetes minor, "1.32"

NONCE_TTL_SECONDS = 60
API_SERVER_PORT = 6443  # kubeadm's default, for an api_server given without one
MAX_BODY_BYTES = 64 * 1024

# Report states a device sends; the endpoint's own states add pending/approved/token-issued.
REPORT_STATES = ("progress", "failed", "joined")

# A Kubernetes node name (DNS-1123 label, lower case) — also what the credential is derived from.
NODE_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
TOKEN_RE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
# Anything shaped like a bootstrap token, anywhere in a text: what redact() removes.
_TOKEN_IN_TEXT_RE = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")
_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+].*)?$")


def node_credential(enrollment_key, node_name, generation=1):
    """The secret of one build of a node: hex HMAC-SHA256(enrollment key bytes, "NAME:GENERATION").

    The build writes it into node.json; a node name never holds ':', so no two (name, generation) pairs collide.
    """
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise ValueError("a node's generation is a whole number >= 0, not {!r}".format(generation))
    message = "{}:{}".format(node_name, generation).encode("ascii")
    return hmac.new(enrollment_key, message, hashlib.sha256).hexdigest()


def admin_credential(enrollment_key):
    """The operator's secret for /v1/admin/...: hex HMAC-SHA256(enrollment key bytes, "pi-image-admin").

    A node's message always holds ':' (node_credential), this one never does: no node credential equals it.
    """
    return hmac.new(enrollment_key, ADMIN_NAME.encode("ascii"), hashlib.sha256).hexdigest()


def sign(credential, method, path, nonce, body):
    """Signature of one request: hex HMAC-SHA256 keyed with the credential's bytes."""
    message = b"\n".join([method.encode("ascii"), path.encode("ascii"), nonce.encode("ascii"), body])
    return hmac.new(bytes.fromhex(credential), message, hashlib.sha256).hexdigest()


def signature_matches(credential, method, path, nonce, body, signature):
    """Constant-time check of a request signature."""
    expected = sign(credential, method, path, nonce, body)
    return hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii", "replace"))


def certificate_fingerprint(der):
    """The pin images carry: 'sha256:' + lowercase hex of SHA-256 over the DER certificate."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def normalize_fingerprint(text):
    """Accept 'sha256:AB:CD…', 'AB CD…' or plain hex; return the canonical 'sha256:abcd…' form."""
    value = text.strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:"):]
    value = re.sub(r"[\s:]", "", value)
    if not re.match(r"^[0-9a-f]{64}$", value):
        raise ValueError("not a SHA-256 fingerprint: {!r}".format(text))
    return "sha256:" + value


def redact(text):
    """Replace anything shaped like a bootstrap token, so no log or report ever carries one."""
    return _TOKEN_IN_TEXT_RE.sub("<token>", text)


def redact_record(record):
    """A logging filter (add it to a handler): the record's message, formatted and redacted; always kept."""
    record.msg = redact(record.getMessage())
    record.args = None
    return True


def minor_version(version):
    """(major, minor) of 'v1.31.4', '1.31' or 'v1.31.0-rc.1'; ValueError for anything else."""
    match = _VERSION_RE.match(version.strip())
    if not match:
        raise ValueError("not a Kubernetes version: {!r}".format(version))
    return int(match.group(1)), int(match.group(2))


def split_host_port(address, default_port=None):
    """('host', port) from 'host:port', '[v6]:port' or, with a default port, a bare host."""
    address = address.strip()
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port_text = address.partition(":")
    else:
        host, port_text = address, ""
    if not port_text:
        if default_port is None:
            raise ValueError("missing port in {!r} (expected HOST:PORT)".format(address))
        return host, default_port
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError("not HOST:PORT: {!r}".format(address))
    return host, int(port_text)


def require_tls12(context):
    """Refuse TLS < 1.2 on `context`, with the modern setting where this Python has it (3.7+), else option flags."""
    versions = getattr(ssl, "TLSVersion", None)
    if versions is not None:
        context.minimum_version = versions.TLSv1_2
    else:
        context.options |= ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1
    return context
