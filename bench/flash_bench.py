"""Flash cost: `pi-image flash` of a 4 GiB Ubuntu-layout image holding ~1 GiB to a card file, against `dd` and
`bmaptool copy` in the same run (a fleet of cards: bench/fleet_bench.py).

    python bench/flash_bench.py [--size-gib 4] [--used-gib 1] [--runs 3] [--workdir DIR] [--keep]
                                [--smoke]

Phases:
  image   the ubuntu-raspi 22.04 sample (make_sample: sfdisk, mkfs.vfat + mtools, mkfs.ext4 -d; MBR, p1 FAT32
          `system-boot` 256 MiB at 1 MiB, p2 ext4 `writable` to the end) at --size-gib, grown to --used-gib of
          incompressible (os.urandom) files in a realistic tree: kernel, initrd, firmware, dtbs and overlays copied
          into the FAT with mtools; thousands of small files (docs, Python, kernel modules) and some large ones
          (libraries, snaps) written into the ext4 with one debugfs run. Both filesystems are fscked before use.
  card    a regular file of the image's size, written in full once with a repeating random pattern (a used card,
          every block allocated); reused by every tool and run.
  flash   medians of --runs (min and max shown too), the tools' order rotated by one each run:
            dd if=IMAGE of=CARD bs=4M conv=fsync,notrunc
            bmaptool copy --bmap IMAGE.bmap IMAGE CARD      (its bmap made once by `bmaptool create`, timed apart)
            pi-image flash IMAGE CARD --yes --json           (verification by reading back included)
            pi-image flash ... --no-verify                   (not in the goals: what the reading back costs)
          Before every run the card is fully allocated again (bmaptool truncates a regular-file destination; the
          freed space comes back as unwritten extents, as on a card every block exists), and the page cache of
          the image and the card is dropped (fsync, then POSIX_FADV_DONTNEED: unprivileged, only these two files),
          so every tool reads the image from disk and ends with its own fsync.

Bytes written are the child's write_bytes I/O counter: os.wait4 returns the rusage of the reaped child and of the
children it reaped itself, whose ru_oublock is the kernel's write_bytes / 512 (bytes the process caused to be sent
to storage, counted when it dirties a page cache page or submits direct I/O). It needs no privilege and no polling
of /proc/PID/io before the child exits; each figure is cross-checked with what the tool says it wrote. It counts
writes to any file: pi-image's include two copies of the table regions (blanked first, written last) and the
scratch copies its partition-table reader makes (2 MiB each time it reads a table).

Goals (issue 17): pi-image bytes written ~= the image's used bytes (builder.image.usage: usage_map().mapped_bytes());
time <= bmaptool copy's and <= 0.35x dd's, verification included.

Everything is written to regular files (the card too): no root, no loop device.
--smoke: a 512 MiB image holding 32 MiB, one run: the suite runs it so that the script cannot rot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (
    add_smoke_arg,
    add_workdir_args,
    on_disk,
    pi_image_env,
    workdir,
)

from builder.errors import UserError
from builder.image import DiskImage
from builder.image.fsck import check_partition
from builder.image.usage import usage_map
from builder.samples import make_sample

MIB, GIB = 1 << 20, 1 << 30
DD, BMAPTOOL, PI, PI_NO_VERIFY = "dd bs=4M conv=fsync", "bmaptool copy", "pi-image flash", "pi-image flash --no-verify"
PATTERN = 4 * MIB  # the card's fill: one random block repeated
SEED = 17
FILES_PER_DIR = 200
BOOT_SHARE = 0.05  # of --used-gib, copied into system-boot (at most BOOT_MAX)
BOOT_MAX = 160 * MIB
# The root tree: (directory, file suffix, smallest and largest size, share of the ext4's data); sizes log-uniform.
ROOT_TREE = [
    ("usr/share/doc", ".gz", 512, 16 << 10, 0.02),
    ("usr/lib/python3/dist-packages", ".py", 1 << 10, 64 << 10, 0.05),
    ("usr/lib/modules/5.15.0-1034-raspi/kernel/drivers", ".ko", 4 << 10, 512 << 10, 0.10),
    ("usr/lib/firmware", ".bin", 16 << 10, 2 * MIB, 0.08),
    ("usr/bin", "", 16 << 10, 4 * MIB, 0.05),
    ("usr/lib/aarch64-linux-gnu", ".so", 64 << 10, 16 * MIB, 0.20),
    ("var/lib/snapd/snaps", ".snap", 32 * MIB, 128 * MIB, 0.50),
]
# The boot tree: (directory, suffix, smallest and largest size, share of the FAT's data).
BOOT_TREE = [
    ("overlays", ".dtbo", 1 << 10, 8 << 10, 0.03),
    ("dtbs", ".dtb", 24 << 10, 64 << 10, 0.03),
    ("firmware", ".elf", 256 << 10, 3 * MIB, 0.14),
    ("", ".img", 8 * MIB, 40 * MIB, 0.80),
]


# --- the image and the card -----------------------------------------------------------------------------------------

def tool(*command: str | Path) -> str:
    """Run a setup command (it must succeed); its stderr."""
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))[:200]} failed: {result.stdout}{result.stderr}")
    return result.stderr


def write_tree(root: Path, spec: list[tuple[str, str, int, int, float]], budget: int, rng: random.Random
               ) -> list[Path]:
    """Random files under `root` as `spec` says, `budget` bytes in all; their paths relative to `root`."""
    files = []
    for directory, suffix, low, high, share in spec:
        left, n = int(budget * share), 0
        while left > 0:
            size = min(left, int(math.exp(rng.uniform(math.log(low), math.log(high)))))
            bucket = n // FILES_PER_DIR
            rel = Path(directory, f"d{bucket:03}" if bucket else "", f"f{n:05}{suffix}")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            with open(root / rel, "wb") as f:
                f.writelines(os.urandom(min(64 * MIB, size - start)) for start in range(0, size, 64 * MIB))
            files.append(rel)
            left, n = left - size, n + 1
    return files


def fill_fat(image: Path, offset: int, scratch: Path, budget: int, rng: random.Random) -> None:
    """Copy a boot tree of `budget` bytes into the FAT at `offset` with mtools (one mcopy per directory)."""
    stage = scratch / "boot"
    files = write_tree(stage, BOOT_TREE, budget, rng)
    target = f"{image}@@{offset}"
    by_dir: dict[Path, list[Path]] = {}
    for rel in files:
        by_dir.setdefault(rel.parent, []).append(rel)
    made = {Path(".")}
    for directory in sorted(by_dir):
        for parent in [*reversed(directory.parents), directory]:
            if parent not in made:
                tool("mmd", "-i", target, f"::/{parent}")
                made.add(parent)
        into = "::/" if directory == Path(".") else f"::/{directory}/"
        tool("mcopy", "-i", target, *(stage / r for r in by_dir[directory]), into)
    shutil.rmtree(stage)


def fill_ext4(image: Path, offset: int, scratch: Path, budget: int, rng: random.Random) -> int:
    """Write a root tree of `budget` bytes into the ext4 at `offset` with one debugfs run; return the file count."""
    stage = scratch / "root"
    files = write_tree(stage, ROOT_TREE, budget, rng)
    directories = sorted({parent for rel in files for parent in rel.parents if parent != Path(".")},
                         key=lambda p: (len(p.parts), str(p)))
    commands = [f"mkdir /{d}" for d in directories] + [f"write {stage / rel} /{rel}" for rel in files]
    script = scratch / "root.debugfs"
    script.write_text("\n".join(commands) + "\n")
    errors = [line for line in tool("debugfs", "-w", "-f", script, f"{image}?offset={offset}").splitlines()
              if line.strip() and not line.startswith("debugfs ") and "already exists" not in line]
    if errors:
        raise SystemExit(f"debugfs could not fill the bench image: {errors[0]}")
    shutil.rmtree(stage)
    return len(files)


def make_image(path: Path, size: int, used: int) -> Path:
    """The bench image (kept in the workdir between runs; see the module docstring)."""
    if path.exists():
        return path
    tmp = path.with_name(path.name + ".tmp")
    make_sample("ubuntu-raspi", tmp, release="22.04", size=size)
    disk = DiskImage(tmp)
    boot, root = disk.partition("system-boot").start, disk.partition("writable").start
    if used > (size - root) * 0.8:
        raise SystemExit(f"--used-gib {used / GIB:g} does not fit a {size / GIB:g} GiB image: make it larger")
    rng = random.Random(SEED)
    boot_budget = min(BOOT_MAX, int(used * BOOT_SHARE))
    with tempfile.TemporaryDirectory(prefix="pi-image-flash-bench-data-", dir=path.parent) as scratch:
        fill_fat(tmp, boot, Path(scratch), boot_budget, rng)
        count = fill_ext4(tmp, root, Path(scratch), used - boot_budget, rng)
    for partition in disk.partitions:
        try:
            check_partition(disk, partition)
        except UserError as err:
            raise SystemExit(f"the bench image is not clean: {err}") from None
    os.replace(tmp, path)
    print(f"  made with {count} files in the ext4")
    return path


def make_card(path: Path, size: int) -> Path:
    """A card file of `size` bytes written in full (a used card), kept between runs."""
    if path.exists() and path.stat().st_size == size:
        return path
    block = os.urandom(PATTERN)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.writelines(block[:size - start] for start in range(0, size, PATTERN))
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def settle(image: Path, card: Path, size: int) -> None:
    """Before each run: the card fully allocated and `size` long, nothing of either file in the page cache."""
    with open(card, "r+b") as f:
        f.truncate(size)
        os.posix_fallocate(f.fileno(), 0, size)
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    with open(image, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


# --- measuring --------------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """One command's wall time, bytes written and read (its I/O counters, children included), and its output."""

    seconds: float
    written: int
    read: int
    stdout: str
    stderr: str


def measure(command: list[str | Path], env: dict[str, str] | None = None) -> Run:
    """Run `command` (it must succeed) and reap it with wait4, for its own rusage."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in command], stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        run = Run(elapsed, usage.ru_oublock * 512, usage.ru_inblock * 512, out.read().decode(errors="replace"),
                  err.read().decode(errors="replace"))
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed ({proc.returncode}): {run.stderr[-2000:]}")
    return run


def pi_image(work: Path, *args: str | Path) -> Run:
    """Run `pi-image ARGS` (it must succeed) in the bench's own world (_common.pi_image_env), measured."""
    return measure([sys.executable, "-m", "builder", *args], pi_image_env(work))


def bmap_mapped(bmap: Path) -> int:
    """Bytes a bmap file says are mapped (what bmaptool copy writes)."""
    root = ET.parse(bmap).getroot()
    return int(root.findtext("MappedBlocksCount", "0")) * int(root.findtext("BlockSize", "0"))


def dd_says(run: Run) -> int:
    """The bytes dd reports it copied."""
    match = re.search(r"^(\d+) bytes", run.stderr, re.MULTILINE)
    return int(match.group(1)) if match else -1


def pi_says(run: Run) -> int:
    """The bytes `pi-image flash --json` reports it wrote."""
    return json.loads(run.stdout)["written_bytes"]


def median(runs: list[Run], field: str) -> float:
    """The median of one field of `runs`."""
    return statistics.median(getattr(r, field) for r in runs)


def flash_phase(image: Path, card: Path, work: Path, runs: int) -> None:
    """Flash `image` onto `card` with each tool `runs` times; print the table and the ratios to the goals."""
    size = image.stat().st_size
    start = time.perf_counter()
    usage = usage_map(image)
    mapped = usage.mapped_bytes()
    print(f"  image used bytes (usage_map): {mapped / MIB:.1f} MiB of {size / GIB:g} GiB "
          f"in {len(usage.ranges)} ranges + {len(usage.last)} last ({time.perf_counter() - start:.2f} s)")
    for reason in usage.reasons:
        print(f"    {reason}")
    bmap = work / (image.name + ".bmap")
    create = measure(["bmaptool", "create", image, "-o", bmap])
    print(f"  bmaptool create: {create.seconds:.2f} s (not counted below); bmap maps "
          f"{bmap_mapped(bmap) / MIB:.1f} MiB")
    flash: list[str | Path] = [sys.executable, "-m", "builder", "flash", image, card, "--yes", "--json"]
    tools: dict[str, tuple[list[str | Path], Callable[[Run], int], dict[str, str] | None]] = {
        DD: (["dd", f"if={image}", f"of={card}", "bs=4M", "conv=fsync,notrunc"], dd_says, None),
        BMAPTOOL: (["bmaptool", "copy", "--bmap", bmap, image, card], lambda _: bmap_mapped(bmap), None),
        PI: (flash, pi_says, pi_image_env(work)),
        PI_NO_VERIFY: ([*flash, "--no-verify"], pi_says, pi_image_env(work)),
    }
    names = list(tools)
    results: dict[str, list[Run]] = {name: [] for name in names}
    says: dict[str, int] = {}
    for n in range(runs):
        for name in names[n % len(names):] + names[:n % len(names)]:
            command, report, env = tools[name]
            settle(image, card, size)
            run = measure(command, env)
            results[name].append(run)
            says[name] = report(run)
    print(f"  {'tool':26} {'median s':>8} {'min s':>6} {'max s':>6} {'written MiB':>11} {'tool says':>9} "
          f"{'read MiB':>8}  (n={runs}, order rotated by one each run)")
    for name in names:
        rs = results[name]
        print(f"  {name:26} {median(rs, 'seconds'):8.2f} {min(r.seconds for r in rs):6.2f} "
              f"{max(r.seconds for r in rs):6.2f} {median(rs, 'written') / MIB:11.1f} {says[name] / MIB:9.1f} "
              f"{median(rs, 'read') / MIB:8.1f}")
    seconds = {name: median(rs, "seconds") for name, rs in results.items()}
    for name in (PI, PI_NO_VERIFY):
        own = statistics.median(json.loads(r.stdout)["seconds"] for r in results[name])
        print(f"  {name}: {own:.2f} s of {seconds[name]:.2f} s by its own timer (--json `seconds`: blank, write, "
              "verify, table; outside it: start-up, both tables, the usage map)")
    written = {name: median(rs, "written") for name, rs in results.items()}
    print(f"  pi-image / bmaptool time:       {seconds[PI] / seconds[BMAPTOOL]:5.2f}  (goal <= 1.0; --no-verify "
          f"{seconds[PI_NO_VERIFY] / seconds[BMAPTOOL]:.2f})")
    print(f"  pi-image / dd time:             {seconds[PI] / seconds[DD]:5.2f}  (goal <= 0.35; --no-verify "
          f"{seconds[PI_NO_VERIFY] / seconds[DD]:.2f})")
    print(f"  pi-image written / used bytes:  {written[PI] / mapped:5.3f}  (goal ~1.0)")
    print(f"  bmaptool written / used bytes:  {written[BMAPTOOL] / mapped:5.3f}; dd: {written[DD] / mapped:5.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=4, help="the image's size (a whole number of MiB)")
    parser.add_argument("--used-gib", type=float, default=1, help="random file data in the image's filesystems")
    parser.add_argument("--runs", type=int, default=3)
    add_workdir_args(parser, "the image and the card")
    add_smoke_arg(parser)
    args = parser.parse_args()
    if args.smoke:
        args.size_gib, args.used_gib, args.runs = 0.5, 1 / 32, 1
    size, used = round(args.size_gib * 1024) * MIB, round(args.used_gib * GIB)
    began = time.perf_counter()
    with workdir(args, "pi-image-flash-bench-") as work:
        print(f"image ({os.cpu_count()} CPUs):")
        image = make_image(work / f"ubuntu-{args.size_gib:g}g-{args.used_gib:g}g.img", size, used)
        card = make_card(work / f"card-{args.size_gib:g}g.img", size)
        print(f"  {image}: {size / GIB:g} GiB apparent, {on_disk([image]) / MIB:.1f} MiB on disk; card {card} "
              f"written in full (ready after {time.perf_counter() - began:.1f} s)")
        print("flash to a card file:")
        flash_phase(image, card, work, args.runs)
        print(f"total {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
