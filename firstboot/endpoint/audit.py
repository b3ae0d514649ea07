"""The endpoint's audit log: one line per decision, tokens redacted, size-capped, and floods summarised.

Lines go to stderr (the journal) and to <state_dir>/audit.log, which is rotated at AUDIT_LOG_BYTES with
AUDIT_LOG_BACKUPS old files kept (audit.log.1 ...), every one 0600: whatever clients do, the log never takes more
than (1 + AUDIT_LOG_BACKUPS) x AUDIT_LOG_BYTES of the master's SD card.

Refusals of whole connections (no free slot, a failed or silent TLS handshake, oversized headers, rate limits) come
in floods: one hostile client opens thousands of connections a second. Each (decision, address) therefore writes its
first refusal at once and then at most one summary line per interval.
"""

import logging
import logging.handlers
import os
import threading
import time

from .. import protocol
from ..logsetup import log_to

audit_log = logging.getLogger("pi-image.audit")

AUDIT_LOG_NAME = "audit.log"
AUDIT_LOG_BYTES = 1024 * 1024
AUDIT_LOG_BACKUPS = 3
OTHER_ADDRESSES = "other-addresses"


def audit(decision, node, address, detail=""):
    """One line per decision: what, for whom, from where, why."""
    audit_log.info("decision=%s node=%s address=%s%s", decision, node, address,
                   " detail=" + protocol.redact(detail) if detail else "")


class RefusalLog(object):
    """Audit lines for refused connections, at most one per (decision, address) per `interval` seconds.

    The first refusal is written at once (with its detail); the ones after it are counted, and flush() - called often
    by the server loop - writes "refused N more connections in the last 10 s" when the interval is over. At most
    `capacity` (decision, address) pairs are tracked; beyond that, new addresses share one OTHER_ADDRESSES count.
    """

    def __init__(self, interval=10.0, capacity=4096, clock=time.monotonic):
        self.interval = interval
        self.capacity = capacity
        self._clock = clock
        self._windows = {}  # (decision, address) -> [window start, refusals counted since]
        self._next_flush = 0.0
        self._lock = threading.Lock()

    def refused(self, decision, address, detail=""):
        """Record one refused connection from `address`."""
        with self._lock:
            key = (decision, address)
            if key not in self._windows and len(self._windows) >= self.capacity:
                key = (decision, OTHER_ADDRESSES)
            window = self._windows.get(key)
            if window is not None:
                window[1] += 1
                return
            self._windows[key] = [self._clock(), 0]
        audit(decision, "-", key[1], detail)

    def flush(self):
        """Write the summary of every interval that is over (cheap when none is)."""
        now = self._clock()
        if now < self._next_flush:
            return
        with self._lock:
            self._next_flush = now + min(1.0, self.interval)
            summaries = []
            for key, (started, count) in list(self._windows.items()):
                if now - started < self.interval:
                    continue
                if count:
                    summaries.append((key, count, now - started))
                    self._windows[key] = [now, 0]
                else:
                    del self._windows[key]
        for (decision, address), count, seconds in summaries:
            audit(decision, "-", address, "refused {} more connections in the last {:.0f} s".format(count, seconds))


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Opens audit.log - also the fresh one after each rotation - as 0600, whatever the process umask."""

    def _open(self):
        descriptor = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return open(descriptor, "a", encoding=self.encoding)


def configure_logging(state_dir, verbose=False, max_bytes=AUDIT_LOG_BYTES):
    """Decisions to stderr and to <state_dir>/audit.log (0600, rotated at `max_bytes`); tokens redacted on the way."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    log_to(_PrivateRotatingFileHandler(os.path.join(state_dir, AUDIT_LOG_NAME), maxBytes=max_bytes,
                                       backupCount=AUDIT_LOG_BACKUPS, encoding="utf-8"),
           logging.DEBUG if verbose else logging.INFO)
