"""The join protocol's building blocks: credentials, signatures, discovery hash, JoinConfiguration, nonces, limits."""

import datetime
import hashlib
import hmac
import json

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from firstboot import joinconfig, protocol
from firstboot.endpoint import discovery
from firstboot.endpoint.guards import (
    ConnectionSlots,
    NonceBook,
    RateLimiter,
    TooManyNonces,
)
from firstboot.endpoint.kube import (
    ClusterAdmin,
    bootstrap_token_secret,
    new_bootstrap_token,
)
from firstboot.endpoint.settings import ServerSettings, SettingsError


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_node_credential_is_hmac_sha256_of_name_and_generation_under_the_enrollment_key():
    key = bytes(range(32))
    expected = hmac.new(key, b"pi-worker1:3", hashlib.sha256).hexdigest()

    assert protocol.node_credential(key, "pi-worker1", 3) == expected
    assert protocol.node_credential(key, "pi-worker1") == protocol.node_credential(key, "pi-worker1", 1)
    assert len({protocol.node_credential(key, name, generation)
                for name in ("pi-worker1", "pi-worker2") for generation in (1, 2, 3)}) == 6
    for wrong in (-1, "2", True, 1.0):
        with pytest.raises(ValueError):
            protocol.node_credential(key, "pi-worker1", wrong)


def _tokend_json(tmp_path, nodes):
    (tmp_path / "enrollment.key").write_text("00" * 32)
    path = tmp_path / "tokend.json"
    path.write_text(json.dumps({"api_server": "10.0.0.1:6443", "node_subnet": "10.0.0.0/24", "listen": ":8443",
                                "nodes": nodes, "enrollment_key_file": "enrollment.key", "tls_cert_file": "c",
                                "tls_key_file": "k", "ca_cert_file": "ca", "kubeconfig": "admin.conf"}))
    return path


def test_inventory_maps_nodes_to_generations_and_an_older_list_means_generation_1(tmp_path):
    mapping = ServerSettings(str(_tokend_json(tmp_path, {"pi-worker1": 3, "pi-worker2": 0})))
    assert (mapping.generation("pi-worker1"), mapping.generation("pi-worker2")) == (3, 0)
    assert mapping.generation("pi-approved-stranger") == 1 and mapping.known_nodes() == {"pi-worker1", "pi-worker2"}

    listed = ServerSettings(str(_tokend_json(tmp_path, ["pi-worker1"])))
    assert listed.generation("pi-worker1") == 1 and listed.known_nodes() == {"pi-worker1"}

    with pytest.raises(SettingsError, match="'nodes' must map each node name to its generation"):
        ServerSettings(str(_tokend_json(tmp_path, {"pi-worker1": "3"})))


def test_a_broken_inventory_change_keeps_the_running_endpoint_on_the_last_good_one(tmp_path):
    path = _tokend_json(tmp_path, {"pi-worker1": 2})
    settings = ServerSettings(str(path))
    path.write_text("{ half written")

    assert settings.generation("pi-worker1") == 2


@pytest.mark.parametrize("tamper", ["method", "path", "nonce", "body", "credential"])
def test_signature_breaks_if_any_signed_part_changes(tamper):
    parts = {"credential": "11" * 32, "method": "POST", "path": "/v1/join", "nonce": "abc", "body": b'{"node":"a"}'}
    signature = protocol.sign(**parts)
    changed = dict(parts, **{tamper: {"credential": "22" * 32, "method": "GET", "path": "/v1/report", "nonce": "abd",
                                      "body": b'{"node":"b"}'}[tamper]})

    assert protocol.signature_matches(signature=signature, **parts)
    assert not protocol.signature_matches(signature=signature, **changed)
    assert not protocol.signature_matches(signature="\u00e9" * 64, **parts), "non-ASCII junk is just a mismatch"


def _certificate(key):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1()),
                                 rsa.generate_private_key(public_exponent=65537, key_size=2048)],
                         ids=["ecdsa-p256", "ecdsa-p384", "rsa-2048"])
def test_discovery_hash_equals_sha256_of_the_spki_for_rsa_and_ecdsa_cas(key):
    cert = _certificate(key)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()

    assert discovery.discovery_hashes_from_pem(pem) == ["sha256:" + hashlib.sha256(spki).hexdigest()]


def test_discovery_hash_gives_one_hash_per_ca_in_a_bundle():
    pems = [_certificate(ec.generate_private_key(ec.SECP256R1())).public_bytes(serialization.Encoding.PEM).decode()
            for _ in range(2)]

    assert len(set(discovery.discovery_hashes_from_pem("".join(pems)))) == 2


@pytest.mark.parametrize("junk", [b"", b"\x30", b"\x30\x84\xff\xff\xff\xff", b"\x02\x01\x00", b"\x30\x03\x30\x01"])
def test_discovery_hash_rejects_malformed_certificates(junk):
    with pytest.raises(ValueError):
        discovery.discovery_hash(junk)


def test_fingerprints_are_normalized_from_the_usual_spellings():
    plain = "sha256:" + "ab" * 32

    assert protocol.normalize_fingerprint(":".join(["AB"] * 32)) == plain
    assert protocol.normalize_fingerprint("SHA256:" + "AB" * 32) == plain
    with pytest.raises(ValueError):
        protocol.normalize_fingerprint("sha1:abcd")


def test_anything_token_shaped_is_redacted():
    token = new_bootstrap_token()

    assert protocol.TOKEN_RE.match(token)
    assert token not in protocol.redact("kubeadm join --token {} failed".format(token))
    assert protocol.redact("node pi-worker1 at 192.168.6.15") == "node pi-worker1 at 192.168.6.15"


@pytest.mark.parametrize("text,expected", [("v1.31.4", (1, 31)), ("1.30", (1, 30)), ("v1.32.0-rc.1", (1, 32))])
def test_minor_version_reads_kubernetes_versions(text, expected):
    assert protocol.minor_version(text) == expected


@pytest.mark.parametrize("text,expected", [("10.0.0.1:6443", ("10.0.0.1", 6443)), ("[fd00::1]:8443", ("fd00::1", 8443)),
                                           ("master.lan:8443", ("master.lan", 8443))])
def test_host_port_parsing_handles_ipv4_ipv6_and_names(text, expected):
    assert protocol.split_host_port(text) == expected


@pytest.mark.parametrize("version,api,node_ip", [
    ("v1.31.4", "kubeadm.k8s.io/v1beta4", [{"name": "node-ip", "value": "192.168.6.15"}]),
    ("v1.30.2", "kubeadm.k8s.io/v1beta3", {"node-ip": "192.168.6.15"}),
])
def test_join_configuration_uses_the_schema_of_the_nodes_kubeadm(version, api, node_ip):
    text = joinconfig.render(version, "10.0.0.1:6443", "abcdef.0123456789abcdef", ["sha256:" + "0" * 64],
                             "pi-worker1", "192.168.6.15", "docker")

    config = yaml.safe_load(text)

    assert config["apiVersion"] == api and config["kind"] == "JoinConfiguration"
    assert config["nodeRegistration"]["kubeletExtraArgs"] == node_ip
    assert config["nodeRegistration"]["criSocket"] == "unix:///var/run/cri-dockerd.sock"
    assert config["discovery"]["bootstrapToken"] == {"apiServerEndpoint": "10.0.0.1:6443",
                                                     "token": "abcdef.0123456789abcdef",
                                                     "caCertHashes": ["sha256:" + "0" * 64]}


def test_nonce_is_accepted_once_and_only_before_it_expires():
    clock = FakeClock()
    book = NonceBook(60, clock=clock)
    fresh, stale = book.issue(), book.issue()

    assert book.consume(fresh)
    assert not book.consume(fresh), "a nonce is one-time"
    clock.now += 61
    assert not book.consume(stale), "an expired nonce is refused"
    assert not book.consume("never-issued")


def test_challenge_flood_is_bounded():
    clock = FakeClock()
    book = NonceBook(60, capacity=3, clock=clock)
    for _ in range(3):
        book.issue()

    with pytest.raises(TooManyNonces):
        book.issue()
    clock.now += 61
    assert book.issue(), "expired nonces make room again"


def test_connection_slots_cap_each_address_and_the_whole_server():
    slots = ConnectionSlots(total=3, per_address=2)

    assert [slots.take("10.0.0.9") for _ in range(3)] == [None, None, "refused-address-cap"]
    assert slots.take("10.0.0.8") is None
    assert slots.take("10.0.0.7") == "refused-busy"
    slots.release("10.0.0.9")
    assert slots.take("10.0.0.7") is None, "a slot given back is free for anyone"


def test_a_bootstrap_token_is_the_secret_kubeadm_itself_would_create():
    token = new_bootstrap_token()

    secret = bootstrap_token_secret(token, "pi-image pi-worker1", 1700000000)

    token_id, token_secret = token.split(".")
    assert secret["type"] == "bootstrap.kubernetes.io/token"
    assert secret["metadata"] == {"name": "bootstrap-token-" + token_id, "namespace": "kube-system"}
    assert secret["stringData"] == {
        "token-id": token_id, "token-secret": token_secret, "description": "pi-image pi-worker1",
        "expiration": "2023-11-14T22:13:20Z", "usage-bootstrap-authentication": "true",
        "usage-bootstrap-signing": "true", "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token"}


def test_rate_limiter_allows_a_burst_then_refills_at_its_rate():
    clock = FakeClock()
    limiter = RateLimiter(per_minute=60, burst=2, clock=clock)

    assert [limiter.allow("10.0.0.9") for _ in range(3)] == [True, True, False]
    assert limiter.allow("10.0.0.8"), "other keys have their own bucket"
    clock.now += 1.0
    assert limiter.allow("10.0.0.9")


class ScriptedKubectl:
    """kubectl that knows one NotReady node; counts its calls."""

    def __init__(self):
        self.calls = []

    def run(self, argv, input_text=None, timeout=None):
        from firstboot.commands import CommandResult

        self.calls.append(argv[3:])
        if argv[3:6] == ["get", "nodes", "-o"]:
            return CommandResult(argv, 0, "node/pi-old\n", "")
        if argv[3:5] == ["get", "node"] and argv[5] == "pi-old":
            return CommandResult(argv, 0, '{"status": {"conditions": [{"type": "Ready", "status": "False"}]}}', "")
        return CommandResult(argv, 1, "", 'Error from server (NotFound): nodes "{}" not found'.format(argv[5]))


def test_a_burst_of_fresh_nodes_costs_one_node_listing_while_listed_names_are_looked_up_fresh():
    clock = FakeClock()
    kubectl = ScriptedKubectl()
    admin = ClusterAdmin(kubectl, "/etc/kubernetes/admin.conf", clock=clock)

    assert [admin.node_ready("pi-new-{}".format(i)) for i in range(50)] == [None] * 50
    assert admin.node_ready("pi-old") is False
    assert kubectl.calls == [["get", "nodes", "-o", "name"], ["get", "node", "pi-old", "-o", "json"]]
    clock.now += 1.5
    admin.node_ready("pi-new-0")
    assert kubectl.calls[-1] == ["get", "nodes", "-o", "name"], "the list is refreshed after a second"
