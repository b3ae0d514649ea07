"""A hostile client floods the endpoint from one address; genuine nodes at other addresses are served all along, the
server's memory stays small and the audit log stays short. (bench/attack_bench.py measures the same, with tighter
goals; these bounds leave room for a busy CI machine.)"""

import logging
import os
import socket
import ssl
import stat
import time

from join_fakes.attackers import Attack, genuine_tries, peak_rss_mb
from join_fakes.harness import FIRSTBOOT_PYTHON, run_agent, wait_for

from firstboot.client import EndpointClient
from firstboot.endpoint.audit import (
    AUDIT_LOG_BACKUPS,
    RefusalLog,
    audit,
    configure_logging,
)

GENUINE = "127.0.0.2"  # any 127/8 address is this machine's on Linux: a node at an address of its own


def state_bytes(world):
    state = world.cluster.directory / "state"
    return {path.name: path.stat().st_size for path in state.iterdir()}


def test_a_genuine_node_is_served_and_joins_while_one_address_floods_the_endpoint(join_lab):
    root = join_lab.node_root()
    client = EndpointClient(join_lab.server.endpoint, join_lab.cluster.endpoint_fingerprint, "pi-worker1",
                            join_lab.credential(), timeout=3, source_address=(GENUINE, 0))
    before = state_bytes(join_lab)
    attack = Attack(FIRSTBOOT_PYTHON, join_lab.server.endpoint).start()
    started = time.monotonic()
    try:
        time.sleep(2)  # the flood is in full swing: 600 sockets held, huge heads streaming in
        answered, tries, _ = genuine_tries(client, seconds=6, interval=0.2)
        join_started = time.monotonic()
        joined = run_agent(root, join_lab.fake, address=GENUINE, timeout=60)
        join_seconds = time.monotonic() - join_started
        peak_mb = peak_rss_mb(join_lab.server.process.pid)
    finally:
        counts = attack.stop()
    minutes = (time.monotonic() - started) / 60
    after = state_bytes(join_lab)

    assert counts["idle"]["opened"] > 600 and counts["headers"]["opened"] > 20, "the attack ran"
    assert answered >= 0.9 * tries, "served on {} of {} tries".format(answered, tries)
    assert joined.returncode == 0, joined.stderr
    assert join_seconds < 15
    assert peak_mb < 100
    growth = sum(after.values()) - sum(before.values())
    assert growth < minutes * 1024 * 1024, "audit log and state grew by {} bytes".format(growth)
    audit_log = join_lab.server.audit_log()
    assert "decision=refused-address-cap node=- address=127.0.0.1" in audit_log
    assert "decision=refused-headers node=- address=127.0.0.3" in audit_log
    assert "address=" + GENUINE in audit_log and "decision=token-issued node=pi-worker1" in audit_log


def test_idle_connections_are_cut_within_the_handshake_deadline(join_lab):
    silent = [socket.create_connection(("127.0.0.1", join_lab.server.port)) for _ in range(3)]
    started = time.monotonic()

    for sock in silent:
        sock.settimeout(5)
        assert sock.recv(1) == b""

    assert time.monotonic() - started < 3.5  # 2 s to handshake and send a first request, the watchdog's tick


def test_heads_over_the_caps_are_refused_while_they_are_read(join_lab):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    heads = {"too many headers": b"".join(b"X-Header-%d: x\r\n" % n for n in range(40)),
             "one header too long": b"X-Long: " + b"a" * 9000 + b"\r\n"}
    for reason, headers in heads.items():
        with socket.create_connection(("127.0.0.1", join_lab.server.port), timeout=5) as raw, \
                context.wrap_socket(raw) as tls:
            tls.sendall(b"GET /v1/challenge HTTP/1.1\r\nHost: tokend\r\n" + headers + b"\r\n")

            assert tls.recv(4096).startswith(b"HTTP/1.1 431"), reason

    client = EndpointClient(join_lab.server.endpoint, join_lab.cluster.endpoint_fingerprint, "pi-worker1",
                            join_lab.credential())
    assert client.challenge().status == 200, "a genuine head is well under the caps"
    wait_for(lambda: "decision=refused-headers" in join_lab.server.audit_log())


def test_refusals_from_one_address_are_summarised_not_logged_one_by_one():
    clock = [100.0]
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("pi-image.audit")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        refusals = RefusalLog(interval=10.0, clock=lambda: clock[0])
        for _ in range(5123):
            refusals.refused("refused-address-cap", "127.0.0.1")
        refusals.refused("refused-address-cap", "127.0.0.2")
        refusals.flush()
        clock[0] += 10.5
        refusals.flush()
    finally:
        logger.removeHandler(handler)

    assert lines == ["decision=refused-address-cap node=- address=127.0.0.1",
                     "decision=refused-address-cap node=- address=127.0.0.2",
                     "decision=refused-address-cap node=- address=127.0.0.1 detail=refused 5122 more connections in "
                     "the last 10 s"]


def test_the_audit_log_rotates_under_its_cap_and_every_file_is_private(tmp_path):
    previous = os.umask(0o022)
    try:
        configure_logging(str(tmp_path), max_bytes=4096)
        for number in range(2000):
            audit("refused-signature", "pi-worker{}".format(number), "192.168.6.66")
    finally:
        os.umask(previous)
        for handler in logging.getLogger("pi-image").handlers:
            handler.close()
        logging.getLogger("pi-image").handlers = []

    files = sorted(path.name for path in tmp_path.iterdir())
    assert files == ["audit.log"] + ["audit.log.{}".format(n) for n in range(1, AUDIT_LOG_BACKUPS + 1)]
    assert all((tmp_path / name).stat().st_size <= 4096 for name in files)
    assert {stat.S_IMODE((tmp_path / name).stat().st_mode) for name in files} == {0o600}
    assert "pi-worker1999" in (tmp_path / "audit.log").read_text()

