"""The token endpoint's defences that do not depend on HTTP: connection slots, one-time nonces, rate limits and
connection deadlines."""

import collections
import secrets
import socket
import struct
import threading
import time

_LINGER_NOT_AT_ALL = struct.pack("ii", 1, 0)  # SO_LINGER on with 0 s: close() sends a reset


class ConnectionSlots(object):
    """Admission at accept: at most `total` connections at once, and at most `per_address` from one source address.

    Checked before a thread or a TLS handshake is spent on a connection, so a client holding hundreds of sockets open
    only ever occupies its own few slots while every other address is served.
    """

    def __init__(self, total, per_address):
        self.total = total
        self.per_address = per_address
        self._held = {}
        self._count = 0
        self._lock = threading.Lock()

    def take(self, address):
        """None if a connection from `address` may go on (give its slot back with release()), else the audit decision
        that refuses it: 'refused-address-cap' or 'refused-busy'."""
        with self._lock:
            held = self._held.get(address, 0)
            if held >= self.per_address:
                return "refused-address-cap"
            if self._count >= self.total:
                return "refused-busy"
            self._held[address] = held + 1
            self._count += 1
        return None

    def release(self, address):
        with self._lock:
            held = self._held.pop(address) - 1
            if held:
                self._held[address] = held
            self._count -= 1


class HeldConnections(object):
    """Connections refused at accept, kept open - unread, without a thread - for `hold_seconds`, then reset.

    Reset at once, a refused socket is back in the accept queue a moment later: a client that reopens each socket as
    soon as it is dropped made the server accept thousands of connections a second, and the interpreter time that
    took delayed every genuine request. Held, each of its sockets costs one accept per `hold_seconds`. At most
    `capacity` are held (one descriptor each); beyond that, refused connections are reset at once.
    """

    def __init__(self, hold_seconds, capacity, clock=time.monotonic):
        self.hold_seconds = hold_seconds
        self.capacity = capacity
        self._clock = clock
        self._held = collections.deque()  # (reset time, socket), in the order they were refused

    def hold(self, sock):
        """Keep `sock` until its time is up; False if there is no room (the caller resets it)."""
        if len(self._held) >= self.capacity:
            return False
        self._held.append((self._clock() + self.hold_seconds, sock))
        return True

    def reset_due(self):
        """Reset every held connection whose time is up (the server's loop calls this between accepts)."""
        now = self._clock()
        while self._held and self._held[0][0] <= now:
            reset_connection(self._held.popleft()[1])

    def reset_all(self):
        """Reset every held connection (the server is closing)."""
        while self._held:
            reset_connection(self._held.popleft()[1])


def reset_connection(sock):
    """Close `sock` with a TCP reset: no FIN exchange, no TIME_WAIT for a connection that was never served."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_NOT_AT_ALL)
    except OSError:
        pass
    sock.close()


class TooManyNonces(Exception):
    """Raised when the outstanding-nonce table is full (a challenge flood): answer 503, keep memory bounded."""


class NonceBook(object):
    """Issues random one-time nonces and accepts each exactly once before it expires.

    Kept in memory on purpose: a restarted endpoint forgets outstanding nonces, which only makes clients ask again.
    """

    def __init__(self, ttl_seconds, capacity=10000, clock=time.monotonic):
        self.ttl_seconds = ttl_seconds
        self.capacity = capacity
        self._clock = clock
        self._expiry = {}
        self._lock = threading.Lock()

    def issue(self):
        """A fresh nonce valid for ttl_seconds."""
        nonce = secrets.token_urlsafe(24)
        now = self._clock()
        with self._lock:
            if len(self._expiry) >= self.capacity:
                self._expiry = {key: end for key, end in self._expiry.items() if end > now}
                if len(self._expiry) >= self.capacity:
                    raise TooManyNonces()
            self._expiry[nonce] = now + self.ttl_seconds
        return nonce

    def consume(self, nonce):
        """True if `nonce` was issued here, unused and unexpired; it is spent either way."""
        with self._lock:
            expiry = self._expiry.pop(nonce, None)
        return expiry is not None and self._clock() <= expiry


class RateLimiter(object):
    """Token bucket per key (a source address or a node name): `burst` requests at once, then `per_minute`."""

    def __init__(self, per_minute, burst, capacity=100000, clock=time.monotonic):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.capacity = capacity
        self._clock = clock
        self._buckets = {}
        self._lock = threading.Lock()

    def allow(self, key):
        """Take one request from `key`'s bucket; False when it is empty."""
        now = self._clock()
        with self._lock:
            if len(self._buckets) >= self.capacity:
                self._forget_full_buckets(now)
            level, stamp = self._buckets.get(key, (self.burst, now))
            level = min(self.burst, level + (now - stamp) * self.rate)
            allowed = level >= 1.0
            self._buckets[key] = (level - 1.0 if allowed else level, now)
        return allowed

    def retry_after(self):
        """Seconds until one request is allowed again, for the Retry-After header."""
        return max(1, int(round(1.0 / self.rate))) if self.rate > 0 else 60

    def _forget_full_buckets(self, now):
        full_after = self.burst / self.rate if self.rate > 0 else float("inf")
        self._buckets = {key: value for key, value in self._buckets.items() if now - value[1] < full_after}


class ConnectionWatchdog(object):
    """Cuts connections that outlive their deadline, whatever they are blocked on (TLS handshake, headers, body).

    A per-read socket timeout alone does not stop a slowloris client that sends one byte just inside each timeout;
    a deadline for the whole connection does. One thread serves all connections.
    """

    def __init__(self, interval=0.25):
        self._deadlines = {}
        self._lock = threading.Lock()
        self._interval = interval
        thread = threading.Thread(target=self._reap_forever, name="connection-watchdog", daemon=True)
        thread.start()

    def watch(self, sock, seconds):
        """Shut `sock` down if it is still watched `seconds` from now."""
        with self._lock:
            self._deadlines[sock] = time.monotonic() + seconds

    def release(self, sock):
        """Stop watching `sock` (its connection ended in time)."""
        with self._lock:
            self._deadlines.pop(sock, None)

    def _reap_forever(self):
        while True:
            time.sleep(self._interval)
            now = time.monotonic()
            with self._lock:
                expired = [sock for sock, deadline in self._deadlines.items() if deadline <= now]
                for sock in expired:
                    del self._deadlines[sock]
            for sock in expired:
                try:
                    # The plain socket's shutdown, also for TLS sockets: it only wakes the blocked reader, and
                    # SSLSocket.shutdown would tear down TLS state under the feet of the handler thread.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass
