"""`pi-image demo-image`: a small image in a real vendor layout to try pi-image on."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from ..samples import SAMPLES, make_sample
from ..targets import DEFAULT_TARGET


@click.command("demo-image")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--target", "target_name", default=DEFAULT_TARGET, show_default=True,
              type=click.Choice(sorted({t for t, _ in SAMPLES})), help="Which layout to imitate.")
@click.option("--release", help="Release of that target (default: its newest supported sample).")
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
def demo_image(dest: Path, target_name: str, release: str | None, force: bool) -> None:
    """Generate a small DEMO image in a real vendor layout (partitions, labels, key files) to try pi-image on.

    It is not a bootable OS: it holds only the files pi-image reads and edits.

    \b
    Examples:
      pi-image demo-image demo.img
      pi-image demo-image --target jetson-sd jetson-demo.img
    """
    if dest.exists() and not force:
        raise UserError(f"{dest} exists: pass --force to replace it")
    make_sample(target_name, dest, release=release)
    click.echo(f"{dest}: demo {target_name} image (not a bootable OS)")
