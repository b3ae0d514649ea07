"""The `.bmap` pi-image writes is one bmaptool (Debian's bmap-tools) flashes: over a used card the result fscks
clean and holds the image on every mapped block; bmaptool refuses it when the image or the bmap file changed."""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from readback import random_card

from builder.image import DiskImage
from builder.image.bmap import mapped_ranges_blocks, write_bmap
from builder.image.fsck import check_partition
from builder.image.usage import BLOCK_SIZE, usage_map
from builder.run import run
from builder.samples import make_sample

pytestmark = pytest.mark.skipif(shutil.which("bmaptool") is None,
                                reason="bmaptool is not installed (Debian package bmap-tools)")
MIB = 1 << 20
SIZE = 640 * MIB  # big enough for every sample layout, small enough for a random card


@pytest.fixture(scope="module")
def image_with_bmap(tmp_path_factory: pytest.TempPathFactory):
    """A SIZE-byte sample of `target` with its bmap beside it (made once per module; read only)."""
    root, made = tmp_path_factory.mktemp("bmap"), {}

    def make(target: str) -> tuple[Path, Path]:
        if target not in made:
            image = make_sample(target, root / f"{target}.img", size=SIZE)
            write_bmap(image, usage_map(image), image.with_name(image.name + ".bmap"))
            made[target] = image, image.with_name(image.name + ".bmap")
        return made[target]

    return make


def bmaptool_copy(bmap: Path, image: Path, card: Path, check: bool = True):
    return run(["bmaptool", "copy", "--bmap", str(bmap), str(image), str(card)], check=check)


@pytest.mark.parametrize("target", ["ubuntu-raspi", "jetson-sd"])
def test_bmaptool_flashes_our_bmap_over_a_used_card(image_with_bmap, target, tmp_path):
    image, bmap = image_with_bmap(target)
    card = random_card(tmp_path / "card.img", SIZE)
    try:
        bmaptool_copy(bmap, image, card)  # bmaptool checks every range's SHA-256 while it writes
        with open(image, "rb") as src, open(card, "rb") as dst:
            for first, last in mapped_ranges_blocks(usage_map(image)):
                start, length = first * BLOCK_SIZE, (last - first + 1) * BLOCK_SIZE
                assert os.pread(dst.fileno(), length, start) == os.pread(src.fileno(), length, start), first
        flashed = DiskImage(card)
        assert flashed.partitions == DiskImage(image).partitions
        for partition in flashed.partitions:
            check_partition(flashed, partition)  # e2fsck -fn / fsck.vfat -n on every filesystem
    finally:
        card.unlink()


def test_the_bmap_says_what_the_usage_map_says(image_with_bmap):
    image, bmap = image_with_bmap("ubuntu-raspi")
    usage = usage_map(image)
    root = ElementTree.parse(bmap).getroot()
    assert root.get("version") == "2.0"
    number = {tag: int(root.find(tag).text) for tag in ("ImageSize", "BlockSize", "BlocksCount", "MappedBlocksCount")}
    assert number == {"ImageSize": SIZE, "BlockSize": 4096, "BlocksCount": SIZE // 4096,
                      "MappedBlocksCount": usage.mapped_bytes() // 4096}
    assert root.find("ChecksumType").text.strip() == "sha256"
    listed = [tuple(map(int, (r.text.split("-") * 2)[:2])) for r in root.find("BlockMap").findall("Range")]
    assert listed == mapped_ranges_blocks(usage)
    assert listed[0][0] == 0  # the partition table is in it


def test_bmaptool_refuses_the_bmap_when_one_byte_of_the_image_changed(image_with_bmap, tmp_path):
    image, bmap = image_with_bmap("ubuntu-raspi")
    changed = tmp_path / "changed.img"
    run(["cp", "--sparse=always", str(image), str(changed)])
    start, end = usage_map(image).ranges[-1]
    with open(changed, "r+b") as f:
        byte = os.pread(f.fileno(), 1, (start + end) // 2)
        os.pwrite(f.fileno(), bytes([byte[0] ^ 1]), (start + end) // 2)
    card = tmp_path / "card.img"
    proc = bmaptool_copy(bmap, changed, card, check=False)
    assert proc.returncode != 0 and b"checksum mismatch for blocks range" in proc.stderr


def test_bmaptool_refuses_an_edited_bmap(image_with_bmap, tmp_path):
    image, bmap = image_with_bmap("ubuntu-raspi")
    text = bmap.read_text()
    first = mapped_ranges_blocks(usage_map(image))[1][0]
    edited = tmp_path / "edited.bmap"
    edited.write_text(text.replace(f"> {first}-", f"> {first + 1}-", 1))
    assert edited.read_text() != text
    proc = bmaptool_copy(edited, image, tmp_path / "card.img", check=False)
    assert proc.returncode != 0 and b"checksum mismatch for bmap file" in proc.stderr


def test_the_bmap_appears_complete_and_no_more_readable_than_the_image(image_with_bmap, tmp_path):
    image, _ = image_with_bmap("jetson-sd")
    private = tmp_path / "node.img"
    run(["cp", "--sparse=always", str(image), str(private)])
    private.chmod(0o600)
    dest = tmp_path / "node.img.bmap"
    dest.write_text("an older bmap")
    usage = usage_map(private)
    progress = []
    write_bmap(private, usage, dest, progress.append)
    assert dest.read_text().startswith("<?xml") and dest.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.img", "node.img.bmap"]  # no temporary left
    assert progress == sorted(progress) and progress[-1] == usage.mapped_bytes()
