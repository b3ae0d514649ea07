"""The token endpoint under attack from one address while a genuine node at another address is served and joins.

    python bench/attack_bench.py [--seconds 20] [--idle 600] [--flood 20]

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
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "integration")]

from firstboot.client import EndpointClient  # noqa: E402
from firstboot.endpoint.audit import AUDIT_LOG_BACKUPS, AUDIT_LOG_BYTES  # noqa: E402
from join_fakes.attackers import Attack, cpu_seconds, genuine_tries, peak_rss_mb  # noqa: E402
from join_fakes.harness import FIRSTBOOT_PYTHON, JoinLab, run_agent  # noqa: E402

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
    args = parser.parse_args()
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
                time.sleep(2)  # the flood is in full swing
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

    print("token endpoint under attack: server and agent on {}; attack {:.0f} s; genuine node at {}".format(
        Path(FIRSTBOOT_PYTHON).name, minutes * 60, GENUINE))
    print("attack: {} idle sockets held ({} connections opened, {:.0f}/s); {} header floods ({} TLS connections "
          "opened); the attackers used {:.2f} cores, the server {:.2f}".format(
              args.idle, counts["idle"]["opened"], counts["idle"]["opened"] / (minutes * 60), args.flood,
              counts["headers"]["opened"], attacker_cpu / (minutes * 60), server_cores))
    print("{:<10} {:>14} {:>11} {:>8} {:>13} {:>12}".format("", "tries served", "slowest ms", "token s",
                                                           "agent join s", "peak RSS MB"))
    for label, (answered, tries, slowest, token_s, join_s, ok), peak in (("quiet", floor, floor_rss),
                                                                           ("attacked", attacked, rss)):
        print("{:<10} {:>8}/{:<5} {:>11.0f} {:>8.2f} {:>13} {:>12.1f}".format(
            label, answered, tries, 1000 * slowest, token_s, "{:.2f}".format(join_s) if ok else "FAILED", peak))
    print("audit log + state grew by {:.1f} KB in {:.2f} min ({:.1f} KB/min); audit.log is {:.1f} KB "
          "(cap {} x {} KB)".format(growth / 1024, minutes, growth / 1024 / minutes, audit_bytes / 1024,
                                    1 + AUDIT_LOG_BACKUPS, AUDIT_LOG_BYTES // 1024))
    answered, tries, _, _, join_s, ok = attacked
    if ok and floor[5]:
        print("under attack / quiet: token {:.2f}x, agent join {:.2f}x (the quiet run is the floor: stand-ins and this "
              "machine's load)".format(attacked[3] / floor[3], join_s / floor[4]))
    goal = answered >= 0.9 * tries and ok and join_s < 5 and rss < 100 and growth < minutes * 1024 * 1024
    print("goal (>= 90% served, join < 5 s, RSS < 100 MB, < 1 MB/min of log and state): {}".format(
        "met" if goal else "NOT met"))
    return 0 if goal else 1


if __name__ == "__main__":
    sys.exit(main())
