"""The device side of the join protocol: pinned-TLS requests to the token endpoint.

The endpoint's certificate is trusted only if its SHA-256 fingerprint equals the pin in node.json — no CA, no
hostname, no validity dates (the Pi's clock may still be in 1970). The pin is checked on every connection, before a
byte is sent on it: also when http.client reconnects by itself because the server closed the last connection.
"""

import contextlib
import functools
import http.client
import json
import ssl

from . import protocol

MAX_ANSWER_BYTES = 256 * 1024


class EndpointUnreachable(Exception):
    """The endpoint could not be reached or did not speak the protocol (retry later)."""


class PinMismatch(EndpointUnreachable):
    """The server's certificate is not the pinned one: not our endpoint, nothing was sent."""


class Answer(object):
    """HTTP status and decoded JSON of one endpoint answer."""

    def __init__(self, status, payload, retry_after=None):
        self.status = status
        self.payload = payload
        self.retry_after = retry_after

    @property
    def error(self):
        return str(self.payload.get("error", "")) or "HTTP {}".format(self.status)


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection that checks the pin each time it connects, whoever calls connect() (http.client does when
    a request follows an answer that closed the connection)."""

    def __init__(self, host, port, fingerprint, **options):
        http.client.HTTPSConnection.__init__(self, host, port, **options)
        self.fingerprint = fingerprint

    def connect(self):
        http.client.HTTPSConnection.connect(self)
        der = self.sock.getpeercert(binary_form=True)
        presented = protocol.certificate_fingerprint(der) if der else "(none)"
        if presented != self.fingerprint:
            self.close()
            raise PinMismatch("{}:{} presented certificate {} but this image pins {}; refusing to talk to it".format(
                self.host, self.port, presented, self.fingerprint))


class EndpointClient(object):
    """Signed requests for one node to one endpoint; each exchange is challenge + POST on one connection."""

    def __init__(self, endpoint, fingerprint, node, credential, timeout=15.0, source_address=None, generation=None):
        """`generation`: which build of the node the credential is (node.json's), sent so that an endpoint whose
        inventory is older than the card still knows which credential to check."""
        self.host, self.port = protocol.split_host_port(endpoint)
        self.generation = generation
        self.fingerprint = protocol.normalize_fingerprint(fingerprint)
        self.node = node
        self.credential = credential
        self.timeout = timeout
        self.source_address = source_address
        self._tls = _pinning_tls_context()

    def join(self, facts):
        """Ask for a bootstrap token; `facts` are macs, arch, os, kubeadm_version, node_ip."""
        body = dict(facts)
        body["node"] = self.node
        return self._exchange(protocol.JOIN_PATH, body)

    def report(self, state, message=""):
        """Tell the endpoint how far the node got ('progress', 'failed', 'joined')."""
        return self._exchange(protocol.REPORT_PATH,
                              {"node": self.node, "state": state, "message": protocol.redact(message)})

    def admin_kubeconfig(self):
        """The cluster's admin kubeconfig (a client made with protocol.ADMIN_NAME and the admin credential)."""
        return self._exchange(protocol.ADMIN_KUBECONFIG_PATH, {})

    def admin_sync_inventory(self, nodes):
        """Push the inventory ({name: generation}) to the endpoint (an admin client, as for admin_kubeconfig)."""
        return self._exchange(protocol.ADMIN_INVENTORY_PATH, {"nodes": nodes})

    def challenge(self):
        """Only GET /v1/challenge on a pinned connection: is our endpoint there and answering? (probes, benches)"""
        with self._connection() as connection:
            return _request(connection, "GET", protocol.CHALLENGE_PATH)

    @contextlib.contextmanager
    def _connection(self):
        """A connected PinnedHTTPSConnection, closed afterwards; transport errors become EndpointUnreachable."""
        connection = PinnedHTTPSConnection(self.host, self.port, self.fingerprint, timeout=self.timeout,
                                           context=self._tls, source_address=self.source_address)
        try:
            connection.connect()
        except (OSError, ssl.SSLError, http.client.HTTPException) as err:
            connection.close()
            raise EndpointUnreachable("cannot reach {}:{}: {}".format(self.host, self.port, err))
        try:
            yield connection
        except (OSError, ssl.SSLError, http.client.HTTPException) as err:
            raise EndpointUnreachable("exchange with {}:{} failed: {}".format(self.host, self.port, err))
        finally:
            connection.close()

    def _exchange(self, path, payload):
        with self._connection() as connection:
            challenge = _request(connection, "GET", protocol.CHALLENGE_PATH)
            nonce = challenge.payload.get("nonce")
            if challenge.status != 200 or not isinstance(nonce, str):
                return challenge
            body = json.dumps(payload, sort_keys=True).encode("utf-8")
            headers = {
                "Content-Type": "application/json",
                protocol.HEADER_NODE: self.node,
                protocol.HEADER_NONCE: nonce,
                protocol.HEADER_SIGNATURE: protocol.sign(self.credential, "POST", path, nonce, body),
            }
            if self.generation is not None:
                headers[protocol.HEADER_GENERATION] = str(self.generation)
            return _request(connection, "POST", path, body, headers)


@functools.lru_cache(maxsize=1)
def _pinning_tls_context():
    """One shared client context (building one costs more than a handshake): no CA, no hostname — the pin decides."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # trust comes from the pin, checked by PinnedHTTPSConnection.connect
    return protocol.require_tls12(context)


def _request(connection, method, path, body=None, headers=None):
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    raw = response.read(MAX_ANSWER_BYTES + 1)
    if len(raw) > MAX_ANSWER_BYTES:
        raise EndpointUnreachable("answer from the endpoint is too large")
    try:
        payload = json.loads(raw.decode("utf-8")) if raw else {}
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    retry_after = response.getheader("Retry-After")
    return Answer(response.status, payload, float(retry_after) if retry_after and retry_after.isdigit() else None)

