"""Token endpoint throughput: 100 concurrent agents against one server, with instant stand-in kubeadm/kubectl.

    python bench/join_bench.py [--agents 100] [--rounds 5] [--python python3.6]

Each agent is a thread with its own source address (127.0.0.x, so per-address rate limits apply as in a real fleet)
speaking the real protocol through firstboot.client: challenge + join (a token is minted by the stand-in kubeadm),
then challenge + report "joined" (the token is deleted). Every cycle uses a new node name, so per-node limits and the
Ready-node check behave as for fresh nodes. The server is a separate process (`python -m firstboot.tokend`).

Prints joins/s and p50/p99 latency of the join exchange and of the whole cycle, against a floor measured in the same
run: the same agents doing only the pinned-TLS connection + GET /v1/challenge.
Goal: >= 200 joins/s and join p99 < 250 ms.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "integration")]

from builder import cluster as clusters  # noqa: E402
from firstboot.client import EndpointClient  # noqa: E402
from join_fakes.harness import make_ca  # noqa: E402

INSTANT_KUBEADM = """#!/bin/sh
case "$1 $2" in
  "token create") echo "$3" ;;
  "token delete") echo "bootstrap token \\"$3\\" deleted" ;;
  *) exit 0 ;;
esac
"""
INSTANT_KUBECTL = """#!/bin/sh
case "$3 $4" in
  "version -o") echo '{"serverVersion": {"gitVersion": "v1.31.4"}}' ;;
  "get nodes") ;;
  "get node") echo "Error from server (NotFound): nodes \\"$5\\" not found" >&2; exit 1 ;;
  *) exit 0 ;;
esac
"""
FACTS = {"arch": "aarch64", "os": "Ubuntu 22.04", "kubeadm_version": "v1.31.4", "macs": ["dc:a6:32:01:02:03"],
         "node_ip": "192.168.6.15"}


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def prepare(base, node_names):
    """Cluster dir with every node in the inventory, a test CA and the instant stand-ins."""
    cluster = clusters.init_cluster(base / "cluster", "192.168.6.10:6443", "127.0.0.1:8443", "1.31",
                                    "192.168.6.0/24")
    cluster.nodes.extend(clusters.Node(name, "worker-8g") for name in node_names)
    clusters.save_inventory(cluster)
    bin_dir = base / "bin"
    bin_dir.mkdir()
    for name, script in (("kubeadm", INSTANT_KUBEADM), ("kubectl", INSTANT_KUBECTL)):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    make_ca(base / "ca.crt")
    return cluster, bin_dir


def start_server(base, cluster, bin_dir, python):
    argv = [python, "-m", "firstboot.tokend", "--config", str(cluster.directory / "tokend.json"), "--state-dir",
            str(base / "state"), "--listen", "127.0.0.1:0", "--ca-cert", str(base / "ca.crt"), "--kubeconfig",
            str(base / "admin.conf")]
    env = dict(os.environ, PATH="{}:/usr/bin:/bin".format(bin_dir))
    server = subprocess.Popen(argv, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    port = re.search(r":(\d+)\s*$", server.stdout.readline().decode()).group(1)
    return server, "127.0.0.1:" + port


def run_agents(agents, work):
    """Run work(agent_index) in `agents` threads at once; returns wall seconds."""
    barrier = threading.Barrier(agents + 1)

    def body(index):
        barrier.wait()
        work(index)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(agents)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="join cycles per agent (each with a new node name)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the server (e.g. python3.6)")
    args = parser.parse_args()
    names = [["bench-{}-{}".format(a, r) for r in range(args.rounds)] for a in range(args.agents)]

    with tempfile.TemporaryDirectory() as temporary:
        base = Path(temporary)
        cluster, bin_dir = prepare(base, [name for row in names for name in row])
        server, endpoint = start_server(base, cluster, bin_dir, args.python)
        try:
            credentials = {name: cluster.credential(name) for row in names for name in row}

            def client(agent, name):
                return EndpointClient(endpoint, cluster.endpoint_fingerprint, name, credentials[name],
                                      source_address=("127.0.0.{}".format(2 + agent), 0))

            floor, joins, reports, failures = [], [], [], []

            def challenge_only(agent):
                probe = client(agent, names[agent][0])
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    connection = probe._connect()
                    connection.request("GET", "/v1/challenge")
                    connection.getresponse().read()
                    connection.close()
                    floor.append(time.perf_counter() - started)

            def join(agent):
                for name in names[agent]:
                    started = time.perf_counter()
                    answer = client(agent, name).join(FACTS)
                    joins.append(time.perf_counter() - started)
                    if answer.status != 200 or "token" not in answer.payload:
                        failures.append((name, "join", answer.status, answer.payload.get("error")))

            def report(agent):
                for name in names[agent]:
                    started = time.perf_counter()
                    answer = client(agent, name).report("joined")
                    reports.append(time.perf_counter() - started)
                    if answer.status != 200:
                        failures.append((name, "report", answer.status, answer.payload.get("error")))

            phases = [(label, work, samples) + measure(server.pid, lambda w=work: run_agents(args.agents, w))
                      for label, work, samples in (("floor  TLS connect + GET /v1/challenge", challenge_only, floor),
                                                   ("join   challenge + POST /v1/join", join, joins),
                                                   ("report challenge + POST /v1/report", report, reports))]
        finally:
            server.terminate()
            server.wait(10)

    count = args.agents * args.rounds
    print("token endpoint: {} concurrent agents x {} rounds; server on {}; {} CPUs shared by server and agents".format(
        args.agents, args.rounds, os.path.basename(args.python), os.cpu_count()))
    for label, _work, samples, seconds, server_cpu in phases:
        print("{:<40} {:7.1f} /s  p50 {:6.1f} ms  p99 {:6.1f} ms  server CPU {:5.2f} ms each".format(
            label, count / seconds, 1000 * percentile(samples, 0.5), 1000 * percentile(samples, 0.99),
            1000 * server_cpu / count))
    join_rate, join_p99 = count / phases[1][3], percentile(joins, 0.99)
    print("join vs floor: {:.2f}x the time; failures: {}".format(phases[1][3] / phases[0][3], len(failures)))
    goal = join_rate >= 200 and join_p99 < 0.250 and not failures
    print("goal (>= 200 joins/s, p99 < 250 ms, no failures): {}".format("met" if goal else "NOT met"))
    for failure in failures[:5]:
        print("failure:", failure)
    return 0 if not failures else 1


def measure(pid, run):
    """(wall seconds, server CPU seconds incl. the kubeadm/kubectl it ran) of run()."""
    before = server_cpu_seconds(pid)
    seconds = run()
    return seconds, server_cpu_seconds(pid) - before


def server_cpu_seconds(pid):
    with open("/proc/{}/stat".format(pid)) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
