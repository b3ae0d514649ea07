"""Download + unpack cost: a base fetched by URL from a local HTTP server (streamed, hashed, verified, renamed into
the cache) and unpacked into the sparse raw-image cache, against the floor of `xz -dc -T0 FILE > /dev/null` of the
same file in the same run.

    python bench/download.py [--runs 5] [--data-mib 512] [--workdir DIR] [--keep]

The image: a 4 GiB Ubuntu-layout sample whose ext4 holds --data-mib MiB of this machine's own /usr files (real,
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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "integration")]

from builder.catalog import resolve_base  # noqa: E402
from builder.image.inputs import raw_image  # noqa: E402
from builder.samples import make_sample  # noqa: E402
from http_fixture import FileServer  # noqa: E402

BASE_SIZE = 4 << 30
SOURCES = ("/usr/lib", "/usr/share", "/usr/bin")


def make_image(work: Path, data_mib: int) -> Path:
    """The compressed bench image (kept in `work` between runs)."""
    final = work / f"ubuntu-4g-{data_mib}m.img.xz"
    if final.exists():
        return final
    raw = make_sample("ubuntu-raspi", work / "bench.img", size=BASE_SIZE)
    table = json.loads(subprocess.run(["sfdisk", "--json", raw], capture_output=True, check=True).stdout)
    offset = next(p["start"] for p in table["partitiontable"]["partitions"] if p["type"] == "83") * 512
    with tempfile.TemporaryDirectory(prefix="pi-image-bench-", dir=work) as scratch:
        commands, left = ["mkdir /var/lib/bench"], data_mib << 20
        for n, source in enumerate(_files(left)):
            commands.append(f"write {source} /var/lib/bench/f{n}")
        script = Path(scratch) / "script"
        script.write_text("\n".join(commands) + "\n")
        subprocess.run(["debugfs", "-w", "-f", script, f"{raw}?offset={offset}"], check=True, capture_output=True)
    subprocess.run(["xz", "-T2", "-2", "--block-size=32MiB", "-f", raw], check=True)
    os.replace(raw.with_name(raw.name + ".xz"), final)
    return final


def _files(budget: int) -> list[str]:
    """Regular files from SOURCES, up to `budget` bytes in all (names debugfs can take: no spaces)."""
    chosen, total = [], 0
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
    """Seconds to fetch `url` into the empty `cache`, then to unpack it there."""
    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    path = resolve_base(url, cache_dir=cache)
    fetched = time.perf_counter()
    raw_image(path, cache)
    return fetched - start, time.perf_counter() - fetched


def line(label: str, times: list[float], base: float | None = None) -> str:
    med = statistics.median(times)
    ratio = f"  = {med / base:.2f}x the floor" if base else ""
    return f"  {label:34} median {med:6.2f} s  (min {min(times):.2f}, max {max(times):.2f}, n={len(times)}){ratio}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data-mib", type=int, default=512, help="MiB of /usr files written into the image's ext4")
    parser.add_argument("--workdir", type=Path, help="where the image is kept between runs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp workdir (and its image) afterwards")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pi-image-download-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        image = make_image(work, args.data_mib)
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
            download_and_unpack(url, work / "cache")  # warm-up: page cache, imports
            for _ in range(args.runs):
                floors.append(floor(image))
                fetch, unpack = download_and_unpack(url, work / "cache")
                downloads.append(fetch)
                unpacks.append(unpack)
                totals_.append(fetch + unpack)
        finally:
            server.close()
            shutil.rmtree(work / "cache", ignore_errors=True)
        f = statistics.median(floors)
        print(line("floor: xz -dc -T0 > /dev/null", floors))
        print(line("download (GET, SHA-256, rename)", downloads, f))
        print(line("unpack (raw_image)", unpacks, f))
        print(line("download + unpack", totals_, f) + "   (goal <= 1.15x)")
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
