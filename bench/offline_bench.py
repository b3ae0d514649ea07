"""Offline bundles: what making one costs, what it adds to a card, what a warm cache saves, and first boot with it.

    python bench/offline_bench.py [--runs 3] [--padding-mib 40] [--boot] [--smoke]

All in one run, against the tests' offline world (tests/integration/offline_world.py): a signed arm64 apt archive
and Debian's docker-registry on 127.0.0.1, the Ubuntu sample with a dpkg database. The stand-in .debs are padded
with incompressible bytes (--padding-mib for containerd, half of it for each kube package) so that apt moves what
real ones weigh; the registry's images are small (one busybox layer each), so image sizes are the floor.

    bundle cold     `pi-image bundle` of a cluster with a worker and a master, empty cache: apt resolves and
                    downloads, skopeo fetches every image (per role: seconds, size, packages, images)
    bundle warm     the same again: every cached file checked against its SHA-256, nothing fetched
    build           `pi-image build` of the worker without --offline vs with --offline from the warm cache (median
                    of --runs, order alternated): the ratio is what carrying the bundle costs a build
    --boot          tests/system/run.sh's offline story (master + worker, isolated: the worker waits for its master),
                    the offline release-path worker on its own (the like-for-like pair of the preinstalled join),
                    its network story (test_boot_joins: one worker installing from the archive) and a clean join on
                    the preinstalled base: QEMU start to joined and the ratios over the preinstalled one, from the
                    run's figures
                    (goal 4 of issue 28; needs root and minutes; not in --smoke)

--smoke: no padding, one run, no boot: the suite runs it so the script cannot rot.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))  # join_fakes, helpers
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import REPO, SSH_KEY, add_smoke_arg, pi_image
from offline_world import offline_args, offline_base, start_archive, start_registry

from builder.samples import make_sample

MIB = 1 << 20


def cluster(work: Path, registry) -> Path:
    directory = work / "lab"
    pi_image(work, "cluster", "init", str(directory), "--api-server", "192.168.6.11:6443", "--endpoint",
             "192.168.6.11:8443", "--kubernetes-version", "1.31", "--node-subnet", "192.168.6.0/24", "--gateway",
             "192.168.6.1", "--registry-mirror", f"registry.k8s.io={registry.url}",
             "--registry-mirror", f"ghcr.io={registry.url}")
    pi_image(work, "cluster", "add-node", str(directory), "pi-master1", "--profile", "master-2g", "--address",
             "192.168.6.11")
    pi_image(work, "cluster", "add-node", str(directory), "pi-worker1", "--profile", "worker-8g")
    return directory


def bundles(work: Path, base: Path, archive, registry) -> list[str]:
    """Cold and warm `pi-image bundle` (into the cache WORK/cache, which the builds then use)."""
    directory = cluster(work, registry)
    options = [arg for arg in offline_args(archive, registry) if arg != "--offline"][:-2]
    lines = []
    for phase in ("cold", "warm"):
        seconds, proc = pi_image(work, "bundle", "--cluster", str(directory), "--base", str(base), "--json",
                                 *options)
        for row in json.loads(proc.stdout):
            lines.append(f"bundle {phase:4}  {row['node']:11} {seconds:6.2f} s (both roles)  "
                         f"{row['size'] / MIB:7.1f} MiB  {row['packages']} packages  {row['images']} images")
    return lines


def builds(work: Path, base: Path, archive, registry, runs: int) -> list[str]:
    """Median seconds of a worker build without --offline and with it from the warm cache, alternated."""
    common = ["build", "--profile", "worker-8g", "--base", str(base), "--ssh-key", str(SSH_KEY), "--force"]
    online = ["--kube-key", str(archive.key.armored),
              "--set", f"kube_repo_url=http://127.0.0.1:{archive.port}/kube/v{{version}}/"]
    times: dict[str, list[float]] = {"network install": [], "--offline": []}
    for run in range(runs):
        for name in (("network install", "--offline") if run % 2 == 0 else ("--offline", "network install")):
            extra = offline_args(archive, registry) if name == "--offline" else online
            seconds, _ = pi_image(work, *common, "-o", str(work / f"{name[-7:].strip('-')}.img"), *extra)
            times[name].append(seconds)
    plain, offline = (statistics.median(times[name]) for name in ("network install", "--offline"))
    spread = {name: f"{min(values):.2f}-{max(values):.2f}" for name, values in times.items()}
    return [f"build without --offline  {plain:6.2f} s (n={runs}, {spread['network install']} s)",
            f"build --offline (warm)   {offline:6.2f} s (n={runs}, {spread['--offline']} s)",
            f"ratio --offline / without: {offline / plain:.2f}x"]


def boots() -> list[str]:
    """First boot with the bundle, with the network install and on the preinstalled base, from one system-test run
    (the stories and the ratios: tests/system/conftest.py FIRST_BOOTS, first_boot_ratios)."""
    with tempfile.TemporaryDirectory(prefix="offline-bench-boot-") as tmp:
        stories = ("test_boot_offline or test_boot_joins or test_boot_control_plane or offline_release_card_joins"
                   " or test_power_cut_just_after_joining")
        subprocess.run([str(REPO / "tests/system/run.sh"), "-k", stories, "--basetemp", tmp], check=True)
        first = json.loads((Path(tmp) / "system-figures.json").read_text())["first_boot"]
    labels = {"offline_worker_joined": "bundle: worker joined (isolated, beside its master)",
              "offline_master_endpoint_started": "bundle: its master's endpoint started",
              "network_install_joined": "network install: worker joined (archive on the host)",
              "preinstalled_joined": "preinstalled base: worker joined (endpoint up)",
              "offline_release_worker_joined": "bundle, release path: worker joined (endpoint up)",
              "offline_master_init_done": "bundle: master's kubeadm init done",
              "preinstalled_master_init_done": "preinstalled base: master's kubeadm init done"}
    lines = [f"first boot, {label}: {first[name]} s" for name, label in labels.items() if name in first]
    lines += [f"ratio {name.replace('_over_', ' / ').replace('_', ' ')}: {first[name]:.2f}x"
              for name in ("offline_release_worker_over_preinstalled", "offline_worker_over_preinstalled",
                           "network_install_over_preinstalled", "offline_master_init_over_preinstalled")
              if name in first]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--padding-mib", type=int, default=40)
    parser.add_argument("--boot", action="store_true", help="also boot the system test's stories (root, minutes)")
    add_smoke_arg(parser)
    args = parser.parse_args()
    runs, padding = (1, 0) if args.smoke else (args.runs, args.padding_mib * MIB)
    with tempfile.TemporaryDirectory(prefix="offline-bench-") as tmp:
        work = Path(tmp)
        archive = start_archive(work / "archive", padding)
        registry = start_registry(work / "registry")
        try:
            base = offline_base(make_sample("ubuntu-raspi", work / "sample"), work, archive)
            lines = bundles(work, base, archive, registry)
            lines += builds(work, base, archive, registry, runs)
        finally:
            registry.stop()
            archive.stop()
            archive.key.close()
    if args.boot and not args.smoke:
        lines += boots()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
