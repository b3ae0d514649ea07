"""The bases' remembered chunk digests (builder/image/dirty.py) are listed by the cache, removed by `tidy` once their
base is gone or changed (no build can use them again), and by `prune --all`."""

from __future__ import annotations

import os
from pathlib import Path

from builder import cache
from builder.image.dirty import base_chunk_digests


def test_digests_of_a_base_that_is_gone_or_changed_are_tidied_away_and_the_others_kept(tmp_path: Path) -> None:
    kept, changed, gone = (tmp_path / f"{name}.img" for name in ("kept", "changed", "gone"))
    for base in (kept, changed, gone):
        base.write_bytes(os.urandom(5 << 20))
        base_chunk_digests(base, tmp_path / "cache")
    changed.write_bytes(os.urandom(6 << 20))
    gone.unlink()

    found = {entry.kind: entry for entry in cache.entries(tmp_path / "cache") if entry.kind == "digests"}
    removed = cache.tidy(tmp_path / "cache")

    assert len(removed) == 2 and all("gone or changed" in entry.what for entry in removed)
    assert str(kept) in found["digests"].what
    [left] = [entry for entry in cache.entries(tmp_path / "cache") if entry.kind in ("digests", "leftover")]
    assert left.kind == "digests" and str(kept) in left.what
    assert cache.prune(tmp_path / "cache", everything=True)[0] == [left]
    assert not list((tmp_path / "cache" / cache.CHUNK_RECORDS).iterdir())
