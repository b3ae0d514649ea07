"""Build cost: `pi-image build` of one node from a cached raw 4 GiB Ubuntu-layout base holding ~1 GiB of data, against
the floor of `cp --sparse=always` of the same file and against the root loop-mount peer, in the same run; then a
fleet of per-node images from one inventory.

    python bench/build_bench.py [--runs 5] [--nodes 20] [--size-gib 4] [--data-mib 1024] [--files 0] [--workdir DIR]
                                [--keep] [--smoke]
    a realistic root:  --data-mib 3072 --files 80000 --nodes 0

Phases (medians of --runs, builds, copies and peers interleaved so that all see the same page cache and disk):
  floor       cp --sparse=always BASE OUT (what any tool must pay to make a new image file); and the same followed
              by `sync OUT`: a build pays that write-back too, because debugfs fsyncs the image it opens
  peer        (root only) what an admin would do by hand: cp --sparse=always BASE OUT, mount -o loop,offset=<ext4>
              OUT MNT, write the root filesystem's files of the build's own plan (the same contents, modes, owners,
              links and removals), umount, sync OUT
  build       pi-image build --profile worker-8g --base BASE --output OUT (manifest: the output's 4 MiB-chunk digest)
  build+sha   the same with --sha256 (the plain SHA-256 of the raw output too)
  breakdown   one build under cProfile: where the time goes (copy, plan, edits, fsck, checksum, start-up)
  fleet       pi-image build --cluster DIR --all for --nodes inventory nodes (0: skipped): total time and bytes on
              disk, against --nodes copies with cp (the floor again)
Every build logs in with the tests' SSH key and trusts their stand-in apt key (tests/data), so it runs offline. Every
pi-image run starts from compiled bytecode (kept in WORK/pycache, written by the first, untimed build), as an
installed pi-image does.
Goals (issue 28): build / peer <= 1.0x, build / (cp + sync) <= 1.3x. The base is made once and kept in --workdir
(its SHA-256 and chunk digests are cached by pi-image after the first, untimed, build, as for a user who builds
several nodes from one download). --files adds that many small files (1-16 KiB, 1000 per directory) to the root.

--smoke: a 512 MiB base holding 8 MiB and 200 small files, one run, a fleet of 2: the suite runs it so that the
script cannot rot.
"""
from __future__ import annotations

import argparse
import cProfile
import importlib
import inspect
import json
import operator
import os
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (
    KUBE_KEY,
    SSH_KEY,
    add_smoke_arg,
    add_workdir_args,
    median_line,
    on_disk,
    pi_image,
    pi_image_env,
    workdir,
    worker_cluster,
    write_into_root,
)

from builder.build import BuildRequest, manifest_op, prepare
from builder.plan import FileOp
from builder.samples import make_sample

GIB = 1 << 30
BLOB = 128 << 20  # the base's data is written as files of this size
PHASES = {  # (module, function) -> label, for the breakdown
    ("builder.build", "prepare"): "plan (profile, detect, steps)",
    ("builder.image.copy", "sparse_copy"): "sparse copy (sent to the disk)",
    ("builder.targets", "detect"): "detect; debugfs fsyncs the copy",
    ("builder.plan", "apply"): "apply the plan (debugfs/mtools)",
    ("builder.image", "DiskImage.commit"): "commit the batched edits",
    ("builder.image.fsck", "check_partition"): "fsck of touched filesystems",
    ("builder.image.inputs", "cached_sha256"): "manifest (base hash lookup)",
    ("builder.image.copy", "sha256_sparse"): "SHA-256 of the output (--sha256)",
    ("builder.image.dirty", "output_chunk_digest"): "chunk digest of the output",
}
TOOLS = ("builder.run", "run")  # every external tool a build runs


def make_base(path: Path, size: int, data_mib: int, files: int) -> Path:
    """A raw Ubuntu-layout image of `size` bytes whose ext4 holds `data_mib` MiB of random files and `files` small
    ones."""
    if path.exists():
        return path
    tmp = path.with_name(path.name + ".tmp")
    make_sample("ubuntu-raspi", tmp, size=size)
    scratch = path.with_name(path.name + ".data")
    scratch.mkdir(exist_ok=True)
    total = data_mib << 20
    blobs = [scratch / f"blob{n}" for n in range(-(-total // BLOB))]
    for n, blob in enumerate(blobs):
        blob.write_bytes(os.urandom(min(BLOB, total - n * BLOB)))
    write_into_root(tmp, blobs)
    shutil.rmtree(scratch)
    add_small_files(tmp, files)
    os.replace(tmp, path)
    return path


def add_small_files(image: Path, count: int) -> None:
    """`count` files of 1-16 KiB into /usr/share/bench/dN/fM of the image's ext4 (1000 per directory), with one
    debugfs run, as a distribution's root holds them."""
    if not count:
        return
    offset = ext4_offset(image)
    rng = random.Random(count)
    with tempfile.TemporaryDirectory(dir=image.parent) as tmp:
        sources = [Path(tmp) / f"s{n}" for n in range(16)]
        for n, source in enumerate(sources):
            source.write_bytes(os.urandom((n + 1) << 10))
        commands = ["mkdir /usr/share/bench"]
        for n in range(count):
            if n % 1000 == 0:
                commands.append(f"mkdir /usr/share/bench/d{n // 1000}")
            commands.append(f"write {rng.choice(sources)} /usr/share/bench/d{n // 1000}/f{n}")
        script = Path(tmp) / "script"
        script.write_text("\n".join(commands) + "\n")
        subprocess.run(["debugfs", "-w", "-f", script, f"{image}?offset={offset}"], check=True, capture_output=True)
    check = subprocess.run(["e2fsck", "-fn", f"{image}?offset={offset}"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        sys.exit(f"the bench image is not clean after adding small files: {check.stdout[-2000:]}")


def ext4_offset(image: Path) -> int:
    """Byte offset of the image's ext4 (type 83) partition."""
    table = json.loads(subprocess.run(["sfdisk", "--json", image], capture_output=True, check=True).stdout)
    return next(p["start"] for p in table["partitiontable"]["partitions"] if p["type"] == "83") * 512


def timed(work: Path, *args: str | Path) -> float:
    """Seconds one `pi-image` command takes (it must succeed)."""
    return pi_image(work, *args)[0]


def cp(base: Path, out: Path, durable: bool = False) -> float:
    """Seconds `cp --sparse=always` takes; `durable`: also `sync OUT` (fsync: the copy written back to disk)."""
    start = time.perf_counter()
    subprocess.run(["cp", "--sparse=always", base, out], check=True)
    if durable:
        subprocess.run(["sync", out], check=True)
    return time.perf_counter() - start


def build_args(base: Path, out: Path, *extra: str) -> list[str | Path]:
    return ["build", "--profile", "worker-8g", "--base", base, "--output", out, "--kube-key", KUBE_KEY, "--ssh-key",
            SSH_KEY, *extra]


def fresh(path: Path) -> Path:
    for p in (path, path.with_name(path.name + ".json")):
        p.unlink(missing_ok=True)
    return path


def single_node(base: Path, work: Path, runs: int) -> None:
    out = work / "node.img"
    first = timed(work, *build_args(base, fresh(out)))
    print(f"  first build (hashes the {base.stat().st_size / GIB:g} GiB base once, then cached): {first:.2f} s")
    ops = peer_ops(base, work, out)
    by_root = sum(op.fs == "root" for op in ops)
    can_mount = os.geteuid() == 0
    print(f"  the build writes {len(ops)} entries, {by_root} of them into the root ext4: the peer writes those"
          if can_mount else "  peer skipped: loop-mounting the image needs root (run the bench as root to measure it)")
    floor, durable, peers, build, with_sha = [], [], [], [], []
    for _ in range(runs):
        floor.append(cp(base, fresh(out)))
        durable.append(cp(base, fresh(out), durable=True))
        if can_mount:
            peers.append(peer(base, fresh(out), work / "mnt", [op for op in ops if op.fs == "root"]))
        build.append(timed(work, *build_args(base, fresh(out))))
        with_sha.append(timed(work, *build_args(base, fresh(out), "--sha256")))
    fresh(out)
    f = statistics.median(floor)
    print(median_line("cp --sparse=always", floor))
    print(median_line("cp + sync (fsync)", durable, f))
    if peers:
        print(median_line("peer (loop mount)", peers, f))
    for label, times in (("build", build), ("build --sha256", with_sha)):
        print(median_line(label, times, f))
        print(f"    {ratio_line(times, durable, 'cp+sync')}")
        if peers:
            print(f"    {ratio_line(times, peers, 'peer')}")
    startup = [timed(work, "build", "--help") for _ in range(min(3, runs))]  # imports what a build imports
    print(f"  of which CLI start-up (`pi-image build --help`): median {statistics.median(startup):.2f} s")


def ratio_line(times: list[float], others: list[float], label: str) -> str:
    """Median of the per-run ratios times/others (each pair measured back to back), their spread and count."""
    ratios = [t / o for t, o in zip(times, others, strict=True)]
    return (f"{statistics.median(ratios):.2f}x {label} (per-run min {min(ratios):.2f}, max {max(ratios):.2f}, "
            f"n={len(ratios)}; medians {statistics.median(times) / statistics.median(others):.2f}x)")


def peer_ops(base: Path, work: Path, out: Path) -> list[FileOp]:
    """What a worker-8g build writes: its plan (prepared in-process with the bench's inputs) and its build record
    (from the manifest of the build just made at `out`)."""
    os.environ.update(pi_image_env(work))
    ctx = prepare(BuildRequest(profile="worker-8g", base=str(base), kube_key=KUBE_KEY,
                               ssh_keys=[SSH_KEY.read_text().strip()]))
    manifest = json.loads(out.with_name(out.name + ".json").read_text())
    return ctx.plan.ops + [manifest_op(manifest)]


def peer(base: Path, out: Path, mnt: Path, ops: list[FileOp]) -> float:
    """Seconds the root loop-mount peer takes: cp --sparse=always, mount the ext4, carry out `ops`, umount, sync."""
    mnt.mkdir(exist_ok=True)
    start = time.perf_counter()
    subprocess.run(["cp", "--sparse=always", base, out], check=True)
    subprocess.run(["mount", "-o", f"loop,offset={ext4_offset(out)}", out, mnt], check=True)
    try:
        for op in ops:
            carry_out(mnt, op)
    finally:
        subprocess.run(["umount", mnt], check=True)
    subprocess.run(["sync", out], check=True)
    return time.perf_counter() - start


def carry_out(root: Path, op: FileOp) -> None:
    """`op` on the filesystem mounted at `root`, as the build does it: links in the path resolved inside `root`, a
    final link replaced, never followed."""
    path = inside(root, op.path)
    if op.action == "remove":
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if op.action == "mkdir":
        path.mkdir(exist_ok=True)
    else:
        if path.is_symlink() or path.is_file():
            path.unlink()
        if op.action == "symlink":
            assert op.target is not None
            os.symlink(op.target, path)
        else:
            assert op.content is not None
            path.write_bytes(op.content)
    os.lchown(path, op.uid, op.gid)
    if op.action != "symlink":
        os.chmod(path, op.mode if op.mode is not None else 0o755 if op.action == "mkdir" else 0o644)


def inside(root: Path, path: str, hops: int = 40) -> Path:
    """`path` of the filesystem mounted at `root` with the links of its parents resolved inside `root` (an absolute
    target starts again at `root`: never the host's own files)."""
    here = root
    parts = [p for p in path.split("/") if p]
    for n, part in enumerate(parts[:-1]):
        step = here / part
        if step.is_symlink():
            if hops == 0:
                sys.exit(f"build_bench: too many links in {path}")
            target = os.readlink(step)
            rest = "/".join(parts[n + 1:])
            base = "/" if target.startswith("/") else str(here.relative_to(root))
            return inside(root, os.path.normpath(os.path.join("/", base, target, rest)), hops - 1)
        here = step
    return here / parts[-1]


def code_key(module: str, name: str) -> tuple[str, int, str]:
    """cProfile's key of the function `name` of `module`; a phase function that moved stops the bench, naming it."""
    try:
        function = operator.attrgetter(name)(importlib.import_module(module))
    except (ImportError, AttributeError):
        sys.exit(f"build_bench: {module}.{name} is gone: point PHASES at where that phase is done now")
    code = inspect.unwrap(function).__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def breakdown(base: Path, work: Path) -> None:
    """One in-process build under cProfile; cumulative time of each phase function."""
    from click.testing import CliRunner

    from builder.cli import main as cli

    os.environ.update(pi_image_env(work))
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    result = CliRunner().invoke(cli, [str(a) for a in build_args(base, fresh(work / "node.img"))])
    profiler.disable()
    total = time.perf_counter() - start
    fresh(work / "node.img")
    if result.exit_code != 0:
        sys.exit(f"profiled build failed: {result.output}")
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    print(f"  profiled build (in-process, no start-up): {total:.2f} s")
    for (module, name), label in PHASES.items():
        cumulative = stats.get(code_key(module, name), (0, 0, 0, 0.0))[3]
        print(f"    {label:34} {cumulative:6.2f} s  {100 * cumulative / total:5.1f}%")
    _, calls, _, tools, _ = stats.get(code_key(*TOOLS), (0, 0, 0, 0.0, {}))
    print(f"    {'(external tools, all phases)':34} {tools:6.2f} s  {100 * tools / total:5.1f}%  ({calls} runs)")


def fleet(base: Path, work: Path, nodes: int) -> None:
    if not nodes:
        print("  skipped (--nodes 0)")
        return
    cluster = work / "lab"
    shutil.rmtree(cluster, ignore_errors=True)
    worker_cluster(work, cluster, nodes)
    for label, extra in (("--all", ()), ("--all --sha256", ("--sha256",))):
        out = work / "fleet"
        shutil.rmtree(out, ignore_errors=True)
        elapsed = timed(work, "build", "--cluster", cluster, "--all", "--base", base, "--output", out, "--kube-key",
                        KUBE_KEY, "--ssh-key", SSH_KEY, *extra)
        images = sorted(out.glob("*.img"))
        apparent = sum(p.stat().st_size for p in images)
        print(f"  {label:24} {len(images)} images in {elapsed:6.2f} s ({elapsed / len(images):.2f} s each); "
              f"{on_disk(out.iterdir()) / GIB:.2f} GiB on disk for {apparent / GIB:g} GiB apparent")
        shutil.rmtree(out)
    copies = work / "copies"
    copies.mkdir(exist_ok=True)
    start = time.perf_counter()
    for i in range(1, nodes + 1):
        cp(base, copies / f"pi-worker{i}.img")
    elapsed = time.perf_counter() - start
    print(f"  {'floor: cp x ' + str(nodes):24} {nodes} images in {elapsed:6.2f} s; "
          f"{on_disk(copies.iterdir()) / GIB:.2f} GiB on disk")
    shutil.rmtree(copies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--size-gib", type=float, default=4, help="the base's size (a whole number of MiB)")
    parser.add_argument("--data-mib", type=int, default=1024, help="random data written into the base's ext4")
    parser.add_argument("--files", type=int, default=0, help="small files (1-16 KiB) added to the base's ext4")
    add_workdir_args(parser, "the base")
    add_smoke_arg(parser)
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.nodes, args.size_gib, args.data_mib, args.files = 1, 2, 0.5, 8, 200
    with workdir(args, "pi-image-build-bench-") as work:
        start = time.perf_counter()
        base = make_base(work / f"ubuntu-{args.size_gib:g}g-{args.data_mib}m-{args.files}f.img",
                         round(args.size_gib * 1024) << 20, args.data_mib, args.files)
        print(f"base {base}: {base.stat().st_size / GIB:g} GiB apparent, {on_disk([base]) / GIB:.2f} GiB on disk "
              f"(ready in {time.perf_counter() - start:.1f} s); {os.cpu_count()} CPUs")
        print("one node:")
        single_node(base, work, args.runs)
        print("breakdown:")
        breakdown(base, work)
        print(f"fleet of {args.nodes} nodes from one inventory:")
        fleet(base, work, args.nodes)


if __name__ == "__main__":
    main()
