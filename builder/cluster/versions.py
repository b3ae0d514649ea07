"""Kubernetes versions of a cluster: which minors pi-image knows, and Kubernetes' version-skew policy, one place each.

    known_minors()     the minors pi-image has data for: the rows of builder/data/kube-release.yaml (every minor
                       pi-image learns gets its row there: the release path cannot build one without it), "1.28" ...
    check_step()       `pi-image cluster upgrade`: one minor up at a time for the control plane, to a known minor
    kubelet_skew()     a kubelet may trail the API server by up to three minors and never lead it
                       (kubernetes.io/releases/version-skew-policy: kubelet); `cluster upgrade` checks each node
                       against the new version, `cluster verify` against the cluster's, `pi-image status` marks it
"""

from __future__ import annotations

import functools

import yaml

from firstboot import protocol

from ..config import addresses
from ..errors import UserError
from ..plan.release import DATA as KUBE_RELEASE_DATA

MAX_KUBELET_TRAIL = 3  # minors a kubelet may trail the API server by


@functools.lru_cache(maxsize=1)
def known_minors() -> tuple[str, ...]:
    """The Kubernetes minors pi-image knows ("1.28", ...), oldest first."""
    minors = (yaml.safe_load(KUBE_RELEASE_DATA.read_text()) or {}).get("minors") or {}
    return tuple(sorted((str(minor) for minor in minors), key=lambda minor: protocol.minor_version(minor)))


def minor_of(version: str | None) -> tuple[int, int] | None:
    """(1, 31) of 'v1.31.4', '1.31' or 'v1.31.4+k3s1'; None for None or anything that is no version."""
    try:
        return protocol.minor_version(str(version)) if version else None
    except ValueError:
        return None


def minor_text(version: str | None) -> str | None:
    """'1.31' of 'v1.31.4'; None where minor_of() finds none."""
    minor = minor_of(version)
    return None if minor is None else f"{minor[0]}.{minor[1]}"


def check_step(current: str, to: str, where: str) -> str:
    """`to` ("1.32") normalized, if the control plane may move there from `current` (the cluster's minor): a minor
    pi-image knows, exactly one above. A UserError line naming `where`, what is wrong and the fix otherwise."""
    wanted = addresses.minor(to, where)
    known = known_minors()
    step = _step(current)
    if wanted not in known:
        raise UserError(f"{where}: Kubernetes {wanted} is not a minor pi-image knows ({known[0]} to {known[-1]}, "
                        f"{KUBE_RELEASE_DATA.name}): pick {step if step in known else 'a known one'}")
    ours, theirs = protocol.minor_version(current), protocol.minor_version(wanted)
    if theirs == ours:
        raise UserError(f"{where}: the cluster runs {current} already: nothing to upgrade (the next minor is {step})")
    if theirs < ours:
        raise UserError(f"{where}: {wanted} is older than the cluster's {current}: Kubernetes cannot be downgraded "
                        "in place (a cluster of an older version is a new cluster: `pi-image cluster init`)")
    if wanted != step:
        raise UserError(f"{where}: {current} to {wanted} skips a minor: the control plane moves one minor at a time "
                        f"(Kubernetes' version-skew policy): upgrade to {step} first, then to the next")
    return wanted


def _step(current: str) -> str:
    major, minor = protocol.minor_version(current)
    return f"{major}.{minor + 1}"


def kubelet_skew(kubelet: str | None, api_server: str) -> str | None:
    """What is wrong with a kubelet of version `kubelet` under an API server of minor `api_server`, or None (within
    the policy, or no version known): it leads the API server, or trails it by more than three minors."""
    found, reference = minor_of(kubelet), minor_of(api_server)
    if found is None or reference is None:
        return None
    if found > reference:
        return f"kubelet {kubelet} is newer than the API server's {api_server}"
    behind = reference[1] - found[1] if found[0] == reference[0] else MAX_KUBELET_TRAIL + 1
    if behind > MAX_KUBELET_TRAIL:
        return (f"kubelet {kubelet} trails the API server's {api_server} by {behind} minors (at most "
                f"{MAX_KUBELET_TRAIL} are allowed)")
    return None
