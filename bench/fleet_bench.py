"""The fleet curve: one profile image + N stamping flashes against N per-node builds, for N = 1, 5, 20.

    python bench/fleet_bench.py [--nodes 1 5 20] [--size-gib 4] [--data-mib 1024] [--workdir DIR] [--keep] [--smoke]

The base is the build bench's: a raw 4 GiB Ubuntu-layout image whose ext4 holds --data-mib of random files (made
once, kept in --workdir), its SHA-256 cached by an untimed first build. One cluster of max(--nodes) worker-8g nodes
(fixed addresses). For each N:

  profile path   `pi-image build --cluster DIR --profile worker-8g` (the profile image), then for each node
                 `pi-image flash IMG card.img --cluster DIR --node pi-workerI --yes` (stamping, read-back verified)
  per-node path  for each node `pi-image build --cluster DIR --node pi-workerI`, then that image flashed onto a
                 card (`pi-image flash pi-workerI.img card.img --yes`: the same cards at the end)
The profile image is built first; then node by node: its stamping flash, its own build, that image's flash
(interleaved, so that both paths see the same machine and page cache).

Per N: seconds per node of each path (the builds alone too), and the bytes the host keeps (st_blocks * 512 of the
images and their manifests: 1 profile image against N node images); cards are SD cards in use, not host bytes, and
are removed once written. The ratios profile / per-node (builds + flashes) show where the curve crosses.

--smoke: N = 1, 2 on a 512 MiB base holding 8 MiB: the suite runs it so that the script cannot rot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (
    KUBE_KEY,
    SSH_KEY,
    add_smoke_arg,
    add_workdir_args,
    on_disk,
    pi_image,
    workdir,
    worker_cluster,
)
from build_bench import make_base  # the build bench's base, the same recipe

MIB, GIB = 1 << 20, 1 << 30


@dataclass
class PathCost:
    """One path's cost for N nodes: the seconds of each build and each flash, the bytes kept on the host."""

    builds: list[float] = field(default_factory=list)
    flashes: list[float] = field(default_factory=list)
    kept: int = 0

    def per_node(self, nodes: int) -> float:
        """Seconds per node: the path's total over `nodes`."""
        return (sum(self.builds) + sum(self.flashes)) / nodes


def kept(image: Path) -> list[Path]:
    """What a build leaves on the host for `image`: the image and its manifest."""
    return [image, image.with_name(image.name + ".json")]


def build(work: Path, base: Path, image: Path, *target: str | Path) -> float:
    """Seconds of `pi-image build ... -o IMAGE` for `target` (--cluster DIR --profile P, or --node N)."""
    return pi_image(work, "build", *target, "--base", base, "--kube-key", KUBE_KEY, "--ssh-key", SSH_KEY, "-o",
                    image)[0]


def flash(work: Path, image: Path, card: Path, *stamp: str | Path) -> float:
    """Seconds to write `image` onto a new card file (removed afterwards: a card is not kept on the host)."""
    seconds, _ = pi_image(work, "flash", image, card, "--yes", "--json", *stamp)
    card.unlink()
    return seconds


def fleet_round(work: Path, base: Path, lab: Path, nodes: int) -> tuple[PathCost, PathCost]:
    """Both paths for `nodes` nodes: the profile image first, then node by node its stamping flash, the node's own
    build and that image's flash (interleaved, so that both paths see the same machine)."""
    fleet = work / "fleet"
    profile, per_node = PathCost(), PathCost()
    profile_image = fleet / "worker-8g.img"
    profile.builds.append(build(work, base, profile_image, "--cluster", lab, "--profile", "worker-8g"))
    images = [fleet / f"pi-worker{i}.img" for i in range(1, nodes + 1)]
    for image in images:
        profile.flashes.append(flash(work, profile_image, fleet / "card.img", "--cluster", lab, "--node", image.stem))
        per_node.builds.append(build(work, base, image, "--cluster", lab, "--node", image.stem))
        per_node.flashes.append(flash(work, image, fleet / "card.img"))
    profile.kept = on_disk(kept(profile_image))
    per_node.kept = on_disk(path for image in images for path in kept(image))
    for path in [*kept(profile_image), *(path for image in images for path in kept(image))]:
        path.unlink()
    return profile, per_node


def spread(values: list[float]) -> str:
    """`min-max` of `values` seconds."""
    return f"{min(values):.2f}-{max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 5, 20], help="fleet sizes N, in this order")
    parser.add_argument("--size-gib", type=float, default=4, help="the base's size (a whole number of MiB)")
    parser.add_argument("--data-mib", type=int, default=1024, help="random data written into the base's ext4")
    add_workdir_args(parser, "the base")
    add_smoke_arg(parser)
    args = parser.parse_args()
    if args.smoke:
        args.nodes, args.size_gib, args.data_mib = [1, 2], 0.5, 8
    with workdir(args, "pi-image-fleet-bench-") as work:
        start = time.perf_counter()
        base = make_base(work / f"ubuntu-{args.size_gib:g}g-{args.data_mib}m.img", round(args.size_gib * 1024) * MIB,
                         args.data_mib, 0)
        (work / "fleet").mkdir(exist_ok=True)
        lab = work / "lab"
        shutil.rmtree(lab, ignore_errors=True)
        worker_cluster(work, lab, max(args.nodes))
        warm = build(work, base, work / "fleet" / "warm.img", "--profile", "worker-8g")
        for path in kept(work / "fleet" / "warm.img"):
            path.unlink()
        print(f"base {base.name}: {base.stat().st_size / GIB:g} GiB apparent, {on_disk([base]) / GIB:.2f} GiB on disk "
              f"(ready in {time.perf_counter() - start:.1f} s, untimed warm-up build {warm:.2f} s); "
              f"{os.cpu_count()} CPUs")
        print(f"{'N':>3} | {'profile image + stamping flashes':>32} | {'per-node builds':>15} | "
              f"{'+ plain flashes':>15} | {'host MiB: profile':>17} {'per-node':>9} | {'time ratio':>10} "
              f"{'host ratio':>10}")
        for nodes in args.nodes:
            profile, per_node = fleet_round(work, base, lab, nodes)
            builds = sum(per_node.builds) / nodes
            print(f"{nodes:3} | {profile.per_node(nodes):25.2f} s/node | {builds:8.2f} s/node | "
                  f"{per_node.per_node(nodes):8.2f} s/node | {profile.kept / MIB:17.1f} {per_node.kept / MIB:9.1f} | "
                  f"{profile.per_node(nodes) / per_node.per_node(nodes):9.2f}x "
                  f"{profile.kept / per_node.kept:9.3f}x")
            print(f"    (profile build {profile.builds[0]:.2f} s, stamping flashes {spread(profile.flashes)} s; "
                  f"per-node builds {spread(per_node.builds)} s, plain flashes {spread(per_node.flashes)} s)")
        print("(s/node: the path's total / N; the profile path's build is shared by its N cards. time ratio: profile "
              "path / per-node builds + flashes; host ratio: bytes kept, profile / per-node)")


if __name__ == "__main__":
    main()
