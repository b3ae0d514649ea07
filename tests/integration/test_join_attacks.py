"""Hostile clients get nothing: every attack is refused and no bootstrap token is created."""

import http.client
import json
import socket
import ssl
import threading
import time

import pytest
from join_fakes.harness import make_server_certificate, run_agent, wait_for

from firstboot import protocol
from firstboot.client import EndpointClient, PinMismatch

FACTS = {"arch": "aarch64", "os": "Ubuntu", "kubeadm_version": "v1.31.4", "macs": [], "node_ip": "192.168.6.15"}


def unpinned_connection(endpoint):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    host, port = protocol.split_host_port(endpoint)
    return http.client.HTTPSConnection(host, port, context=context, timeout=10)


def challenge(connection):
    connection.request("GET", protocol.CHALLENGE_PATH)
    return json.loads(connection.getresponse().read())["nonce"]


def post(connection, node, body, nonce, signature, path=protocol.JOIN_PATH):
    connection.request("POST", path, body=body, headers={
        protocol.HEADER_NODE: node, protocol.HEADER_NONCE: nonce, protocol.HEADER_SIGNATURE: signature})
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def join_body(node):
    return json.dumps(dict(FACTS, node=node)).encode()


def assert_nothing_issued(world):
    assert world.fake.created_tokens() == []
    assert world.fake.cluster()["tokens"] == {}


def test_request_signed_with_a_wrong_credential_is_refused(join_lab):
    connection = unpinned_connection(join_lab.server.endpoint)
    nonce = challenge(connection)
    body = join_body("pi-worker1")
    forged = protocol.sign("00" * 32, "POST", protocol.JOIN_PATH, nonce, body)

    status, answer = post(connection, "pi-worker1", body, nonce, forged)

    assert status == 401 and "token" not in answer
    assert_nothing_issued(join_lab)
    assert "decision=refused-signature node=pi-worker1" in join_lab.server.audit_log()


def test_replayed_request_is_refused_because_its_nonce_was_spent(join_lab):
    connection = unpinned_connection(join_lab.server.endpoint)
    nonce = challenge(connection)
    body = join_body("pi-worker1")
    signature = protocol.sign(join_lab.credential(), "POST", protocol.JOIN_PATH, nonce, body)
    first_status, _ = post(connection, "pi-worker1", body, nonce, signature)

    replay_status, answer = post(unpinned_connection(join_lab.server.endpoint), "pi-worker1", body, nonce, signature)

    assert first_status == 200
    assert replay_status == 401 and "token" not in answer
    assert len(join_lab.fake.created_tokens()) == 1, "only the genuine request got a token"


def test_request_with_an_expired_nonce_is_refused(make_join_lab):
    world = make_join_lab(server_args=["--nonce-ttl", "0.3"])
    world.server.start()
    connection = unpinned_connection(world.server.endpoint)
    nonce = challenge(connection)
    body = join_body("pi-worker1")
    signature = protocol.sign(world.credential(), "POST", protocol.JOIN_PATH, nonce, body)
    time.sleep(0.5)

    status, answer = post(connection, "pi-worker1", body, nonce, signature)

    assert status == 401 and "token" not in answer
    assert_nothing_issued(world)


def test_node_missing_from_the_inventory_is_refused_even_with_a_valid_credential(join_lab):
    intruder = join_lab.credential("intruder")  # derivable only with the enrollment key, yet not in the inventory
    connection = unpinned_connection(join_lab.server.endpoint)
    nonce = challenge(connection)
    body = join_body("intruder")

    status, answer = post(connection, "intruder", body, nonce,
                          protocol.sign(intruder, "POST", protocol.JOIN_PATH, nonce, body))

    assert status == 403 and "not in this cluster's inventory" in answer["error"]
    assert_nothing_issued(join_lab)


def test_oversized_body_is_refused_without_being_read(join_lab):
    connection = unpinned_connection(join_lab.server.endpoint)
    nonce = challenge(connection)
    body = b"{" + b" " * protocol.MAX_BODY_BYTES + b"}"

    status, answer = post(connection, "pi-worker1", body, nonce,
                          protocol.sign(join_lab.credential(), "POST", protocol.JOIN_PATH, nonce, body))

    assert status == 413
    assert_nothing_issued(join_lab)


def test_plain_http_gets_no_answer(join_lab):
    host, port = protocol.split_host_port(join_lab.server.endpoint)
    connection = http.client.HTTPConnection(host, port, timeout=5)

    with pytest.raises((http.client.HTTPException, OSError)):
        connection.request("GET", protocol.CHALLENGE_PATH)
        connection.getresponse().read()

    wait_for(lambda: "decision=refused-tls" in join_lab.server.audit_log())
    assert_nothing_issued(join_lab)


def test_agent_refuses_an_endpoint_whose_certificate_is_not_the_pinned_one(join_lab):
    root = join_lab.node_root()
    config_path = root / "etc/pi-image/node.json"
    config = json.loads(config_path.read_text())
    config["endpoint_fingerprint"] = "sha256:" + "ab" * 32
    config_path.write_text(json.dumps(config))

    result = run_agent(root, join_lab.fake, "--max-attempts", "2")

    assert result.returncode == 1
    assert "refusing to talk to it" in result.stderr
    assert join_lab.fake.calls("kubeadm", "join") == []
    assert_nothing_issued(join_lab)
    with pytest.raises(PinMismatch):
        EndpointClient(join_lab.server.endpoint, "sha256:" + "ab" * 32, "pi-worker1", join_lab.credential()).join(FACTS)


def test_slow_clients_are_cut_off_and_do_not_block_genuine_nodes(make_join_lab):
    world = make_join_lab(server_args=["--connection-seconds", "1.0"])
    world.server.start()
    host, port = protocol.split_host_port(world.server.endpoint)
    silent = socket.create_connection((host, port))  # never even starts the TLS handshake
    trickler = unpinned_connection(world.server.endpoint)
    trickler.connect()
    trickler.sock.sendall(b"POST /v1/join HTTP/1.1\r\n")
    started = time.monotonic()

    genuine = EndpointClient(world.server.endpoint, world.cluster.endpoint_fingerprint, "pi-worker1",
                             world.credential()).join(FACTS)
    cut_off = False
    while time.monotonic() - started < 5 and not cut_off:
        try:
            trickler.sock.sendall(b"X")  # one header byte at a time, well inside any per-read timeout
            time.sleep(0.2)
        except OSError:
            cut_off = True

    assert genuine.status == 200, "a genuine node is served while slow clients hold connections"
    assert cut_off and time.monotonic() - started < 3
    silent.settimeout(3)
    assert silent.recv(1) == b"", "a client that never handshakes is disconnected too"
    assert len(world.fake.created_tokens()) == 1


class ShapeShiftingServer:
    """Answers the first connection with the pinned certificate (a challenge, then "Connection: close") and presents
    another certificate on the next one: what an attacker who can take over the address between two connections
    does. Records what each connection sent."""

    def __init__(self, directory):
        self.genuine = make_server_certificate(directory, "genuine")
        self.impostor = make_server_certificate(directory, "impostor")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = "127.0.0.1:{}".format(self.listener.getsockname()[1])
        self.received = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        for cert, key, _ in (self.genuine, self.impostor):
            raw, _ = self.listener.accept()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(cert), str(key))
            with context.wrap_socket(raw, server_side=True) as tls:
                tls.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = tls.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                self.received.append(data)
                if cert == self.genuine[0]:
                    body = b'{"nonce": "n0nce", "expires_in": 60}'
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def test_agent_checks_the_pin_again_when_it_reconnects(tmp_path):
    server = ShapeShiftingServer(tmp_path)
    client = EndpointClient(server.endpoint, server.genuine[2], "pi-worker1", "11" * 32)

    with pytest.raises(PinMismatch, match="refusing to talk to it"):
        client.join(FACTS)  # the challenge's answer closed the connection: the signed POST needs a new one

    server.thread.join(10)
    challenge, after_reconnecting = server.received
    assert challenge.startswith(b"GET /v1/challenge ")
    assert after_reconnecting == b"", "not a byte - no signature, no body - went to the other certificate"


def test_a_credential_joins_once_and_a_copy_of_the_card_is_refused_with_the_reason(join_lab):
    root = join_lab.node_root()
    assert run_agent(root, join_lab.fake).returncode == 0
    credential = json.loads((root / "etc/pi-image/node.json").read_text())["credential"]
    copy = EndpointClient(join_lab.server.endpoint, join_lab.cluster.endpoint_fingerprint, "pi-worker1", credential)

    answer = copy.join(FACTS)

    assert answer.status == 409
    assert "already joined with this image (generation 1)" in answer.error and "build its image again" in answer.error
    assert len(join_lab.fake.created_tokens()) == 1
    assert "decision=refused-credential-used node=pi-worker1" in join_lab.server.audit_log()
    assert join_lab.state()["state"] == "joined", "the joined node itself is fine"


def test_the_old_card_of_a_rebuilt_node_can_neither_authenticate_nor_remove_its_namesake(join_lab):
    old_card = join_lab.node_root()
    join_lab.node_root()  # `pi-image build` of the node again: generation 2, the old card's credential is dead
    join_lab.fake.set_node("pi-worker1", "NotReady")

    result = run_agent(old_card, join_lab.fake, "--max-attempts", "2")

    assert result.returncode == 1 and "authentication failed" in result.stderr
    assert not [args for args in join_lab.fake.calls("kubectl") if args[2:4] == ["delete", "node"]]
    assert join_lab.fake.cluster()["nodes"] == {"pi-worker1": "NotReady"}
    assert_nothing_issued(join_lab)
    assert "signed by the image of an older build (generation 1 of 2)" in join_lab.server.audit_log()
