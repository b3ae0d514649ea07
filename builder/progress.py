"""Progress of the long steps (unpacking, copying, compressing, hashing) and sizes as people read them.

A bar is drawn on stderr, and only when stderr is a terminal and the step is still running after a second: quick
steps, pipes, logs and CI see nothing, and stdout (where `--json` goes) is never touched.

    Compressing pi-worker1.img.zst  [##########          ]  48%  0.9 of 2.0 GiB, 182.4 MiB/s, 0:05 left
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Advance = Callable[[int], None]  # called with the number of bytes done so far
DELAY = 1.0  # seconds a step runs before its bar appears
REDRAW = 0.1  # seconds between two redraws
BAR_WIDTH = 20


def no_progress(done: int) -> None:
    """The `Advance` of a step nobody watches."""


@contextmanager
def progress(label: str, total: int) -> Iterator[Advance]:
    """Yield the `Advance` of a step of `total` bytes; on a terminal, it draws a bar once the step passes DELAY."""
    if total <= 0 or not sys.stderr.isatty():
        yield no_progress
        return
    bar = _Bar(label, total)
    try:
        yield bar.advance
    except BaseException:
        bar.close(done=None)
        raise
    bar.close(done=total)


class _Bar:
    """One line on stderr, redrawn in place; the first draw waits until the step has run for DELAY seconds."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.started = time.monotonic()
        self.drawn: float | None = None  # when it was last drawn; None: not shown yet

    def advance(self, done: int) -> None:
        now = time.monotonic()
        if now - self.started < DELAY or (self.drawn is not None and now - self.drawn < REDRAW):
            return
        self.drawn = now
        self._draw(done, now)

    def close(self, done: int | None) -> None:
        """End the line: completed (`done` = total) or cut short by an error (`done` None). A bar never shown
        stays unshown."""
        if self.drawn is None:
            return
        if done is not None:
            self._draw(done, time.monotonic())
        sys.stderr.write("\n")
        sys.stderr.flush()

    def _draw(self, done: int, now: float) -> None:
        fraction = min(max(done / self.total, 0.0), 1.0)
        filled = round(fraction * BAR_WIDTH)
        elapsed = now - self.started
        if fraction >= 1:
            timing = f"in {_clock(elapsed)}"
        elif fraction > 0:
            timing = f"{_clock(elapsed * (1 - fraction) / fraction)} left"
        else:
            timing = ""
        rate = f", {human_size(done / elapsed)}/s" if elapsed > 0 else ""
        line = (f"{self.label}  [{'#' * filled}{' ' * (BAR_WIDTH - filled)}] {fraction:4.0%}  "
                f"{human_size(done)} of {human_size(self.total)}{rate}" + (f", {timing}" if timing else ""))
        width = _columns() - 1
        sys.stderr.write("\r" + line[:width].ljust(width))
        sys.stderr.flush()


def _columns() -> int:
    """The width of the terminal stderr is on (stdout may be a pipe or a file)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns or 100
    except OSError:
        return 100


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes}:{secs:02d}"


def human_size(n: float) -> str:
    """Bytes in binary units, the way `ls -lh` and disk tools count them: 512 B, 4.2 MiB, 2.0 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
