"""The output's chunk digest reads again only what a build wrote (builder.image.dirty): proven equal to the chunk digest
of the whole output over real builds of several layouts, and proven sound at the source: every byte the edits change
lies in the ranges the writers report (debugfs's undo file, FAT partitions whole)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from builder.build import BuildRequest, build
from builder.image import DiskImage
from builder.image.copy import CHUNK, sparse_copy
from builder.image.dirty import (
    base_chunk_digests,
    output_chunk_digest,
    track_writes,
    undo_ranges,
    written_ranges,
)
from builder.samples import make_sample

REPO = Path(__file__).resolve().parents[2]
KUBE_KEY = REPO / "tests" / "data" / "test-Release.key"
SSH_KEY = (REPO / "tests" / "data" / "test-admin.pub").read_text().strip()
BLOCK = 4096


def plain_chunk_digest(path: Path) -> str:
    """The chunk digest computed the plain way: SHA-256 over each 4 MiB chunk's SHA-256, every byte read."""
    outer = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            outer.update(hashlib.sha256(chunk).digest())
    return outer.hexdigest()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PI_IMAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    return tmp_path / "cache"


@pytest.mark.parametrize("target", ["ubuntu-raspi", "raspios", "jetson-sd"])
def test_every_build_records_the_chunk_digest_of_its_whole_output(sample_image, cache, tmp_path, target):
    base = sample_image(target)
    profile = "jetson-gpu" if target == "jetson-sd" else "worker-8g"
    variants = [{}, {"hostname": "second"}, {"hostname": "third", "timezone": "Europe/Paris"}]
    for n, sets in enumerate(variants):  # the first makes the base's record, the others reuse it
        output = tmp_path / f"node{n}.img"
        build(BuildRequest(profile=profile, base=str(base), output=output, kube_key=KUBE_KEY, ssh_keys=[SSH_KEY],
                           sets=sets, sha256=n == 2))
        manifest = json.loads(output.with_name(output.name + ".json").read_text())

        assert manifest["output"]["chunk_sha256"] == plain_chunk_digest(output)
    assert len(list((cache / "images" / "chunks").iterdir())) == 1


def test_a_root_past_half_the_image_counts_whole_and_the_digest_still_holds(cache, tmp_path):
    base = make_sample("ubuntu-raspi", tmp_path / "small.img", size=512 << 20)  # no undo file: see dirty.undo_file
    output = tmp_path / "node.img"
    build(BuildRequest(profile="worker-8g", base=str(base), output=output, kube_key=KUBE_KEY, ssh_keys=[SSH_KEY]))
    manifest = json.loads(output.with_name(output.name + ".json").read_text())

    assert manifest["output"]["chunk_sha256"] == plain_chunk_digest(output)


def test_every_byte_the_edits_change_lies_in_the_ranges_reported(sample_image, tmp_path):
    base = sample_image("ubuntu-raspi")
    copy = tmp_path / "copy.img"
    copy.touch()
    big = os.urandom(9 << 20)
    with track_writes(copy) as log:
        sparse_copy(base, copy)
        image = DiskImage(copy, writable=True, fake_time=1700000000)
        root, boot = (image.filesystem(image.partition(label)) for label in ("writable", "system-boot"))
        root.write("/var/lib/big", big)
        root.write("/etc/hostname", b"edited\n")
        root.remove("/etc/fstab")
        root.mkdir("/opt/new/deeper")
        root.symlink("/opt/new/link", "/" + "x" * 300)  # a long target: a data block of its own
        boot.write("/cmdline.txt", b"console=tty1 root=LABEL=writable cgroup_enable=memory\n")
        image.commit()
        ranges = written_ranges(image, log)
    assert ranges is not None

    changed = changed_blocks(base, copy)
    covered = [b for b in changed if any(start < (b + 1) * BLOCK and end > b * BLOCK for start, end in ranges)]
    assert len(changed) > len(big) // BLOCK
    assert covered == changed
    assert output_chunk_digest(copy, base, ranges) == plain_chunk_digest(copy)


def test_a_write_nobody_reported_is_digested_in_full(sample_image, tmp_path, cache):
    base = sample_image("ubuntu-raspi")
    copy = tmp_path / "copy.img"
    sparse_copy(base, copy)
    with open(copy, "r+b") as f:
        os.pwrite(f.fileno(), b"unreported", 3 * CHUNK + 17)

    assert output_chunk_digest(copy, base, None) == plain_chunk_digest(copy)
    assert output_chunk_digest(copy, base, [(3 * CHUNK, 3 * CHUNK + 10)]) == plain_chunk_digest(copy)


def test_an_undo_file_that_is_not_one_reports_nothing(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"E2UNDO01" + bytes(600))

    assert undo_ranges(junk, 0) is None
    assert undo_ranges(tmp_path / "missing", 0) is None


def test_a_base_changed_since_its_record_is_digested_again(tmp_path, cache):
    base = make_sample("ubuntu-raspi", tmp_path / "base.img")
    first = base_chunk_digests(base)
    with open(base, "r+b") as f:
        os.pwrite(f.fileno(), b"changed", 5 * CHUNK)
    os.utime(base, ns=(0, base.stat().st_mtime_ns + 1))

    again = base_chunk_digests(base)
    assert again[5] == hashlib.sha256(open(base, "rb").read()[5 * CHUNK:6 * CHUNK]).digest() != first[5]
    assert base_chunk_digests(base) == again


def changed_blocks(a: Path, b: Path) -> list[int]:
    """Numbers of the 4 KiB blocks that differ between two files of one size."""
    changed = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for pos in range(0, a.stat().st_size, CHUNK):
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if x != y:
                changed += [(pos + i) // BLOCK for i in range(0, len(x), BLOCK) if x[i:i + BLOCK] != y[i:i + BLOCK]]
    return changed
