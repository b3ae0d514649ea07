"""One master at a time decides a node's join or report: a per-node Lease in the Kubernetes API.

Where several masters serve joins, two could otherwise hand one node two tokens at once (or one could delete the
token the other just issued). While a master decides, it holds the coordination.k8s.io/v1 Lease `pi-image-join-<node>`
in kube-system (holderIdentity: its node name, LEASE_SECONDS). A Lease another master holds and renewed less than
LEASE_SECONDS ago makes the request wait (NodeBusy: 503 with Retry-After); one that expired (its master died while
deciding) or that nobody holds is taken with a compare-and-swap on its resourceVersion, so of two masters taking it
at once one wins. Releasing clears the holder the same way; should that lose (the Lease expired and another master
took it) nothing is undone: the other master decides on the row as it is now.
"""

import calendar
import logging
import time

from .kube import ClusterError

log = logging.getLogger("pi-image.tokend")

LEASE_PREFIX = "pi-image-join-"
LEASE_SECONDS = 60
RETRY_AFTER_MAX = 5  # seconds: a master holds a node's Lease for a few seconds, not its whole duration
TAKE_ATTEMPTS = 5


class NodeBusy(Exception):
    """Another master is deciding for this node now: ask again after `retry_after` seconds."""

    def __init__(self, node, holder, retry_after):
        Exception.__init__(self, "another master ({}) is deciding for node {} now: try again in {} s".format(
            holder, node, retry_after))
        self.retry_after = retry_after


class NoLeases(object):
    """The leases of a cluster of one master: its own per-node locks are enough."""

    def held(self, name):
        """A context that holds nothing."""
        return _Holding(None, None)


class NodeLeases(object):
    """Per-node Leases held by `holder` (this master's node name) through `objects` (objects.KubeObjects)."""

    def __init__(self, objects, holder, clock=time.time, seconds=LEASE_SECONDS):
        self.objects = objects
        self.holder = holder
        self._clock = clock
        self.seconds = seconds

    def held(self, name):
        """A context holding `name`'s Lease (taken on entry; NodeBusy when another master holds it)."""
        return _Holding(self, name)

    def take(self, name):
        """The Lease as this master now holds it; NodeBusy if another master's is still valid."""
        for _ in range(TAKE_ATTEMPTS):
            lease = self.objects.get("lease", LEASE_PREFIX + name)
            if lease is None:
                taken = self.objects.create(self._lease(name, None))
            else:
                self._refuse_if_held(name, lease.get("spec") or {})
                taken = self.objects.replace(self._lease(name, lease))
            if taken is not None:
                return taken
        raise NodeBusy(name, "others too", 1)

    def release(self, lease):
        """Clear the holder of the Lease `take` returned; losing that race is fine (see the module docstring)."""
        spec = dict(lease.get("spec") or {})
        spec.pop("holderIdentity", None)
        try:
            released = self.objects.replace(dict(lease, spec=spec))
        except ClusterError as err:  # the decision is made and answered: the Lease simply runs out
            log.warning("cannot release lease %s (it runs out in %d s): %s", lease["metadata"]["name"], self.seconds,
                        err)
            return
        if released is None:
            log.warning("lease %s was taken over before it was released: its %d s ran out while deciding",
                        lease["metadata"]["name"], self.seconds)

    def _refuse_if_held(self, name, spec):
        holder = spec.get("holderIdentity")
        if not holder or holder == self.holder:
            return
        renewed = _micro_time_seconds(spec.get("renewTime") or spec.get("acquireTime"))
        remaining = (renewed or 0) + (spec.get("leaseDurationSeconds") or self.seconds) - self._clock()
        if renewed is not None and remaining > 0:
            raise NodeBusy(name, holder, max(1, min(RETRY_AFTER_MAX, int(remaining + 0.999))))
        log.warning("lease of node %s held by %s ran out %.0f s ago: taking it over", name, holder, -remaining)

    def _lease(self, name, found):
        """The Lease held by this master from now: `found` (its resourceVersion kept for the compare-and-swap), or a
        new one."""
        now = _micro_time(self._clock())
        metadata = dict(found["metadata"]) if found else {"name": LEASE_PREFIX + name}
        metadata.setdefault("labels", {})["pi-image/node"] = name
        transitions = ((found or {}).get("spec") or {}).get("leaseTransitions") or 0
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                "spec": {"holderIdentity": self.holder, "leaseDurationSeconds": self.seconds, "acquireTime": now,
                         "renewTime": now, "leaseTransitions": transitions + (1 if found else 0)}}


class _Holding(object):
    """`with leases.held(name):` — the Lease taken on entry, released on exit (3.6: no contextlib.nullcontext)."""

    def __init__(self, leases, name):
        self._leases = leases
        self._name = name
        self._lease = None

    def __enter__(self):
        if self._leases is not None:
            self._lease = self._leases.take(self._name)
        return self

    def __exit__(self, *exc_info):
        if self._lease is not None:
            self._leases.release(self._lease)
        return False


def _micro_time(seconds):
    """A Unix time as the API server writes a MicroTime ('2024-12-05T10:00:00.123456Z')."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + ".{:06d}Z".format(
        int(round((seconds - whole) * 1e6)) % 1000000)


def _micro_time_seconds(text):
    """The Unix time of a MicroTime (or an RFC 3339 time without fraction), None if it is not one."""
    if not isinstance(text, str) or not text.endswith("Z"):
        return None
    whole, _, fraction = text[:-1].partition(".")
    try:
        return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + (float("0." + fraction)
                                                                            if fraction else 0.0)
    except ValueError:
        return None
