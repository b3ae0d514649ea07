"""One write-then-rename for every small file pi-image keeps (records, keys, indexes, a cluster's settings):
`outputs.write_atomic` (issue 27)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from builder.outputs import write_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_text_and_bytes_land_whole_with_the_mode_asked_and_nothing_beside_them(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a.json", "{\"é\": 1}\n", 0o644)
    write_atomic(tmp_path / "b.gpg", b"\x99\x01binary")
    assert (tmp_path / "a.json").read_bytes() == "{\"é\": 1}\n".encode()
    assert (tmp_path / "b.gpg").read_bytes() == b"\x99\x01binary"
    assert (_mode(tmp_path / "a.json"), _mode(tmp_path / "b.gpg")) == (0o644, 0o600)  # private unless told
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.gpg"]


def test_the_mode_is_the_one_asked_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "shared.json", "{}", 0o644)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "shared.json") == 0o644


def test_an_existing_file_is_replaced_and_a_link_there_is_replaced_not_followed(tmp_path: Path) -> None:
    (tmp_path / "old").write_text("old\n")
    write_atomic(tmp_path / "old", "new\n")
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (tmp_path / "link").symlink_to(victim)
    write_atomic(tmp_path / "link", "mine\n")
    assert (tmp_path / "old").read_text() == "new\n"
    assert not (tmp_path / "link").is_symlink() and (tmp_path / "link").read_text() == "mine\n"
    assert victim.read_text() == "keep\n"


def test_a_failed_write_leaves_neither_a_temporary_nor_a_half_file(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(OSError):
        write_atomic(tmp_path / "a-directory", "text")  # the rename cannot replace a directory
    assert [p.name for p in tmp_path.iterdir()] == ["a-directory"]
    assert list((tmp_path / "a-directory").iterdir()) == []
