"""A build's copy of its base (builder.image.copy.sparse_copy) is the base byte for byte, holes kept, whether or not
it is sent to the disk as it is copied (issue 28), into a new file, the empty file the build makes, or one that held
other bytes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from builder.image import copy as image_copy
from builder.image.copy import extents, size_on_disk, sparse_copy

MIB = 1 << 20


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """64 MiB with three data extents (one spanning several copy steps), holes between and at the end."""
    path = tmp_path / "base.img"
    with open(path, "wb") as f:
        for offset, size in ((0, MIB), (8 * MIB, 5 * MIB + 4096), (40 * MIB, 12288)):
            os.pwrite(f.fileno(), os.urandom(size), offset)
        f.truncate(64 * MIB)
    return path


def data_ranges(path: Path) -> list[tuple[int, int]]:
    with open(path, "rb") as f:
        return list(extents(f.fileno(), os.fstat(f.fileno()).st_size))


@pytest.mark.parametrize("write_back", [True, False])
@pytest.mark.parametrize("before", [None, b"", b"older bytes " * 100_000])
def test_the_copy_is_the_base_with_its_holes(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            write_back: bool, before: bytes | None) -> None:
    monkeypatch.setattr(image_copy, "COPY_STEP", MIB)  # the 5 MiB extent is copied (and sent) in six steps
    copy = tmp_path / "copy.img"
    if before is not None:
        copy.write_bytes(before)

    sparse_copy(base, copy, write_back=write_back)

    assert subprocess.run(["cmp", base, copy], capture_output=True).returncode == 0
    assert data_ranges(copy) == data_ranges(base)
    assert size_on_disk(copy) == size_on_disk(base)
