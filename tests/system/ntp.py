"""An SNTP server on the host's 127.0.0.1:123 (UDP), which the guest's systemd-timesyncd reaches at 10.0.2.2.

It stands in for pool.ntp.org, nothing more: it answers each client request (RFC 4330, mode 3) with the host's
clock (mode 4, stratum 2). What the test proves happens in the guest: the real timesyncd steps the real clock, and
the agent's apt gets through once the clock is right. Binding port 123 needs root, which the boot test has.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP's epoch) to 1970-01-01


def _timestamp(unix_time: float) -> bytes:
    seconds = unix_time + NTP_EPOCH_OFFSET
    return struct.pack(">II", int(seconds), int((seconds % 1) * (1 << 32)))


class SntpServer:
    """Serves until stop(); `answered` counts the replies."""

    def __init__(self, address: tuple[str, int] = ("127.0.0.1", 123)):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.5)
        self.answered = 0
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> SntpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._running = False
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while self._running:
            try:
                request, client = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            if len(request) < 48 or request[0] & 0x7 != 3:  # not a client request
                continue
            received = time.time()
            version = (request[0] >> 3) & 0x7
            header = bytes([(version << 3) | 4, 2, request[2], 0xEC])  # no leap warning, server, stratum 2, poll
            reply = (header + struct.pack(">II", 0, 0) + b"LOCL" + _timestamp(received) + request[40:48]
                     + _timestamp(received) + _timestamp(time.time()))
            self.sock.sendto(reply, client)
            self.answered += 1
