"""The hash index of the cache is shared by every pi-image at once: each read-modify-write holds its lock, so that
builds running together never lose each other's entries."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from builder.image.inputs import remember_sha256


def _remember(cache: Path, path: Path) -> None:
    remember_sha256(path, f"{path.name:0>64}", cache)


def test_twenty_processes_remembering_at_once_lose_no_entry(tmp_path: Path) -> None:
    files = []
    for n in range(20):
        files.append(tmp_path / f"{n:02d}")
        files[-1].write_text(str(n))
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_remember, args=(tmp_path / "cache", path)) for path in files]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    index = json.loads((tmp_path / "cache" / "images" / "index.json").read_text())
    assert sorted(index.values()) == sorted(f"{path.name:0>64}" for path in files)
