"""The token endpoint under attack from one address while a genuine node at another address is served and joins.

    python bench/attack_bench.py [--seconds 20] [--idle 600] [--flood 20] [--smoke]

The real endpoint runs as its own process (`python -m firstboot.endpoint`, under FIRSTBOOT_PYTHON / python3.6 when
there is one) with the join tests' kubeadm/kubectl stand-ins. Two attacker processes:
  idle      --idle TCP sockets held open and silent from 127.0.0.1, each reopened as soon as the server drops it
  headers   --flood TLS connections from 127.0.0.3 (past the per-address cap of 127.0.0.1's connections, so that
            the caps on request heads are what stops them) sending heads of 99 headers of 64 KiB, again and again
Meanwhile a genuine node at 127.0.0.2 asks for a challenge every 0.5 s (a "try", answered within 3 s or failed: the
rate its address is allowed by the endpoint's own limit, 2 a second after a burst of 60),
fetches one token (the endpoint's own part of a join: challenge + signed POST /v1/join + kubectl), then the real
agent joins from there (local setup with the stand-ins, token, kubeadm join, report). The same is first measured with
no attack: that is the floor. Attackers, agent and server share this machine's CPUs: the attackers' CPU is printed.

Goals: >= 90 % of the genuine tries served and the join done within 5 s under attack; the server's peak memory (RSS)
under 100 MB; audit log and state grow by < 1 MB per minute of attack and stay under their cap.

--smoke: 1 s of tries, 10 idle sockets, 2 floods, no goal judged (a join that fails still fails it): the suite runs
it so that the script cannot rot.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))  # join_fakes, helpers
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import add_smoke_arg
from join_fakes.attackers import Attack, cpu_seconds, genuine_tries, peak_rss_mb
from join_fakes.harness import FIRSTBOOT_PYTHON, JoinLab, run_agent

from firstboot.client import EndpointClient
from firstboot.endpoint.audit import AUDIT_LOG_BACKUPS, AUDIT_LOG_BYTES

GENUINE = "127.0.0.2"
FACTS = {"arch": "aarch64", "os": "Ubuntu 22.04", "kubeadm_version": "v1.31.4", "macs": [], "node_ip": "192.168.6.16"}


def state_bytes(lab):
    """Bytes in the endpoint's state directory: SQLite files and the audit log with its rotated copies."""
    return sum(path.stat().st_size for path in (lab.cluster.directory / "state").iterdir())


def measure(lab, seconds):
    """(served tries, tries, slowest served s, token s, agent join s, join ok) for the genuine node at GENUINE."""
    def client(name):
        return EndpointClient(lab.server.endpoint, lab.cluster.endpoint_fingerprint, name, lab.credential(name),
                              timeout=3, source_address=(GENUINE, 0))
    answered, tries, slowest = genuine_tries(client("pi-worker1"), seconds, interval=0.5)
    started = time.monotonic()
    issued = client("pi-probe").join(FACTS).status == 200
    token_seconds = time.monotonic() - started
    root = lab.node_root()
    started = time.monotonic()
    result = run_agent(root, lab.fake, address=GENUINE, timeout=120)
    return answered, tries, slowest, token_seconds, time.monotonic() - started, issued and result.returncode == 0


def one_lab(base, name):
    directory = base / name
    directory.mkdir()
    lab = JoinLab(directory, nodes=("pi-worker1", "pi-probe"))
    lab.server.start()
    return lab


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="genuine tries during the attack (seconds)")
    parser.add_argument("--idle", type=int, default=600, help="idle sockets the attacker holds")
    parser.add_argument("--flood", type=int, default=20, help="connections sending huge headers")
    add_smoke_arg(parser)
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.idle, args.flood = 1.0, 10, 2
    with tempfile.TemporaryDirectory() as temporary:
        base = Path(temporary)
        quiet = one_lab(base, "quiet")
        try:
            floor = measure(quiet, min(5.0, args.seconds))
            floor_rss = peak_rss_mb(quiet.server.process.pid)
        finally:
            quiet.server.stop()
        lab = one_lab(base, "attacked")
        try:
            before = state_bytes(lab)
            attack = Attack(sys.executable, lab.server.endpoint, idle_sockets=args.idle,
                            flood_connections=args.flood).start()
            started, cpu_before = time.monotonic(), cpu_seconds(lab.server.process.pid)
            try:
                time.sleep(min(2.0, args.seconds))  # the flood is in full swing
                attacked = measure(lab, args.seconds)
                rss = peak_rss_mb(lab.server.process.pid)
                attacker_cpu = sum(cpu_seconds(process.pid) for process in attack.processes)
            finally:
                counts = attack.stop()
            minutes = (time.monotonic() - started) / 60
            server_cores = (cpu_seconds(lab.server.process.pid) - cpu_before) / (minutes * 60)
            growth = state_bytes(lab) - before
            audit_bytes = (lab.cluster.directory / "state" / "audit.log").stat().st_size
        finally:
            lab.server.stop()

    print(f"token endpoint under attack: server and agent on {Path(FIRSTBOOT_PYTHON).name}; attack {minutes * 60:.0f} "
          f"s; genuine node at {GENUINE}")
    print(f"attack: {args.idle} idle sockets held ({counts['idle']['opened']} connections opened, "
          f"{counts['idle']['opened'] / (minutes * 60):.0f}/s); {args.flood} header floods "
          f"({counts['headers']['opened']} TLS connections opened); the attackers used "
          f"{attacker_cpu / (minutes * 60):.2f} cores, the server {server_cores:.2f}")
    print(f"{'':<10} {'tries served':>14} {'slowest ms':>11} {'token s':>8} {'agent join s':>13} {'peak RSS MB':>12}")
    for label, (answered, tries, slowest, token_s, join_s, ok), peak in (("quiet", floor, floor_rss),
                                                                           ("attacked", attacked, rss)):
        joined = f"{join_s:.2f}" if ok else "FAILED"
        print(f"{label:<10} {answered:>8}/{tries:<5} {1000 * slowest:>11.0f} {token_s:>8.2f} {joined:>13} "
              f"{peak:>12.1f}")
    print(f"audit log + state grew by {growth / 1024:.1f} KB in {minutes:.2f} min "
          f"({growth / 1024 / minutes:.1f} KB/min); "
          f"audit.log is {audit_bytes / 1024:.1f} KB (cap {1 + AUDIT_LOG_BACKUPS} x {AUDIT_LOG_BYTES // 1024} KB)")
    answered, tries, _, _, join_s, ok = attacked
    if ok and floor[5]:
        print(f"under attack / quiet: token {attacked[3] / floor[3]:.2f}x, agent join {join_s / floor[4]:.2f}x (the "
              "quiet run is the floor: stand-ins and this machine's load)")
    goal = answered >= 0.9 * tries and ok and join_s < 5 and rss < 100 and growth < minutes * 1024 * 1024
    print("goal (>= 90% served, join < 5 s, RSS < 100 MB, < 1 MB/min of log and state): "
          f"{'met' if goal else 'NOT met'}")
    if args.smoke:
        return 0 if ok and floor[5] else 1
    return 0 if goal else 1


if __name__ == "__main__":
    sys.exit(main())
