"""`pi-image cache`: what the cache holds (`list`, the default) and `prune`. Parsing and printing only:
builder/cache.py finds and removes, and documents the layout and the bounds."""

from __future__ import annotations

import json
import time

import click

from .. import cache
from ..image.inputs import default_cache_dir
from ..progress import human_size
from .bases import JSON_OPTION

KINDS = ("download", "partial", "unpacked", "unpacking", "private", "digests", "leftover", "bundles")


@click.group("cache", invoke_without_command=True,
             short_help="List (and prune) the downloads, unpacked images and leftovers pi-image keeps.")
@click.pass_context
def cache_command(ctx: click.Context) -> None:
    """Show what pi-image keeps in its cache ($PI_IMAGE_CACHE, else ~/.cache/pi-image), or prune it.

    It holds verified downloads of bases, unpacked copies of compressed images (at most $PI_IMAGE_UNPACKED_MAX,
    default 20G: the least recently used go first; their downloads stay), partial downloads the next fetch resumes,
    the offline bundles `pi-image bundle` makes, and what interrupted runs left (each unpack removes those). An
    unpacked image pi-image made is never kept: it may hold a node's credential.

    \b
    Examples:
      pi-image cache                        # the same as `pi-image cache list`
      pi-image cache list --json | jq '.entries[] | select(.kind == "unpacked")'
      pi-image cache prune --dry-run
      PI_IMAGE_UNPACKED_MAX=8G pi-image build --profile worker-8g --base ubuntu-24.04
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command)


@cache_command.command("list")
@JSON_OPTION
def list_command(as_json: bool = False) -> None:
    """List what the cache holds, with sizes on disk (unpacked images are sparse), dates and totals.

    DATE is an unpacked image's last use, a download's date at its vendor, and the last write of the others.
    [in use] marks what a running pi-image holds: nothing removes it.

    \b
    Examples:
      pi-image cache list
      pi-image cache list --json | jq '.totals'
    """
    root = default_cache_dir()
    found = cache.entries(root)
    totals = {kind: sum(e.size for e in found if e.kind == kind) for kind in KINDS}
    whole = cache.disk_usage(root)
    bound = cache.unpacked_max()
    if as_json:
        click.echo(json.dumps({"cache": str(root), "unpacked_max": bound, "total": whole, "totals": totals,
                               "entries": [e.to_json() for e in found]}, indent=2))
        return
    if not found:
        click.echo(f"The cache {root} holds nothing to list ({human_size(whole)}).")
        click.echo("Next: `pi-image fetch NAME` downloads a base ahead of time (`pi-image bases` lists them).")
        return
    _table(found)
    parts = ", ".join(f"{kind} {human_size(size)}" for kind, size in totals.items() if size)
    click.echo(f"\n{human_size(whole)} in {root}: {parts}; unpacked copies are kept within "
               f"{cache.UNPACKED_MAX_ENV}={human_size(bound)}.")
    frees = human_size(sum(e.size for e in cache.prune(root, dry_run=True)[0]))
    click.echo(f"Next: `pi-image cache prune` frees {frees} (leftovers and unpacked copies; downloads stay, and the "
               "next build unpacks again); `pi-image cache prune --all` removes the downloads too.")


@cache_command.command("prune")
@click.option("--all", "everything", is_flag=True, help="Also remove the downloads, partial downloads and bases' "
              "chunk digests (a build fetches its base again, and digests it whole once). Run it while no build "
              "runs: a download is not held while it is read.")
@click.option("--dry-run", is_flag=True, help="Print what would be removed, remove nothing.")
@JSON_OPTION
def prune_command(everything: bool, dry_run: bool, as_json: bool) -> None:
    """Remove what interrupted runs left and the unpacked copies of images (each is unpacked again when a command
    needs it); with --all, the downloads too. Never what a running pi-image holds, never the offline bundles.

    \b
    Examples:
      pi-image cache prune --dry-run
      pi-image cache prune
      pi-image cache prune --all --json | jq '.freed'
    """
    root = default_cache_dir()
    removed, kept = cache.prune(root, everything, dry_run)
    freed = sum(e.size for e in removed)
    if as_json:
        click.echo(json.dumps({"cache": str(root), "dry_run": dry_run, "freed": freed,
                               "removed": [e.to_json() for e in removed], "kept": [e.to_json() for e in kept]},
                              indent=2))
        return
    _table(removed, "would go" if dry_run else "removed")
    held = [e for e in kept if e.kind in ("download", "partial") and not everything]
    busy = [e for e in kept if e.in_use]
    notes = [f"{len(held)} downloads kept ({human_size(sum(e.size for e in held))}: --all removes them)"] if held \
        else []
    notes += [f"{len(busy)} in use kept"] if busy else []
    notes += ["bundles kept"] if any(e.kind == "bundles" for e in kept) else []
    done = (f"{len(removed)} would be removed, freeing {human_size(freed)} in {root} (nothing was: --dry-run)"
            if dry_run else f"{len(removed)} removed, {human_size(freed)} freed in {root}")
    click.echo(f"\n{done}" + (f"; {', '.join(notes)}" if notes else "") + ".")
    click.echo("Next: " + ("run it again without --dry-run to remove them." if dry_run else
                           "nothing to do: a build unpacks (and fetches) what it needs again; `pi-image cache` "
                           "shows what is left."))


def _table(rows: list[cache.Entry], verb: str = "") -> None:
    """Entries one a line, after a header: (verb,) kind, size, date, name and what it is, [in use]."""
    if not rows:
        return
    lead = f"{verb:9}  " if verb else ""
    click.echo(f"{'':{len(lead)}}{'KIND':9}  {'SIZE':>9}  {'DATE':16}  NAME: WHAT")
    for e in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.when)) if e.when else "-"
        click.echo(f"{lead}{e.kind:9}  {human_size(e.size):>9}  {when:16}  {cache.short_name(e.path)}: {e.what}"
                   + ("  [in use]" if e.in_use else ""))
