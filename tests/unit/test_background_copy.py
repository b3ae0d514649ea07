"""A build copies its base in a thread while it plans (builder.image.copy.BackgroundCopy, issue 28): the copy is the
base byte for byte with its holes, its progress reaches the bar, its error reaches the build, and a plan that fails
stops it."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from builder.errors import UserError
from builder.image import copy as image_copy
from builder.image.copy import BackgroundCopy, extents

MIB = 1 << 20


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """48 MiB: data at 0, 8-13 MiB and 40 MiB, holes between."""
    path = tmp_path / "base.img"
    with open(path, "wb") as f:
        for offset, size in ((0, MIB), (8 * MIB, 5 * MIB), (40 * MIB, 4096)):
            os.pwrite(f.fileno(), os.urandom(size), offset)
        f.truncate(48 * MIB)
    return path


def test_the_copy_made_meanwhile_is_the_base_and_reports_its_progress(base, tmp_path, monkeypatch):
    monkeypatch.setattr(image_copy, "COPY_STEP", MIB)
    copy, seen = tmp_path / "copy.img", []
    with BackgroundCopy(base, copy) as copying:
        planned = sum(range(100_000))  # the work done meanwhile
        copying.finish(seen.append)
    assert planned and copy.read_bytes() == base.read_bytes()
    with open(base, "rb") as a, open(copy, "rb") as b:
        assert list(extents(b.fileno(), 48 * MIB)) == list(extents(a.fileno(), 48 * MIB))
    assert seen and seen[-1] == 40 * MIB + 4096 and seen == sorted(seen)


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
