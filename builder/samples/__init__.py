"""Small, layout-faithful sample images of every target pi-image supports, built with the real tools.

`make_sample("ubuntu-raspi", Path("demo.img"))` writes a sparse image laid out like Ubuntu's preinstalled raspi
server image (same table, partition types, starts, labels, vendor files); `SAMPLES` says what can be made. Used as
the demo base (`pi-image demo-image`) and as test fixtures.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .catalog import ALTERNATES, CATALOG, DEFAULTS
from .disk import build_image
from .tree import chown_tree, clear, stage_tree

# (target, release) -> one-line description, for `pi-image demo-image --list` and for tests.
SAMPLES: dict[tuple[str, str], str] = {key: sample.description for key, sample in CATALOG.items()}


def make_sample(target: str, dest: Path, *, release: str | None = None, size: int | None = None,
                variant: str = "standard") -> Path:
    """Build the sample of `target` (at `release`, default the newest we model) at `dest` and return `dest`.

    Disk targets write a sparse image file of `size` bytes (default 2 GiB apparent; a whole number of MiB).
    `l4t-rootfs` makes `dest` the rootfs directory itself (root-owned only when run as root). `variant="alt"`
    builds the same content through a different construction path (see `catalog.ALTERNATES`).
    """
    release = release or DEFAULTS.get(target, "")
    table = ALTERNATES if variant == "alt" else CATALOG
    sample = table.get((target, release))
    if sample is None:
        known = ", ".join(f"{t} {r}" for t, r in sorted(table))
        raise UserError(f"no {variant} sample for {target} {release or '(no release)'}: choose one of {known}")
    dest = Path(dest)
    clear(dest)
    if sample.layout is None:
        assert sample.tree is not None
        chown_tree(dest, stage_tree(sample.tree, sample.variables, dest))
        return dest
    return build_image(sample, dest, size)
