"""A stand-in for the control planes' token endpoints as `pi-image cluster upgrade` and `pi-image status` speak to
them (the contract of issue 31, /v1/admin/upgrade and the status answer's versions), in this process.

`StandInCluster.install(monkeypatch)` puts a client in place of builder.cluster.status's EndpointClient: it answers
for every address the world has a master at (an address that is down, or unknown, cannot be reached), records every
upgrade request, and plays each master's upgrade the way firstboot/upgrade.py reports it: every status request moves
a running upgrade one phase on, the last (`done`) moving the API server (apply) and that master's kubelet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from firstboot.client import Answer, EndpointUnreachable

PHASES = ("requested", "repository", "kubeadm", "plan", "apply", "drain", "kubelet", "uncordon", "done")


def minor(version: str) -> str:
    return ".".join(version.lstrip("v").split(".")[:2])


@dataclass
class StandInMaster:
    node: str
    kubelet: str = "v1.31.4"
    up: bool = True
    record: dict | None = None
    fail_at: tuple[str, str, str] | None = None  # (phase, error, fix)


@dataclass
class StandInCluster:
    """Masters by the address their endpoint answers at (one may answer at several: the VIP's and its own)."""

    masters: dict[str, StandInMaster]
    workers: dict[str, str] = field(default_factory=dict)  # name: kubelet version
    cluster_version: str | None = "v1.31.4"
    pushes: list[tuple[str, dict]] = field(default_factory=list)
    refusal: str | None = None  # a 409 every push gets

    def install(self, monkeypatch) -> StandInCluster:
        world = self

        class Client:
            def __init__(self, address, fingerprint, node, credential, timeout=15.0):
                self.address = address

            def _master(self) -> StandInMaster:
                master = world.masters.get(self.address)
                if master is None or not master.up:
                    raise EndpointUnreachable(f"cannot reach {self.address}: [Errno 111] Connection refused")
                return master

            def admin_status(self):
                return Answer(200, world.status(self._master()))

            def admin_upgrade(self, to, mode):
                master = self._master()
                payload = {"to": to, "mode": mode}
                world.pushes.append((self.address, payload))
                return world.upgrade(master, payload)

        monkeypatch.setattr("builder.cluster.status.EndpointClient", Client)
        return self

    def status(self, master: StandInMaster) -> dict:
        self._advance(master)
        rows = [{"name": m.node, "state": "joined", "kubelet_version": m.kubelet}
                for m in {m.node: m for m in self.masters.values()}.values()]
        rows += [{"name": name, "state": "joined", "kubelet_version": kubelet}
                 for name, kubelet in self.workers.items()]
        return {"nodes": rows, "cluster_version": self.cluster_version, "upgrade": master.record,
                "server_time": 0}

    def upgrade(self, master: StandInMaster, payload: dict) -> Answer:
        to, mode = payload["to"], payload["mode"]
        answer = {"node": master.node, "from": master.kubelet, "to": to}
        if self.refusal:
            return Answer(409, {"error": self.refusal})
        if master.record and master.record["state"] == "running":
            return Answer(409, {"error": f"an upgrade to {master.record['to']} is running on {master.node}: wait"})
        if minor(master.kubelet) == to and master.record and master.record["state"] == "done":
            return Answer(200, {"state": "done", **answer})
        if mode == "node" and minor(self.cluster_version or "") != to:
            return Answer(409, {"error": "the cluster runs another version: upgrade the first control plane first"})
        master.record = {"node": master.node, "to": to, "mode": mode, "from": master.kubelet, "release": None,
                         "state": "running", "phase": "requested", "phases": {"requested": 1.0}, "error": None,
                         "fix": None, "requested_at": 1.0, "updated_at": 1.0}
        return Answer(202, {"state": "started", **answer})

    def _advance(self, master: StandInMaster) -> None:
        record = master.record
        if not record or record["state"] != "running":
            return
        phases = [p for p in PHASES if not (record["mode"] == "node" and p == "plan")]
        phase = phases[phases.index(record["phase"]) + 1]
        if master.fail_at and master.fail_at[0] == phase:
            record.update(state="failed", phase=phase, error=master.fail_at[1], fix=master.fail_at[2])
            return
        record["release"] = f"v{record['to']}.1"
        record.update(phase=phase, phases={**record["phases"], phase: float(len(record["phases"]) + 1)})
        if phase == "apply" and record["mode"] == "apply":
            self.cluster_version = record["release"]
        if phase == "kubelet":
            master.kubelet = record["release"]
        if phase == "done":
            record["state"] = "done"
