"""The writer engine on its own (builder.cards.writer), with a made-up usage map over random bytes: it writes the
mapped ranges and keeps the card's other bytes, calls the hook once with the table region still blank and every range
already on the card, writes the table last, and an interrupted write (the hook failing) leaves no table. The engine
imports nothing about clusters, nodes or recipes; stamping imports nothing of the copying."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from builder.cards.devices import open_target
from builder.cards.writer import FlashInterrupted, OpenCard, WriteOptions, write_card
from builder.image.usage import UsageMap

MIB = 1 << 20
SIZE = 8 * MIB
RANGES = [(1 * MIB, 5 * MIB), (6 * MIB, SIZE)]  # [5 MiB, 6 MiB) is free: the card keeps its own bytes there
LAST = [(0, MIB)]
CARDS = Path(__file__).resolve().parents[2] / "builder" / "cards"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """Random bytes, one all-zero MiB among the ranges."""
    data = bytearray(os.urandom(SIZE))
    data[2 * MIB:3 * MIB] = bytes(MIB)
    path = tmp_path / "image.raw"
    path.write_bytes(data)
    return path


def usage() -> UsageMap:
    return UsageMap(SIZE, RANGES, LAST, [])


def used_card(path: Path) -> Path:
    path.write_bytes(os.urandom(SIZE))
    return path


def span(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


@pytest.mark.parametrize("verify", [True, False])
def test_writes_the_ranges_then_the_table_and_keeps_free_bytes(image: Path, tmp_path: Path, verify: bool) -> None:
    card = used_card(tmp_path / "card.img")
    free = span(card, 5 * MIB, 6 * MIB)
    stats = write_card(image, usage(), open_target(card), WriteOptions(verify=verify))
    for start, end in RANGES + LAST:
        assert span(card, start, end) == span(image, start, end)
    assert span(card, 5 * MIB, 6 * MIB) == free
    assert stats.written == 7 * MIB and stats.zeroed == MIB
    assert stats.verified == (7 * MIB if verify else 0)
    assert card.stat().st_mode & 0o777 == 0o600


def test_the_hook_runs_once_before_the_table_with_the_ranges_on_the_card(image: Path, tmp_path: Path) -> None:
    card = used_card(tmp_path / "card.img")
    seen: list[OpenCard] = []

    def before_table(open_card: OpenCard) -> None:
        seen.append(open_card)
        assert span(card, 0, MIB) == bytes(MIB)  # no table yet
        for start, end in RANGES:
            assert span(card, start, end) == span(image, start, end)
        os.pwrite(open_card.fd, b"stamped", 7 * MIB)  # what a hook writes stays, and goes on before the table
        open_card.sync()

    write_card(image, usage(), open_target(card), WriteOptions(), before_table)
    assert [(c.path, c.image) for c in seen] == [(card, image)]
    assert span(card, 7 * MIB, 7 * MIB + 7) == b"stamped"
    assert span(card, 0, MIB) == span(image, 0, MIB)


def test_a_failing_hook_leaves_no_table(image: Path, tmp_path: Path) -> None:
    card = used_card(tmp_path / "card.img")

    def fails(open_card: OpenCard) -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(FlashInterrupted, match=r"the flash failed .* holds no partition table now"):
        write_card(image, usage(), open_target(card), WriteOptions(), fails)
    assert span(card, 0, MIB) == bytes(MIB)


def test_a_new_file_is_removed_when_the_write_stops(image: Path, tmp_path: Path) -> None:
    card = tmp_path / "new.img"

    def interrupted(open_card: OpenCard) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_card(image, usage(), open_target(card), WriteOptions(), interrupted)
    assert not card.exists()


def _imported(path: Path) -> set[str]:
    """Every module `path` imports from, relative ones as written (`..build`, `.writer`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_engine_knows_no_clusters_and_stamping_no_copying() -> None:
    engine = _imported(CARDS / "writer.py")
    assert not {name for name in engine if name.startswith(("..build", "..cluster", "..plan", "..config", ".stamp",
                                                            ".flash", "firstboot"))}, engine
    stamp = ast.parse((CARDS / "stamp.py").read_text())
    from_writer = {alias.name for node in ast.walk(stamp) if isinstance(node, ast.ImportFrom)
                   and node.module == "writer" for alias in node.names}
    assert from_writer == {"OpenCard"}
