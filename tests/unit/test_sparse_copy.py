"""A build's copy of its base (builder.image.copy.sparse_copy) is the base byte for byte, holes kept, whether or not
it is sent to the disk as it is copied (issue 28), into a new file, the empty file the build makes, or one that held
other bytes; made in a thread while the build plans (BackgroundCopy), its progress, its error and a plan that fails
reach the build."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from pathlib import Path

import pytest

from builder.errors import UserError
from builder.image import copy as image_copy
from builder.image.copy import BackgroundCopy, extents, size_on_disk, sparse_copy

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


# --- a build copies its base in a thread while it plans (BackgroundCopy) ---------------------------------------

def test_the_copy_made_meanwhile_is_the_base_and_reports_its_progress(base, tmp_path, monkeypatch):
    monkeypatch.setattr(image_copy, "COPY_STEP", MIB)
    copy, seen = tmp_path / "copy.img", []
    with BackgroundCopy(base, copy) as copying:
        planned = sum(range(100_000))  # the work done meanwhile
        copying.finish(seen.append)
    assert planned and copy.read_bytes() == base.read_bytes()
    with open(base, "rb") as a, open(copy, "rb") as b:
        assert list(extents(b.fileno(), 64 * MIB)) == list(extents(a.fileno(), 64 * MIB))
    assert seen and seen[-1] == 40 * MIB + 12288 and seen == sorted(seen)


def test_an_error_of_the_copy_reaches_the_caller_as_one_line(base, tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(image_copy, "_copy_chunk", full)
    with pytest.raises(UserError, match="no space left on the device of"):
        with BackgroundCopy(base, tmp_path / "copy.img") as copying:
            copying.finish()


def test_a_plan_that_fails_stops_the_copy_at_its_next_step(base, tmp_path, monkeypatch):
    monkeypatch.setattr(image_copy, "COPY_STEP", MIB)
    gate, steps, real = threading.Event(), [], image_copy._copy_chunk

    def held(*args):  # the first step waits until the plan has failed
        gate.wait(10)
        steps.append(args)
        return real(*args)

    monkeypatch.setattr(image_copy, "_copy_chunk", held)
    threading.Timer(0.3, gate.set).start()
    with pytest.raises(UserError, match="a bad overlay"):
        with BackgroundCopy(base, tmp_path / "copy.img") as copying:
            raise UserError("a bad overlay")
    assert not copying._thread.is_alive() and len(steps) == 1, "stopped after the step under way"
