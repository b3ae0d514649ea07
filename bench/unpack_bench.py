"""Unpack cost: pi-image's unpack of an `.img.xz` into its sparse raw-image cache, against `xz -T0 -dc` of the same
file in the same run, for both kinds of `.xz` file vendors publish.

    python bench/unpack_bench.py [--runs 5] [--size-gib 2] [--data-mib 384] [--workdir DIR] [--keep] [--smoke]

The image: a --size-gib Ubuntu-layout sample whose ext4 holds --data-mib MiB of this machine's own /usr files (real,
compressible content, written with debugfs), compressed twice at xz's default level 6 and kept in --workdir:
  single-block  `xz -T1 -6`: one block, as xz before 5.6 makes by default (and always with -T1). It can only be
                decompressed on one core, whatever -T says.
  multi-block   `xz -T0 -6`: blocks of 3 x the dictionary (24 MiB), each with its sizes in its header, as xz's
                multi-threaded mode makes; xz >= 5.4 decompresses such a file on every core.
What the vendors publish (check a file with `xz --list FILE`: the Blocks column):
  Ubuntu Server for Raspberry Pi  multi-block: livecd-rootfs compresses the ubuntu-image output with `xz -0 -T4`
                                  (blocks of 1 MiB).
  Raspberry Pi OS                 multi-block: pi-gen's export-image runs `xz --threads 0 -6` (COMPRESSION_LEVEL,
                                  default 6: blocks of 24 MiB).
  Kali ARM for Raspberry Pi       multi-block: kali-arm's compress_img.sh runs pixz on x86_64 builders (parallel,
                                  indexed .xz) and `xz -T <cores>` on ARM builders.
So every vendor's image unpacks on every core with xz >= 5.4 (Debian 12, Ubuntu 23.04 and later); older xz, or an
image a user compressed with plain `xz` (< 5.6), decompresses on one core.

Per kind, medians of --runs (min, max and n shown), the order rotated by one each run:
  xz > /dev/null   xz -T0 -dc IMAGE.xz > /dev/null      (the decompression alone)
  xz > file        xz -T0 -dc IMAGE.xz > FILE           (plus writing it; xz makes FILE sparse itself)
  pi-image         raw_image(IMAGE.xz) in a new process into an empty cache (start-up and imports included), its
                   SHA-256 already indexed, as after `pi-image fetch`; the first use of a file hashes it too (shown
                   once, apart)
Goal (issue 28): pi-image <= 1.15x `xz -T0 -dc > file`, for both kinds.

--smoke: a 512 MiB image holding 8 MiB, one run: the suite runs it so that the script cannot rot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import add_smoke_arg, add_workdir_args, median_line, workdir, write_into_root
from download import usr_files

from builder.image.inputs import cached_sha256, remember_sha256
from builder.samples import make_sample

KINDS = {"single-block": ["xz", "-T1", "-6"], "multi-block": ["xz", "-T0", "-6"]}
XZ_NULL, XZ_FILE, OURS = "xz -T0 -dc > /dev/null", "xz -T0 -dc > file", "pi-image unpack"
# The child that unpacks: one line of Python, so that its start-up is what a pi-image command pays.
UNPACK = ("import sys; from pathlib import Path; from builder.image.inputs import raw_image; "
          "raw_image(Path(sys.argv[1]), Path(sys.argv[2]))")


def make_images(work: Path, size: int, data_mib: int) -> dict[str, Path]:
    """The two compressed bench images (kept in `work` between runs)."""
    stem = f"ubuntu-{size / 2**30:g}g-{data_mib}m"
    images = {kind: work / f"{stem}-{kind}.img.xz" for kind in KINDS}
    if all(path.exists() for path in images.values()):
        return images
    raw = make_sample("ubuntu-raspi", work / f"{stem}.img", size=size)
    write_into_root(raw, usr_files(data_mib << 20))
    for kind, command in KINDS.items():
        tmp = images[kind].with_name(images[kind].name + ".tmp")
        with open(tmp, "wb") as out:
            subprocess.run([*command, "-c", raw], stdout=out, check=True)
        os.replace(tmp, images[kind])
    raw.unlink()
    return images


def timed(command: list[str | Path], out: Path | None = None, env: dict[str, str] | None = None) -> float:
    """Seconds `command` takes (it must succeed), its stdout to `out` (created empty) or /dev/null."""
    with open(out or os.devnull, "wb") as sink:
        start = time.perf_counter()
        subprocess.run([str(c) for c in command], stdout=sink, check=True, env=env)
        return time.perf_counter() - start


def xz_blocks(image: Path) -> tuple[int, int, int]:
    """Blocks, compressed and raw bytes of `image`, as `xz --list` gives them."""
    listed = subprocess.run(["xz", "--robot", "--list", image], capture_output=True, text=True, check=True)
    totals = next(row.split("\t") for row in listed.stdout.splitlines() if row.startswith("totals"))
    return int(totals[2]), int(totals[3]), int(totals[4])


def measure_kind(work: Path, image: Path, runs: int) -> dict[str, list[float]]:
    """Each way of unpacking `image`, `runs` times, the order rotated by one each run."""
    out = work / "out.img"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cache = work / "cache"
    digest = cached_sha256(image, cache)

    def ours() -> float:
        shutil.rmtree(cache / "images", ignore_errors=True)
        remember_sha256(image, digest, cache)  # indexed, as after a download: the run unpacks, it does not hash
        return timed([sys.executable, "-c", UNPACK, image, cache], env=env)

    ways: dict[str, Callable[[], float]] = {
        XZ_NULL: lambda: timed(["xz", "-T0", "-dc", image]),
        XZ_FILE: lambda: timed(["xz", "-T0", "-dc", image], out),
        OURS: ours,
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for n in range(runs):
        for name in names[n % len(names):] + names[:n % len(names)]:
            out.unlink(missing_ok=True)
            times[name].append(ways[name]())
    out.unlink(missing_ok=True)
    shutil.rmtree(cache, ignore_errors=True)
    return times


def first_hash(work: Path, image: Path) -> float:
    """Seconds to hash `image` the first time pi-image sees it (what a first unpack of a local file adds)."""
    cache = work / "cache-hash"
    start = time.perf_counter()
    cached_sha256(image, cache)
    elapsed = time.perf_counter() - start
    shutil.rmtree(cache)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-gib", type=float, default=2, help="the image's raw size (a whole number of MiB)")
    parser.add_argument("--data-mib", type=int, default=384, help="MiB of /usr files written into the image's ext4")
    add_workdir_args(parser, "the images")
    add_smoke_arg(parser)
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.size_gib, args.data_mib = 1, 0.5, 8
    with workdir(args, "pi-image-unpack-bench-") as work:
        start = time.perf_counter()
        images = make_images(work, round(args.size_gib * 1024) << 20, args.data_mib)
        print(f"images ready in {time.perf_counter() - start:.1f} s; {os.cpu_count()} CPUs, "
              f"{subprocess.run(['xz', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}")
        for kind, image in images.items():
            blocks, packed, raw = xz_blocks(image)
            print(f"{kind} ({' '.join(KINDS[kind])}): {image.name}, {blocks} xz blocks, {packed / 2**20:.0f} MiB "
                  f"compressed, {raw / 2**20:.0f} MiB raw")
            times = measure_kind(work, image, args.runs)
            floor = statistics.median(times[XZ_FILE])
            for name, seconds in times.items():
                print(median_line(name, seconds, floor, width=26))
            print(f"  {kind}: pi-image / (xz > file) {statistics.median(times[OURS]) / floor:.2f}x, / (xz > /dev/null) "
                  f"{statistics.median(times[OURS]) / statistics.median(times[XZ_NULL]):.2f}x  (goal <= 1.15x the "
                  f"first); a first use hashes the file too: +{first_hash(work, image):.2f} s")


if __name__ == "__main__":
    main()
