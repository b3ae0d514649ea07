"""The fast paths of issue 28 keep every guarantee: an `.img.xz` that xz writes into the cache itself is the same
sparse image, refused as before when it is not a disk image, corrupt, or larger than the disk allows; the flash's
pipelined writer still writes exactly the image, verifies by reading the card back, and refuses a card that lies."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from builder.cards import writer
from builder.cards.devices import open_target
from builder.errors import UserError
from builder.image.inputs import raw_image
from builder.image.usage import UsageMap
from builder.samples import make_sample

REPO = Path(__file__).resolve().parents[2]
SMALL = 320 << 20  # the smallest sample of ubuntu-raspi's layout


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw Ubuntu-layout image and its multi-block `.img.xz` beside it."""
    raw = make_sample("ubuntu-raspi", tmp_path_factory.mktemp("xz") / "base.img", size=SMALL)
    subprocess.run(["xz", "-T2", "-0", "--block-size=4MiB", "-k", raw], check=True)
    return raw


def unpacked(cache: Path) -> list[str]:
    """What the cache's images directory holds (the index aside)."""
    return sorted(p.name for p in (cache / "images").iterdir() if p.name != "index.json")


# --- unpacking an .img.xz -----------------------------------------------------------------------------------------

def test_an_img_xz_unpacks_into_the_same_bytes_as_a_sparse_file(sample: Path, tmp_path: Path) -> None:
    raw = raw_image(Path(f"{sample}.xz"), tmp_path / "cache")

    assert raw.parent == tmp_path / "cache" / "images" and raw.stat().st_size == sample.stat().st_size
    subprocess.run(["cmp", sample, raw], check=True)  # an independent tool compares every byte
    assert raw.stat().st_blocks * 512 <= sample.stat().st_blocks * 512 + (1 << 20)  # holes where the image has them


def test_an_xz_that_is_not_a_disk_image_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    text = tmp_path / "notes.img"
    text.write_bytes(b"not a disk image\n" * 500_000)
    subprocess.run(["xz", "-T0", "-0", text], check=True)

    with pytest.raises(UserError, match=r"notes\.img\.xz unpacks to data that is not a disk image .* nothing was kept"):
        raw_image(Path(f"{text}.xz"), tmp_path / "cache")
    assert unpacked(tmp_path / "cache") == []


def test_a_truncated_xz_is_refused_as_incomplete_and_nothing_is_kept(sample: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.img.xz"
    whole = Path(f"{sample}.xz").read_bytes()
    cut.write_bytes(whole[:len(whole) // 2])

    with pytest.raises(UserError, match=r"cut\.img\.xz: cannot unpack it, the file is incomplete or corrupt .*"
                                        r"download it again"):
        raw_image(cut, tmp_path / "cache")
    assert unpacked(tmp_path / "cache") == []


def test_an_xz_larger_than_the_disk_allows_is_one_line_naming_the_cache(sample: Path, tmp_path: Path) -> None:
    """A real failing write in xz itself: the file size limit (RLIMIT_FSIZE gives EFBIG, as a FAT disk's 4 GiB)."""
    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))

    cache = tmp_path / "cache"
    code = ("import sys; from pathlib import Path; from builder.errors import UserError; "
            "from builder.image.inputs import raw_image\n"
            "try: raw_image(Path(sys.argv[1]), Path(sys.argv[2]))\n"
            "except UserError as err: sys.exit(str(err))")
    proc = subprocess.run([sys.executable, "-c", code, f"{sample}.xz", cache], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=limited, check=False)

    assert proc.returncode == 1 and proc.stderr.startswith(
        f"no room to unpack base.img.xz in {cache / 'images'} (File too large): the filesystem there ("), proc.stderr
    assert unpacked(cache) == []


# --- the pipelined writer -----------------------------------------------------------------------------------------

MIB = 1 << 20
CARD_SIZE = 24 * MIB


def card_image(tmp_path: Path) -> Path:
    """Random bytes with all-zero MiBs among them (zeroed on the card without being written)."""
    data = bytearray(os.urandom(CARD_SIZE))
    for mib in (3, 4, 11, 20):
        data[mib * MIB:(mib + 1) * MIB] = bytes(MIB)
    path = tmp_path / "image.raw"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("verify", [True, False])
def test_many_small_batches_write_and_verify_exactly_the_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               verify: bool) -> None:
    """Batches of 2 MiB: reading ahead, writing back early and the verifier thread two batches behind all overlap."""
    monkeypatch.setattr(writer, "BATCH", 2 * MIB)
    image = card_image(tmp_path)
    card = tmp_path / "card.img"
    card.write_bytes(os.urandom(CARD_SIZE))  # a used card: its old bytes must go, zeros included

    stats = writer.write_card(image, UsageMap(CARD_SIZE, [(MIB, CARD_SIZE)], [(0, MIB)], []), open_target(card),
                              writer.WriteOptions(verify=verify))

    subprocess.run(["cmp", image, card], check=True)
    assert stats.written == CARD_SIZE and stats.zeroed == 4 * MIB
    assert stats.verified == (CARD_SIZE if verify else 0)  # the ranges and the table, read back


def test_a_card_that_reads_back_other_bytes_fails_naming_the_first_one(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The verifier reads the card itself: a card whose reads differ from what was written (a fake or failing one)
    stops the flash, and the card gets no partition table."""
    monkeypatch.setattr(writer, "BATCH", 2 * MIB)
    image = card_image(tmp_path)
    card = tmp_path / "card.img"
    card.write_bytes(os.urandom(CARD_SIZE))
    real_compare = writer.compare

    def lying_card(source: int, fd: int, path: Path, batch: list[tuple[int, int]]) -> int:
        if batch[0][0] <= 9 * MIB < batch[-1][0] + batch[-1][1]:
            with open(path, "r+b") as lost:  # the card loses a byte after it was written
                lost.seek(9 * MIB + 5)
                lost.write(b"\xff")
        return real_compare(source, fd, path, batch)

    monkeypatch.setattr(writer, "compare", lying_card)
    with pytest.raises(writer.FlashInterrupted, match=rf"differs from the image at byte {9 * MIB + 5} .* holds no "
                                                      "partition table now"):
        writer.write_card(image, UsageMap(CARD_SIZE, [(MIB, CARD_SIZE)], [(0, MIB)], []), open_target(card),
                          writer.WriteOptions())
    with open(card, "rb") as f:
        assert f.read(MIB) == bytes(MIB)


def test_zeroing_an_existing_card_file_keeps_it_allocated_and_reads_zeros(tmp_path: Path) -> None:
    card = tmp_path / "card.img"
    card.write_bytes(os.urandom(4 * MIB))
    fd = os.open(card, os.O_WRONLY)
    try:
        writer.Zeroer(fd, "file", new_file=False).zero(MIB, 2 * MIB)
    finally:
        os.close(fd)
    data = card.read_bytes()
    assert data[MIB:3 * MIB] == bytes(2 * MIB) and data[:MIB] != bytes(MIB) and data[3 * MIB:] != bytes(MIB)
