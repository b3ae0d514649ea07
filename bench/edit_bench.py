"""Edit cost vs image size: read + write + commit (+ verify) one file in the ext4 root of Ubuntu-layout images.

The cost must not grow with the image: debugfs touches only the blocks it needs. Prints the median of N runs
per image size, and the ratio of the biggest to the smallest.

    python bench/edit_bench.py [--runs 5] [--smoke]

--smoke: one run per size (the images are sparse: their sizes cost nothing to make): the suite runs it so that the
script cannot rot.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import add_smoke_arg

from builder.image import DiskImage
from builder.samples import make_sample

SIZES_MIB = [512, 4096, 16384]


def one_edit(path: Path, n: int) -> float:
    start = time.perf_counter()
    image = DiskImage(path, writable=True)
    root = image.filesystem(image.partition("writable"))
    text = root.read_text("/etc/hostname") or "bench"
    root.write("/etc/hostname", f"{text.strip()[:20]}-{n}\n".encode())
    image.commit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    add_smoke_arg(parser)
    args = parser.parse_args()
    if args.smoke:
        args.runs = 1
    tmp = Path(tempfile.mkdtemp(prefix="pi-image-edit-bench-"))
    try:
        medians = {}
        for size in SIZES_MIB:
            path = make_sample("ubuntu-raspi", tmp / f"{size}.img", size=size << 20)
            times = [one_edit(path, n) for n in range(args.runs)]
            medians[size] = statistics.median(times)
            print(f"{size:>6} MiB image: read+write+commit of /etc/hostname: median {medians[size] * 1000:.0f} ms "
                  f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, {args.runs} runs)")
        ratio = medians[SIZES_MIB[-1]] / medians[SIZES_MIB[0]]
        print(f"ratio {SIZES_MIB[-1]} MiB / {SIZES_MIB[0]} MiB: {ratio:.2f}x  (1.0 = cost independent of image size)")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
