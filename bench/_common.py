"""What several benches share: the test inputs a build needs, running `pi-image` in a world of its own, the bench's
work directory, a cluster of workers, filling an image's root filesystem, and the lines of timed figures.

Every bench takes --smoke: tiny sizes, one run, short phases, no goal judged (tests/integration/test_benches.py runs
each so that none can rot); it still goes through every phase and prints every line a full run prints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KUBE_KEY = REPO / "tests" / "data" / "test-Release.key"  # the tests' stand-in pkgs.k8s.io key: builds run offline
SSH_KEY = REPO / "tests" / "data" / "test-admin.pub"  # a build needs a login
EPOCH = "1700000000"


def add_smoke_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, one run, no goal judged: the test suite's check that this bench runs")


def add_workdir_args(parser: argparse.ArgumentParser, kept: str) -> None:
    parser.add_argument("--workdir", type=Path, help=f"where {kept} is kept between runs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help=f"keep the temp workdir (and {kept}) afterwards")


@contextlib.contextmanager
def workdir(args: argparse.Namespace, prefix: str) -> Iterator[Path]:
    """--workdir, else a temp dir removed afterwards unless --keep: in /var/tmp (disk, as a user's images are, not a
    tmpfs) for a measurement, in $TMPDIR for a smoke run."""
    work = args.workdir or Path(tempfile.mkdtemp(prefix=prefix, dir=None if args.smoke else "/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def pi_image_env(work: Path) -> dict[str, str]:
    """The environment of a `pi-image` run: this checkout, the cache WORK/cache, fixed timestamps, and no default
    cluster (a build or flash without --cluster would use and record into the developer's own). Its bytecode is
    kept in WORK/pycache whatever PYTHONDONTWRITEBYTECODE says: an installed pi-image starts from compiled modules
    (pip compiles them at install), so a run that compiled every source again would time what no user waits for."""
    env = {k: v for k, v in os.environ.items() if k not in ("PI_IMAGE_CLUSTER", "PYTHONDONTWRITEBYTECODE")}
    return {**env, "PYTHONPATH": str(REPO), "PI_IMAGE_CACHE": str(work / "cache"), "SOURCE_DATE_EPOCH": EPOCH,
            "XDG_CONFIG_HOME": str(work / "config"), "PYTHONPYCACHEPREFIX": str(work / "pycache")}


def pi_image(work: Path, *args: str | Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Seconds and result of `pi-image ARGS` (see pi_image_env); a failure stops the bench with its message."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "builder", *map(str, args)], capture_output=True, text=True,
                          env=pi_image_env(work), check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"pi-image {' '.join(map(str, args))} failed: {proc.stderr.strip()}")
    return elapsed, proc


def worker_cluster(work: Path, directory: Path, nodes: int) -> Path:
    """A cluster directory made with the CLI, holding pi-worker1..N (worker-8g, fixed addresses)."""
    pi_image(work, "cluster", "init", directory, "--api-server", "192.168.6.10:6443", "--endpoint",
             "192.168.6.10:8443", "--kubernetes-version", "1.31", "--node-subnet", "192.168.6.0/24", "--gateway",
             "192.168.6.1")
    for i in range(1, nodes + 1):
        pi_image(work, "cluster", "add-node", directory, f"pi-worker{i}", "--profile", "worker-8g", "--address",
                 f"192.168.6.{20 + i}")
    return directory


def write_into_root(image: Path, files: Iterable[Path | str]) -> None:
    """Copy host `files` into /var/lib/bench/f0, f1, ... of the ext4 (type 83) partition of `image`, with one
    debugfs run; the filesystem must come out clean."""
    table = json.loads(subprocess.run(["sfdisk", "--json", image], capture_output=True, check=True).stdout)
    offset = next(p["start"] for p in table["partitiontable"]["partitions"] if p["type"] == "83") * 512
    commands = ["mkdir /var/lib/bench", *(f"write {source} /var/lib/bench/f{n}" for n, source in enumerate(files))]
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as script:
        script.write("\n".join(commands) + "\n")
        script.flush()
        subprocess.run(["debugfs", "-w", "-f", script.name, f"{image}?offset={offset}"], check=True,
                       capture_output=True)
    check = subprocess.run(["e2fsck", "-fn", f"{image}?offset={offset}"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        sys.exit(f"the bench image is not clean: {check.stdout}")


def on_disk(paths: Iterable[Path]) -> int:
    """Bytes the files take on disk (st_blocks * 512)."""
    return sum(p.stat().st_blocks * 512 for p in paths)


def median_line(label: str, times: list[float], floor: float | None = None, width: int = 24) -> str:
    """`label`: median, min, max and count of `times` seconds, and the median's ratio to `floor` if given."""
    med = statistics.median(times)
    ratio = f"  = {med / floor:.2f}x the floor" if floor else ""
    return f"  {label:{width}} median {med:6.2f} s  (min {min(times):.2f}, max {max(times):.2f}, n={len(times)}){ratio}"
