"""Catalog commands: `bases` (what pi-image can download, and what is cached) and `fetch` (download ahead of time).
Parsing and printing only: builder/bases/catalog.py resolves, builder/bases/download.py downloads."""

from __future__ import annotations

import json
from typing import Any

import click

from ..bases import download
from ..bases.catalog import CatalogEntry, fetch_base, load_catalog, user_catalog_path
from ..image.inputs import default_cache_dir
from ..progress import human_size

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.command("bases")
@JSON_OPTION
def bases(as_json: bool) -> None:
    """List the base images pi-image knows by name: target, size, how a download is verified, and whether (and
    where) it is cached.

    The catalog ships with pi-image; entries in ~/.config/pi-image/catalog.yaml (or $PI_IMAGE_CATALOG) add names
    or override a shipped entry's keys (a mirror's url, a newer image). Cached bases work offline.

    \b
    Examples:
      pi-image bases
      pi-image bases --json | jq -r '.[] | select(.cached) | .name'
      pi-image build --profile worker-8g --base ubuntu-24.04 --ssh-key ~/.ssh/id_ed25519.pub
    """
    cache = default_cache_dir()
    rows = [_describe(entry, download.cached(entry.url, cache, entry.sha256)) for entry in load_catalog().values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(row["name"]) for row in rows)
    click.echo(f"{'NAME':{width}}  {'TARGET':12}  {'SIZE':>9}  {'VERIFIED BY':44}  CACHED")
    for row in rows:
        size = human_size(row["size"]) if row["size"] else "?"
        click.echo(f"{row['name']:{width}}  {row['target']:12}  {size:>9}  {row['verification']:44}  "
                   f"{row['cached'] or 'no'}")
        click.echo(f"{'':{width}}  {row['description']}")
    held = sum(1 for row in rows if row["cached"])
    click.echo(f"\n{len(rows)} bases, {held} cached in {cache / 'downloads'} (yours: {user_catalog_path()}).")
    click.echo("Next: `pi-image fetch NAME` downloads one ahead of time (verified, resumable); "
               "`pi-image build --profile worker-8g --base NAME` uses it (and fetches it if needed).")


@click.command("fetch")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@JSON_OPTION
def fetch(names: tuple[str, ...], as_json: bool) -> None:
    """Download the base images NAME... (catalog names, or https URLs) into the cache, each checked against its
    SHA-256 before it is kept; already cached ones are not downloaded again. An interrupted download resumes where
    it stopped when run again.

    A URL outside the catalog is checked against URL.sha256 or the SHA256SUMS beside it, or a hash you append as
    `#sha256=HEX`.

    A download slower than 32 KiB/s over a minute is abandoned, its bytes kept for the next run (set
    PI_IMAGE_MIN_RATE=8K, say, on a slower link); one of a size the catalog does not give may reach 16 GiB
    (PI_IMAGE_MAX_DOWNLOAD=64G, say, allows more); none takes the cache's last 1 GiB of free space.

    \b
    Examples:
      pi-image fetch ubuntu-24.04
      pi-image fetch ubuntu-24.04 raspios-trixie-lite kali-raspberry-pi     # a mixed fleet's bases
      pi-image fetch 'https://example.org/images/custom.img.xz#sha256=0123...cdef'
    """
    results = []
    for name in dict.fromkeys(names):
        fetched = fetch_base(name)
        results.append({"name": name, "path": str(fetched.path), "sha256": fetched.sha256, "size": fetched.size,
                        "downloaded": fetched.downloaded})
        if not as_json:
            how = "downloaded and verified" if fetched.downloaded else "already cached"
            click.echo(f"{name}: {how}: {fetched.path} ({human_size(fetched.size)}, sha256 {fetched.sha256})")
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    new = sum(1 for result in results if result["downloaded"])
    click.echo(f"\n{len(results)} base{'s' if len(results) > 1 else ''} ready ({new} downloaded, "
               f"{len(results) - new} already cached).")
    click.echo(f"Next: pi-image build --profile worker-8g --base {results[0]['name']} "
               "--ssh-key ~/.ssh/id_ed25519.pub")


def _describe(entry: CatalogEntry, cached: download.Fetched | None) -> dict[str, Any]:
    """One catalog entry as `bases` shows it (and --json prints it)."""
    return {"name": entry.name, "target": entry.target, "description": entry.description, "url": entry.url,
            "size": cached.size if cached else entry.size, "verification": entry.verification(),
            "sha256": cached.sha256 if cached else entry.sha256, "cached": str(cached.path) if cached else None,
            "catalog": entry.source}


COMMANDS: list[click.Command] = [bases, fetch]
