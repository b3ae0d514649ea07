"""Download + unpack cost: a base fetched by URL from a local HTTP server (streamed, hashed, verified, renamed into
the cache) and unpacked into the sparse raw-image cache, against the floor of `xz -dc -T0 FILE > /dev/null` of the
same file in the same run.

    python bench/download.py [--runs 5] [--size-gib 4] [--data-mib 512] [--workdir DIR] [--keep] [--smoke]

The image: a --size-gib Ubuntu-layout sample whose ext4 holds --data-mib MiB of this machine's own /usr files (real,
compressible content, written with debugfs), compressed with `xz -T2 -2 --block-size=32MiB`, so that it has several
blocks and xz decompresses it on every core (the level changes how long the image takes to make, ~3 min for 512 MiB
on 2 CPUs, far more than how fast it unpacks). It is made once and kept in --workdir.
Phases (medians of --runs, interleaved so that both see the same page cache):
  floor      xz -dc -T0 IMAGE.xz > /dev/null
  download   resolve_base(URL#sha256=HEX) into an empty cache: GET, SHA-256 while streaming, fsync, rename
  unpack     raw_image() of that download, as a build does: its SHA-256 (indexed), then xz -dc -T0 into a sparse
             CACHE/images/SHA.img
  total      download + unpack, the ratio to the floor
Goal (issue 18): total <= 1.15x the floor.

--smoke: a 512 MiB image holding 8 MiB, one run: the suite runs it so that the script cannot rot.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))  # join_fakes, helpers
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (
    add_smoke_arg,
    add_workdir_args,
    median_line,
    workdir,
    write_into_root,
)
from http_fixture import FileServer

from builder.bases.catalog import resolve_base
from builder.image.inputs import raw_image
from builder.samples import make_sample

SOURCES = ("/usr/lib", "/usr/share", "/usr/bin")


def make_image(work: Path, size: int, data_mib: int) -> Path:
    """The compressed bench image (kept in `work` between runs)."""
    final = work / f"ubuntu-{size / 2**30:g}g-{data_mib}m.img.xz"
    if final.exists():
        return final
    raw = make_sample("ubuntu-raspi", work / "bench.img", size=size)
    write_into_root(raw, usr_files(data_mib << 20))
    subprocess.run(["xz", "-T2", "-2", "--block-size=32MiB", "-f", raw], check=True)
    os.replace(raw.with_name(raw.name + ".xz"), final)
    return final


def usr_files(budget: int) -> list[str]:
    """Regular files from SOURCES, up to `budget` bytes in all (names debugfs can take: no spaces)."""
    chosen: list[str] = []
    total = 0
    for root in SOURCES:
        for directory, _, names in os.walk(root):
            for name in names:
                path = os.path.join(directory, name)
                if " " in path or not os.path.isfile(path) or os.path.islink(path):
                    continue
                size = os.path.getsize(path)
                if total + size > budget:
                    return chosen
                chosen.append(path)
                total += size
    return chosen


def floor(image: Path) -> float:
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        subprocess.run(["xz", "-dc", "-T0", image], stdout=sink, check=True)
    return time.perf_counter() - start


def download_and_unpack(url: str, cache: Path) -> tuple[float, float]:
    """Seconds to fetch `url` into `cache` (a new directory: pi-image holds what it unpacked until the process ends,
    so a cache emptied in place would be answered from that), then to unpack it there; `cache` is removed after."""
    start = time.perf_counter()
    path = resolve_base(url, cache_dir=cache)
    fetched = time.perf_counter()
    raw = raw_image(path, cache)
    unpacked = time.perf_counter()
    if raw == path or not raw.is_file():
        sys.exit(f"download: raw_image gave {raw} for {path}, not an unpacked image in {cache}")
    shutil.rmtree(cache)
    return fetched - start, unpacked - fetched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-gib", type=float, default=4, help="the image's raw size (a whole number of MiB)")
    parser.add_argument("--data-mib", type=int, default=512, help="MiB of /usr files written into the image's ext4")
    add_workdir_args(parser, "the image")
    add_smoke_arg(parser)
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.size_gib, args.data_mib = 1, 0.5, 8
    with workdir(args, "pi-image-download-bench-") as work:
        start = time.perf_counter()
        image = make_image(work, round(args.size_gib * 1024) << 20, args.data_mib)
        blocks = subprocess.run(["xz", "--robot", "--list", image], capture_output=True, text=True, check=True)
        totals = next(f for f in (row.split("\t") for row in blocks.stdout.splitlines()) if f[0] == "totals")
        print(f"image {image.name}: {int(totals[3]) / 2**20:.0f} MiB compressed, {int(totals[4]) / 2**30:.1f} GiB "
              f"raw, {totals[2]} xz blocks (ready in {time.perf_counter() - start:.1f} s); {os.cpu_count()} CPUs")
        data = image.read_bytes()
        server = FileServer({image.name: data})
        url = f"{server.url(image.name)}#sha256={hashlib.sha256(data).hexdigest()}"
        del data
        try:
            floors, downloads, unpacks, totals_ = [], [], [], []
            download_and_unpack(url, work / "cache-warm-up")  # page cache, imports
            for n in range(args.runs):
                floors.append(floor(image))
                fetch, unpack = download_and_unpack(url, work / f"cache-{n}")
                downloads.append(fetch)
                unpacks.append(unpack)
                totals_.append(fetch + unpack)
        finally:
            server.close()
        f = statistics.median(floors)
        print(median_line("floor: xz -dc -T0 > /dev/null", floors, width=34))
        print(median_line("download (GET, SHA-256, rename)", downloads, f, width=34))
        print(median_line("unpack (raw_image)", unpacks, f, width=34))
        print(median_line("download + unpack", totals_, f, width=34) + "   (goal <= 1.15x)")


if __name__ == "__main__":
    main()
