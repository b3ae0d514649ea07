"""The cache keeps itself tidy (builder/cache.py, builder/image/inputs.py): what dead processes left goes with the
next run and what live ones hold stays, what is not a disk image is never kept, the unpacked copies stay within
their bound (least recently used first), an image pi-image made is never cached, a full disk is one line naming
it, and `pi-image cache` lists and prunes.

Processes that hold or die are real subprocesses (flock is what tells them apart); the images are 320 MiB sparse
samples compressed with zstd, so that each test takes well under a second or two.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from readback import REPO, PiImage

from builder import cache
from builder.cli import PiImageGroup
from builder.cli.cache import cache_command
from builder.errors import UserError
from builder.image import DiskImage, inputs
from builder.image.inputs import raw_image
from builder.progress import human_size
from builder.samples import make_sample

SMALL = 320 << 20  # the smallest sample of ubuntu-raspi's layout
OLD = time.time() - cache.PART_MAX_AGE - 86400


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Compressed images: two vendor-like bases (`base`, `other`) and one pi-image made (`made`, holding
    /etc/pi-image/node.json, as a node's image does)."""
    root = tmp_path_factory.mktemp("bases")
    made = {}
    for name, release in (("base", "22.04"), ("other", "20.04"), ("made", "22.04")):
        raw = make_sample("ubuntu-raspi", root / f"{name}.img", release=release, size=SMALL)
        if name == "made":
            image = DiskImage(raw, writable=True)
            fs = image.filesystem(image.partition("writable"))
            fs.mkdir("/etc/pi-image", 0o755)
            fs.write("/etc/pi-image/node.json", b'{"token": "a node credential"}\n', 0o600)
            image.commit()
        subprocess.run(["zstd", "-q", "--rm", str(raw), "-o", str(raw) + ".zst"], check=True)
        made[name] = Path(str(raw) + ".zst")
    return made


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache of the test's own, the default one; what the test held is let go at its end (as at the
    end of a command)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("PI_IMAGE_CACHE", str(root))
    monkeypatch.delenv(cache.UNPACKED_MAX_ENV, raising=False)
    yield root
    cache.release_all()


def unpacked(root: Path) -> list[str]:
    """The names of the image files in the cache (index.json aside)."""
    return sorted(p.name for p in (root / "images").glob("*") if p.name.endswith(".img"))


def holder(code: str) -> subprocess.Popen[str]:
    """A Python process that runs `code` (with `final`, a cache path, and builder.cache as `cache`), says "ready",
    and then sleeps until it is killed."""
    script = f"import os, sys, time\nfrom pathlib import Path\nfrom builder import cache\n{code}\n" \
             "print('ready', flush=True)\ntime.sleep(600)\n"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()


# --- leftovers of dead processes ----------------------------------------------------------------------------------

def test_what_a_killed_unpack_left_goes_with_the_next_run_and_a_live_one_stays(cache_dir, bases, capfd):
    images = cache_dir / "images"
    images.mkdir(parents=True)
    final = images / f"{'a' * 64}.img"
    unpacking = (f"with cache.unpacking(Path({str(final)!r})) as job:\n"
                 "    os.pwrite(job.fd, b'x' * (1 << 20), 0)\n    job.kept = True  # under way when it is killed")
    private = f"from builder.image.inputs import raw_image\nraw_image(Path({str(bases['made'])!r}))"
    live = [holder(unpacking), holder(private)]
    names = set(unpacked(cache_dir))
    assert {f".unpacking-{live[0].pid}.img"} < names and any(n.startswith(f".private-{live[1].pid}-") for n in names)
    raw_image(bases["base"])  # a run while they live: what they hold stays
    assert names < set(unpacked(cache_dir))
    assert {e.kind for e in cache.entries(cache_dir) if e.in_use} == {"unpacking", "private", "unpacked"}
    for proc in live:
        kill(proc)
    capfd.readouterr()
    cache.release_all()
    raw_image(bases["base"])  # the next run
    assert unpacked(cache_dir) == [f"{hashlib.sha256(bases['base'].read_bytes()).hexdigest()}.img"]
    line = capfd.readouterr().err
    assert line.count("\n") == 1 and "what interrupted runs left in the cache" in line, line
    assert f".unpacking-{live[0].pid}.img (1.0 MiB, an unpack that never ended (process {live[0].pid} is gone))" \
        in line


def test_an_unlocked_unpack_whose_pid_lives_stays_a_minute_then_goes(cache_dir):
    """PID 1 lives: its `.unpacking-1.img` nobody holds may be an unpack between creating and locking its file,
    until CLAIM_GRACE has passed (then PID 1 is not the process that made it)."""
    images = cache_dir / "images"
    images.mkdir(parents=True)
    (images / ".unpacking-1.img").write_bytes(b"x")
    assert cache.tidy(cache_dir) == [] and unpacked(cache_dir) == [".unpacking-1.img"]
    old = time.time() - cache.CLAIM_GRACE - 1
    os.utime(images / ".unpacking-1.img", (old, old))
    assert [e.path.name for e in cache.tidy(cache_dir)] == [".unpacking-1.img"] and unpacked(cache_dir) == []


def test_stale_locks_and_abandoned_partial_downloads_go_while_held_and_fresh_ones_stay(cache_dir):
    downloads = cache_dir / "downloads"
    downloads.mkdir(parents=True)

    def partial(key: str, mtime: float) -> None:
        (downloads / f".{key}.part").write_bytes(b"p" * 1000)
        (downloads / f".{key}.part.json").write_text(json.dumps({"url": f"https://example.org/{key}.img.xz"}))
        os.utime(downloads / f".{key}.part", (mtime, mtime))

    for key in ("11", "22", "55"):
        (downloads / f".{key}.lock").touch()
    partial("33", OLD)  # abandoned, and no lock file: one is made to hold it while it goes
    partial("44", time.time())  # fresh: the next fetch resumes it
    partial("55", OLD)  # old, but its fetch runs now
    fetching = holder(f"import fcntl\nfd = os.open({str(downloads / '.55.lock')!r}, os.O_RDWR)\n"
                      "fcntl.flock(fd, fcntl.LOCK_EX)")
    fd = os.open(downloads / ".22.lock", os.O_RDWR)  # this process fetches 22 (another descriptor: it conflicts)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        removed = cache.tidy(cache_dir)
    finally:
        os.close(fd)
        kill(fetching)
    assert sorted(e.path.name for e in removed) == [".11.lock", ".33.part"]
    assert sorted(p.name for p in downloads.iterdir()) == [".22.lock", ".44.part", ".44.part.json", ".55.lock",
                                                         ".55.part", ".55.part.json"]
    assert "https://example.org/33.img.xz: a download abandoned 8 days ago" in removed[1].what


# --- what is kept -----------------------------------------------------------------------------------------------

def test_what_does_not_unpack_to_a_disk_image_is_not_kept_and_is_one_line(cache_dir, tmp_path):
    """16 GiB of 0x01 bytes (gzip members of 1 MiB each, concatenated: 16 MB): refused after its first MiB."""
    bomb = tmp_path / "bomb.img.gz"
    bomb.write_bytes(gzip.compress(b"\x01" * (1 << 20)) * (16 << 10))
    started = time.monotonic()
    with pytest.raises(UserError) as refused:
        raw_image(bomb)
    assert time.monotonic() - started < 10  # it never unpacked the 16 GiB (a minute's work)
    assert str(refused.value) == (f"{bomb} unpacks to data that is not a disk image (no partition table, no "
                                  "filesystem): nothing was kept; is it the image you meant? (a vendor's .img.xz "
                                  "holds a whole disk)")
    assert unpacked(cache_dir) == []
    proc = PiImage(cache_dir)("inspect", bomb)
    assert proc.returncode == 1 and proc.stderr == f"pi-image: error: {refused.value}\n" and proc.stdout == ""
    assert unpacked(cache_dir) == []


def test_an_image_pi_image_made_is_unpacked_for_the_command_that_needs_it_only(cache_dir, bases):
    first = raw_image(bases["made"])
    assert first.name.startswith(f".private-{os.getpid()}-") and first.stat().st_mode & 0o777 == 0o600
    assert raw_image(bases["made"]) == first  # the same command: unpacked once
    cache.release_all()  # the command ends
    assert unpacked(cache_dir) == []
    proc = PiImage(cache_dir)("inspect", bases["made"])
    assert proc.returncode == 0, proc.stderr
    assert unpacked(cache_dir) == []  # the CLI's own exit removed its copy


def test_the_least_recently_used_unpacked_copies_go_past_the_bound_and_never_one_in_use(cache_dir, bases, capfd,
                                                                                      monkeypatch):
    base = raw_image(bases["base"])
    size = base.stat().st_blocks * 512
    cache.release_all()  # that command ended
    monkeypatch.setenv(cache.UNPACKED_MAX_ENV, str(size + size // 2))  # room for one
    stale = cache_dir / "images" / f"{'b' * 64}.img"  # an older one, used a day ago
    stale.write_bytes(b"x" * 4096)
    os.utime(stale, (time.time() - 86400,) * 2)
    in_use = holder(f"cache.use(Path({str(stale)!r}))")  # a build uses it, and marks it used now...
    os.utime(stale, (time.time() - 86400,) * 2)  # ... but its use is a day old anyway: still it stays
    capfd.readouterr()
    other = raw_image(bases["other"])
    assert other != base
    assert unpacked(cache_dir) == sorted([stale.name, other.name])
    line = capfd.readouterr().err
    assert line.count("\n") == 1 and f"passed {cache.UNPACKED_MAX_ENV}=" in line, line
    assert f"removed {cache.short_name(base)} ({human_size(size)}, unpacked from {bases['base']}) (" in line
    assert line.endswith("; what they were unpacked from stays (raise PI_IMAGE_UNPACKED_MAX to keep more)\n")
    kill(in_use)
    cache.release_all()
    assert [e.path for e in cache.evict(cache_dir, 0)] == [stale, other]  # the oldest first


def test_a_bad_bound_is_one_line(cache_dir, bases, monkeypatch):
    monkeypatch.setenv(cache.UNPACKED_MAX_ENV, "twenty gigs")
    with pytest.raises(UserError, match="PI_IMAGE_UNPACKED_MAX='twenty gigs' is not a size: .* like 20G"):
        raw_image(bases["base"])
    monkeypatch.setenv(cache.UNPACKED_MAX_ENV, "1.5 GiB")
    assert cache.unpacked_max() == 3 << 29


# --- a full disk --------------------------------------------------------------------------------------------------

def test_a_full_disk_while_unpacking_names_the_filesystem_its_free_space_and_the_fix(cache_dir, bases, monkeypatch):
    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(inputs, "_write_sparse", full)
    with pytest.raises(UserError) as refused:
        raw_image(bases["base"])
    mount, device = cache.filesystem_of(cache_dir)
    message = str(refused.value)
    assert message.startswith(f"no room to unpack base.img.zst in {cache_dir / 'images'} (No space left on device): "
                              f"the filesystem there ({device} on {mount}) has ")
    assert message.endswith(" free; nothing was kept: free space with `pi-image cache prune`, or set PI_IMAGE_CACHE "
                            "to a directory on a bigger disk")
    assert unpacked(cache_dir) == []


def test_a_write_the_kernel_refuses_is_one_line_from_the_cli(cache_dir, bases):
    """A real failing write: the file size limit (RLIMIT_FSIZE, EFBIG, as a FAT disk's 4 GiB gives)."""
    cli = PiImage(cache_dir)

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))

    proc = subprocess.run(cli.argv("inspect", bases["base"]), capture_output=True, text=True, env=cli.env(),
                          check=False, preexec_fn=limited)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"pi-image: error: no room to unpack base.img.zst in {cache_dir / 'images'} "
                                  "(File too large): the filesystem there (")
    assert unpacked(cache_dir) == []


# --- pi-image cache -----------------------------------------------------------------------------------------------

def run_cache(*args: str) -> click.testing.Result:
    """`pi-image cache ARGS` as the CLI runs it (a UserError is one line and exit 1)."""

    @click.group(cls=PiImageGroup)
    def main() -> None:
        pass

    main.add_command(cache_command)
    return CliRunner().invoke(main, ["cache", *args])


@pytest.fixture
def filled(cache_dir: Path, bases: dict[str, Path]) -> dict[str, Path]:
    """A cache holding a download with its record, its unpacked copy, a leftover, a partial download, a bundle."""
    downloads = cache_dir / "downloads"
    (downloads / "by-url").mkdir(parents=True)
    digest = hashlib.sha256(bases["base"].read_bytes()).hexdigest()
    download = downloads / f"{digest}.img.zst"
    download.write_bytes(bases["base"].read_bytes())
    record = downloads / "by-url" / "0123abcd.json"
    record.write_text(json.dumps({"url": "https://example.org/base.img.zst", "name": "ubuntu-24.04",
                                  "file": download.name, "sha256": digest, "size": download.stat().st_size}))
    inputs.remember_sha256(download, digest, cache_dir)
    copy = raw_image(download)
    cache.release_all()
    leftover = cache_dir / "images" / ".unpacking-999999999.img"
    leftover.write_bytes(b"x" * 8192)
    (downloads / ".77.part").write_bytes(b"p" * 4096)
    bundle = cache_dir / "bundles" / "packages"
    bundle.mkdir(parents=True)
    (bundle / "kubelet.deb").write_bytes(b"d" * 4096)
    return {"download": download, "record": record, "copy": copy, "leftover": leftover, "bundle": bundle}


def test_cache_lists_what_it_holds_with_totals_and_json(filled):
    listed = run_cache()
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].split() == ["KIND", "SIZE", "DATE", "NAME:", "WHAT"]
    row = {line.split()[0]: line for line in lines[1:6]}
    assert set(row) == {"download", "partial", "unpacked", "leftover", "bundles"}
    assert row["download"].endswith(f"{filled['download'].name[:12]}….img.zst: ubuntu-24.04")
    assert row["unpacked"].endswith(f"{filled['copy'].name[:12]}….img: unpacked from ubuntu-24.04")
    assert "packages: 1 files for offline builds" in row["bundles"]
    assert lines[-1].startswith("Next: `pi-image cache prune` frees ")
    document = json.loads(run_cache("list", "--json").output)
    kinds = {e["kind"]: e for e in document["entries"]}
    assert kinds["unpacked"]["path"] == str(filled["copy"]) and kinds["unpacked"]["in_use"] is False
    assert document["unpacked_max"] == cache.DEFAULT_UNPACKED_MAX
    assert document["total"] >= sum(document["totals"].values()) > 0


def test_cache_prune_removes_leftovers_and_copies_then_downloads_with_all_never_bundles(filled):
    dry = run_cache("prune", "--dry-run")
    assert dry.exit_code == 0 and all(path.exists() for path in filled.values()), dry.output
    assert sorted(line.split()[:3] for line in dry.output.splitlines()[1:3]) == [["would", "go", "leftover"],
                                                                                ["would", "go", "unpacked"]]
    assert "2 would be removed" in dry.output and "(nothing was: --dry-run)" in dry.output
    pruned = json.loads(run_cache("prune", "--json").output)
    assert sorted(e["kind"] for e in pruned["removed"]) == ["leftover", "unpacked"]
    assert not filled["copy"].exists() and not filled["leftover"].exists() and filled["download"].exists()
    everything = run_cache("prune", "--all")
    assert everything.exit_code == 0, everything.output
    assert not filled["download"].exists() and not filled["record"].exists()
    assert not (filled["download"].parent / ".77.part").exists() and filled["bundle"].exists()
    assert "2 removed" in everything.output and "bundles kept" in everything.output
    assert everything.output.splitlines()[-1].startswith("Next: ")


def test_cache_prune_keeps_what_a_running_command_holds(filled):
    in_use = holder(f"cache.use(Path({str(filled['copy'])!r}))")
    try:
        pruned = json.loads(run_cache("prune", "--json").output)
    finally:
        kill(in_use)
    assert [e["kind"] for e in pruned["removed"]] == ["leftover"] and filled["copy"].exists()
    assert [e["path"] for e in pruned["kept"] if e["in_use"]] == [str(filled["copy"])]
