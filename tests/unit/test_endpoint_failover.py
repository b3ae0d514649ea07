"""A node of several control planes asks its endpoint, then each fallback in order, and sticks to the one that
answered: real pinned-TLS exchanges with small endpoints on loopback that count who was asked."""

import datetime
import hashlib
import http.server
import json
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firstboot.client import EndpointClient, EndpointUnreachable, PinMismatch


def identity(directory, name):
    """(cert path, key path, pin) of a self-signed server certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / (name + ".crt"), directory / (name + ".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


class CountingEndpoint:
    """An endpoint on 127.0.0.1 that answers the challenge and any POST with its own name, and counts the POSTs."""

    def __init__(self, name, cert, key):
        self.name, self.posts = name, 0
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self._answer({"nonce": "n"})

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.posts += 1
                self._answer({"state": "joined", "by": endpoint.name})

            def _answer(self, payload):
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.address = "127.0.0.1:{}".format(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cluster_identity(tmp_path):
    return identity(tmp_path, "endpoint")


@pytest.fixture
def endpoints(cluster_identity):
    """Start CountingEndpoints by name (all with the cluster's certificate); stopped at the end."""
    started = []

    def start(name, cert_and_key=None):
        cert, key = cert_and_key or cluster_identity[:2]
        started.append(CountingEndpoint(name, cert, key))
        return started[-1]

    yield start
    for endpoint in started:
        endpoint.stop()


def down():
    """HOST:PORT where nothing listens (connection refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return "127.0.0.1:{}".format(probe.getsockname()[1])


def client(pin, endpoint, *fallbacks):
    return EndpointClient(endpoint, pin, "pi-worker1", "00" * 32, timeout=5, fallback_endpoints=fallbacks)


def test_a_node_whose_endpoint_is_down_asks_the_fallbacks_in_order_and_sticks_to_the_one_that_answered(
        cluster_identity, endpoints):
    second, third = endpoints("pi-master2"), endpoints("pi-master3")
    node = client(cluster_identity[2], down(), second.address, third.address)

    answers = [node.join({}).payload["by"] for _ in range(3)]

    assert answers == ["pi-master2"] * 3 and (second.posts, third.posts) == (3, 0)
    assert node.answered == second.address
    second.stop()

    assert node.report("progress").payload["by"] == "pi-master3", "the next one, once the sticky one is gone"
    assert node.answered == third.address


def test_an_answer_from_the_first_endpoint_is_never_failed_over(cluster_identity, endpoints):
    first, second = endpoints("pi-master1"), endpoints("pi-master2")
    node = client(cluster_identity[2], first.address, second.address)

    assert node.join({}).payload["by"] == "pi-master1"
    assert (first.posts, second.posts) == (1, 0)


def test_an_endpoint_with_another_certificate_is_passed_over_and_nothing_is_sent_to_it(
        tmp_path, cluster_identity, endpoints):
    impostor = endpoints("impostor", identity(tmp_path, "impostor")[:2])
    genuine = endpoints("pi-master2")
    node = client(cluster_identity[2], impostor.address, genuine.address)

    assert node.join({}).payload["by"] == "pi-master2"
    assert impostor.posts == 0


def test_when_no_endpoint_answers_one_line_names_each_one_tried(cluster_identity):
    addresses = [down(), down(), down()]

    with pytest.raises(EndpointUnreachable) as raised:
        client(cluster_identity[2], *addresses).join({})

    assert not isinstance(raised.value, PinMismatch)
    message = str(raised.value)
    assert message.startswith("no token endpoint answered: ")
    assert [message.index("cannot reach " + address) for address in addresses] == \
        sorted(message.index("cannot reach " + address) for address in addresses)


def test_a_single_endpoint_fails_as_before(cluster_identity):
    address = down()

    with pytest.raises(EndpointUnreachable, match="^cannot reach {}: ".format(address)):
        client(cluster_identity[2], address).join({})


def test_an_impostor_where_the_rest_is_down_is_a_pin_mismatch(tmp_path, cluster_identity, endpoints):
    impostor = endpoints("impostor", identity(tmp_path, "impostor")[:2])

    with pytest.raises(PinMismatch, match="presented certificate"):
        client(cluster_identity[2], down(), impostor.address).join({})
