"""Build cost: `pi-image build` of one node from a cached raw 4 GiB Ubuntu-layout base holding ~1 GiB of data, against
the floor of `cp --sparse=always` of the same file in the same run; then a fleet of per-node images from one inventory.

    python bench/build_bench.py [--runs 5] [--nodes 20] [--data-mib 1024] [--workdir DIR] [--keep]

Phases (medians of --runs, builds and copies interleaved so that both see the same page cache and disk):
  floor       cp --sparse=always BASE OUT (what any tool must pay to make a new image file); and the same followed
              by `sync OUT`: a build pays that write-back too, because debugfs fsyncs the image it opens
  build       pi-image build --profile worker-8g --base BASE --output OUT (manifest: the output's 4 MiB-chunk digest)
  build+sha   the same with --sha256 (the plain SHA-256 of the raw output too)
  breakdown   one build under cProfile: where the time goes (copy, plan, edits, fsck, checksum, start-up)
  fleet       pi-image build --cluster DIR --all for --nodes inventory nodes: total time and bytes on disk (du),
              against --nodes copies with cp (the floor again)
Goal (issue 3): build / floor <= 1.3x. The base is made once and kept in --workdir (its SHA-256 is cached by
pi-image after the first, untimed, build, as for a user who builds several nodes from one download).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from builder.cluster import add_node, init_cluster  # noqa: E402
from builder.samples import make_sample  # noqa: E402

KUBE_KEY = REPO / "tests" / "data" / "test-Release.key"
BASE_SIZE = 4 << 30
CHUNK = 64 << 20
PHASES = {  # function (file suffix, name) -> label, for the breakdown
    ("builder/build.py", "prepare"): "plan (profile, detect, steps)",
    ("builder/copy.py", "sparse_copy"): "sparse copy of the base",
    ("builder/targets/__init__.py", "detect"): "detect; debugfs fsyncs the copy",
    ("builder/plan.py", "apply"): "apply the plan (debugfs/mtools)",
    ("builder/image/__init__.py", "commit"): "commit the batched edits",
    ("builder/fsck.py", "check_partition"): "fsck of touched filesystems",
    ("builder/build.py", "_manifest"): "manifest (base hash lookup)",
    ("builder/copy.py", "sha256_sparse"): "SHA-256 of the output (--sha256)",
    ("builder/copy.py", "chunk_digest"): "chunk digest of the output",
}


def make_base(path: Path, data_mib: int) -> Path:
    """A raw 4 GiB Ubuntu-layout image whose ext4 holds `data_mib` MiB of random files (written with debugfs)."""
    if path.exists():
        return path
    tmp = path.with_name(path.name + ".tmp")
    make_sample("ubuntu-raspi", tmp, size=BASE_SIZE)
    table = json.loads(subprocess.run(["sfdisk", "--json", tmp], capture_output=True, check=True).stdout)
    offset = next(p["start"] for p in table["partitiontable"]["partitions"] if p["type"] == "83") * 512
    with tempfile.TemporaryDirectory(prefix="pi-image-bench-data-") as scratch:
        commands = ["mkdir /var/lib/bench"]
        left, n = data_mib << 20, 0
        while left > 0:
            size = min(left, 128 << 20)
            host = Path(scratch) / f"blob{n}"
            with open(host, "wb") as f:
                for _ in range(0, size, CHUNK):
                    f.write(os.urandom(min(CHUNK, size)))
            commands.append(f"write {host} /var/lib/bench/blob{n}")
            left, n = left - size, n + 1
        script = Path(scratch) / "script"
        script.write_text("\n".join(commands) + "\n")
        subprocess.run(["debugfs", "-w", "-f", script, f"{tmp}?offset={offset}"], check=True, capture_output=True)
    check = subprocess.run(["e2fsck", "-fn", f"{tmp}?offset={offset}"], capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"the bench base is not clean: {check.stdout}")
    os.replace(tmp, path)
    return path


def pi_image(*args: str | Path, cache: Path) -> float:
    """Seconds one `pi-image` command takes (it must succeed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PI_IMAGE_CACHE": str(cache)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "builder", *map(str, args)], capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pi-image {' '.join(map(str, args))} failed: {proc.stderr}")
    return elapsed


def cp(base: Path, out: Path, durable: bool = False) -> float:
    """Seconds `cp --sparse=always` takes; `durable`: also `sync OUT` (fsync: the copy written back to disk)."""
    start = time.perf_counter()
    subprocess.run(["cp", "--sparse=always", base, out], check=True)
    if durable:
        subprocess.run(["sync", out], check=True)
    return time.perf_counter() - start


def build_args(base: Path, out: Path, *extra: str) -> list[str | Path]:
    return ["build", "--profile", "worker-8g", "--base", base, "--output", out, "--kube-key", KUBE_KEY, *extra]


def fresh(path: Path) -> Path:
    for p in (path, path.with_name(path.name + ".json")):
        p.unlink(missing_ok=True)
    return path


def on_disk(path: Path) -> int:
    return int(subprocess.run(["du", "-s", "-B1", path], capture_output=True, check=True, text=True).stdout.split()[0])


def median_line(label: str, times: list[float], floor: float | None = None) -> str:
    med = statistics.median(times)
    ratio = f"  = {med / floor:.2f}x the floor" if floor else ""
    return f"  {label:24} median {med:6.2f} s  (min {min(times):.2f}, max {max(times):.2f}, n={len(times)}){ratio}"


def single_node(base: Path, work: Path, cache: Path, runs: int) -> None:
    out = work / "node.img"
    first = pi_image(*build_args(base, fresh(out)), cache=cache)
    print(f"  first build (hashes the 4 GiB base once, then cached): {first:.2f} s")
    floor, durable, build, with_sha = [], [], [], []
    for _ in range(runs):
        floor.append(cp(base, fresh(out)))
        durable.append(cp(base, fresh(out), durable=True))
        build.append(pi_image(*build_args(base, fresh(out)), cache=cache))
        with_sha.append(pi_image(*build_args(base, fresh(out), "--sha256"), cache=cache))
    fresh(out)
    f = statistics.median(floor)
    d = statistics.median(durable)
    print(median_line("cp --sparse=always", floor))
    print(median_line("cp + sync (fsync)", durable, f))
    print(median_line("build", build, f) + f", {statistics.median(build) / d:.2f}x cp+sync")
    print(median_line("build --sha256", with_sha, f) + f", {statistics.median(with_sha) / d:.2f}x cp+sync")
    startup = [pi_image("--version", cache=cache) for _ in range(3)]
    print(f"  of which CLI start-up (`pi-image --version`): median {statistics.median(startup):.2f} s")


def breakdown(base: Path, work: Path, cache: Path) -> None:
    """One in-process build under cProfile; cumulative time of each phase function."""
    from click.testing import CliRunner

    from builder.cli import main as cli

    os.environ["PI_IMAGE_CACHE"] = str(cache)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    result = CliRunner().invoke(cli, [str(a) for a in build_args(base, fresh(work / "node.img"))])
    profiler.disable()
    total = time.perf_counter() - start
    fresh(work / "node.img")
    if result.exit_code != 0:
        raise SystemExit(f"profiled build failed: {result.output}")
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    print(f"  profiled build (in-process, no start-up): {total:.2f} s")
    for (suffix, name), label in PHASES.items():
        cumulative = sum(v[3] for (file, _, func), v in stats.items() if file.endswith(suffix) and func == name)
        print(f"    {label:34} {cumulative:6.2f} s  {100 * cumulative / total:5.1f}%")
    tools = sum(v[3] for (file, _, func), v in stats.items() if file.endswith("builder/run.py") and func == "run")
    calls = sum(v[1] for (file, _, func), v in stats.items() if file.endswith("builder/run.py") and func == "run")
    print(f"    {'(external tools, all phases)':34} {tools:6.2f} s  {100 * tools / total:5.1f}%  ({calls} runs)")


def fleet(base: Path, work: Path, cache: Path, nodes: int) -> None:
    cluster = work / "lab"
    shutil.rmtree(cluster, ignore_errors=True)
    lab = init_cluster(cluster, "192.168.6.10:6443", "192.168.6.10:8443", "1.31", "192.168.6.0/24")
    for i in range(1, nodes + 1):
        add_node(lab, f"pi-worker{i}", "worker-8g", address=f"192.168.6.{20 + i}")
    for label, extra in (("--all", ()), ("--all --sha256", ("--sha256",))):
        out = work / "fleet"
        shutil.rmtree(out, ignore_errors=True)
        elapsed = pi_image("build", "--cluster", cluster, "--all", "--base", base, "--output", out,
                           "--kube-key", KUBE_KEY, *extra, cache=cache)
        images = sorted(out.glob("*.img"))
        apparent = sum(p.stat().st_size for p in images)
        print(f"  {label:24} {len(images)} images in {elapsed:6.2f} s ({elapsed / len(images):.2f} s each); "
              f"du {on_disk(out) / 2**30:.2f} GiB on disk for {apparent / 2**30:.0f} GiB apparent")
        shutil.rmtree(out)
    copies = work / "copies"
    copies.mkdir(exist_ok=True)
    start = time.perf_counter()
    for i in range(1, nodes + 1):
        cp(base, copies / f"pi-worker{i}.img")
    elapsed = time.perf_counter() - start
    print(f"  {'floor: cp x ' + str(nodes):24} {nodes} images in {elapsed:6.2f} s; du {on_disk(copies) / 2**30:.2f} GiB")
    shutil.rmtree(copies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--data-mib", type=int, default=1024, help="random data written into the base's ext4")
    parser.add_argument("--workdir", type=Path, help="where the base is kept between runs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp workdir (and its base) afterwards")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pi-image-build-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    try:
        start = time.perf_counter()
        base = make_base(work / f"ubuntu-4g-{args.data_mib}m.img", args.data_mib)
        print(f"base {base}: {base.stat().st_size / 2**30:.0f} GiB apparent, {on_disk(base) / 2**30:.2f} GiB on disk "
              f"(ready in {time.perf_counter() - start:.1f} s); {os.cpu_count()} CPUs")
        print("one node:")
        single_node(base, work, cache, args.runs)
        print("breakdown:")
        breakdown(base, work, cache)
        print(f"fleet of {args.nodes} nodes from one inventory:")
        fleet(base, work, cache, args.nodes)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
