"""Progress bars for long streams (decompression, copies, flashing), on stderr so `--json` output stays clean."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click


@contextmanager
def progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield a function to call with the number of bytes done so far; draws a bar when stderr is a terminal."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr, show_eta=True, show_percent=True) as bar:
        yield lambda done: bar.update(done - bar.pos)
