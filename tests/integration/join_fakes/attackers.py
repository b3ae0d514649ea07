"""Hostile clients of the token endpoint, each run as a process of its own (the attack must not share the measuring
process's interpreter lock), and what a genuine node sees meanwhile.

    python attackers.py idle HOST:PORT SOCKETS SOURCE      hold SOCKETS idle TCP connections from SOURCE, opening
                                                           a new one as soon as the server drops one
    python attackers.py headers HOST:PORT CONNECTIONS SOURCE
                                                           CONNECTIONS TLS connections each sending a request head
                                                           of 99 headers of 64 KiB, again and again

Both run until SIGTERM and then print one JSON line: how many connections they opened.
"""

import json
import os
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

HUGE_HEADER = b"X-Padding: " + b"a" * (64 * 1024) + b"\r\n"
HEADER_COUNT = 99


class Stop(object):
    """Set by SIGTERM."""

    stopping = False

    @classmethod
    def install(cls):
        signal.signal(signal.SIGTERM, lambda *_: setattr(cls, "stopping", True))


def hold_idle(host, port, count, source):
    """Keep `count` sockets connected and silent; every one the server closes is replaced at once."""
    selector = selectors.DefaultSelector()
    opened = 0

    def open_one():
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((source, 0))
        sock.connect_ex((host, port))
        selector.register(sock, selectors.EVENT_READ)

    for _ in range(count):
        open_one()
        opened += 1
    while not Stop.stopping:
        for key, _ in selector.select(0.2):
            sock = key.fileobj
            try:
                alive = sock.recv(1)
            except BlockingIOError:
                continue
            except OSError:
                alive = b""
            if not alive:
                selector.unregister(sock)
                sock.close()
                open_one()
                opened += 1
    return {"opened": opened}


def flood_headers(host, port, connections, source):
    """`connections` threads, each sending huge request heads over TLS, reconnecting whenever they are cut off."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    head = b"POST /v1/join HTTP/1.1\r\nHost: tokend\r\n" + HUGE_HEADER * HEADER_COUNT + b"\r\n"
    counts = {"opened": 0, "answered": 0}
    lock = threading.Lock()

    def flood():
        while not Stop.stopping:
            try:
                with socket.create_connection((host, port), timeout=5, source_address=(source, 0)) as raw, \
                        context.wrap_socket(raw) as tls:
                    with lock:
                        counts["opened"] += 1
                    tls.sendall(head)
                    answer = tls.recv(64)
                    if answer:
                        with lock:
                            counts["answered"] += 1
            except OSError:
                time.sleep(0.001)

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    while not Stop.stopping:
        time.sleep(0.1)
    return counts


class Attack(object):
    """The attacker processes against `endpoint`: idle sockets from `idle_source`, huge heads from `flood_source`
    (another address, so that its connections get past the per-address cap and are read); start() starts them,
    stop() stops them and returns their counts."""

    def __init__(self, python, endpoint, idle_sockets=600, flood_connections=20, idle_source="127.0.0.1",
                 flood_source="127.0.0.3"):
        self.commands = [[python, __file__, "idle", endpoint, str(idle_sockets), idle_source],
                         [python, __file__, "headers", endpoint, str(flood_connections), flood_source]]
        self.processes = []

    def start(self):
        self.processes = [subprocess.Popen(argv, stdout=subprocess.PIPE) for argv in self.commands]
        return self

    def stop(self):
        results = {}
        for process in self.processes:
            process.terminate()
        for argv, process in zip(self.commands, self.processes, strict=True):
            output, _ = process.communicate(timeout=15)
            results[argv[2]] = json.loads(output.decode() or "{}")
        return results


def genuine_tries(client, seconds, interval):
    """A genuine node asking for a challenge every `interval` s for `seconds`: (answered, tries, slowest answer s).

    Its own address's rate limit applies (a burst of 60, then 2 a second): keep seconds / interval within it."""
    answered, tries, slowest = 0, 0, 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tries += 1
        started = time.monotonic()
        try:
            if client.challenge().status == 200:
                answered += 1
                slowest = max(slowest, time.monotonic() - started)
        except Exception:  # noqa: BLE001 - any failure is a try that was not served
            pass
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    return answered, tries, slowest


def cpu_seconds(pid):
    """User + system CPU seconds the process has used."""
    with open("/proc/{}/stat".format(pid)) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid):
    """The process's peak resident memory (VmHWM) in MB."""
    with open("/proc/{}/status".format(pid)) as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise ValueError("no VmHWM for process {}".format(pid))


def main():
    mode, endpoint, count, source = sys.argv[1:5]
    host, _, port = endpoint.rpartition(":")
    Stop.install()
    attack = {"idle": hold_idle, "headers": flood_headers}[mode]
    print(json.dumps(attack(host, int(port), int(count), source)))


if __name__ == "__main__":
    main()
