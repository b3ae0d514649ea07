"""The `pi-image` command line: parses arguments, calls the library, prints results. No logic lives here."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path

import click

from . import __version__
from .errors import UserError
from .build import MANIFEST_PATH, BuildRequest, BuildResult, build as run_build, prepare
from .cluster import load_cluster
from .cluster_cli import COMMANDS as CLUSTER_COMMANDS
from .image import open_medium
from .inspect import inspect as inspect_target
from .profiles import list_profiles, parse_set
from .samples import SAMPLES, make_sample
from .steps import BuildContext
from .users import hash_password, read_public_keys
from .targets import detect


class PiImageGroup(click.Group):
    """Turns a `UserError` into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        signal.signal(signal.SIGTERM, _interrupt)  # so `finally:` blocks remove half-made outputs on kill too
        try:
            return super().invoke(ctx)
        except UserError as err:
            click.echo(f"pi-image: error: {err}", err=True)
            sys.exit(err.exit_code)
        except OSError as err:  # a file the user named or a directory pi-image writes: one line, not a traceback
            where = f"{err.filename}: " if err.filename else ""
            click.echo(f"pi-image: error: {where}{err.strerror or err}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("pi-image: interrupted: nothing was left behind", err=True)
            sys.exit(130)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.group(cls=PiImageGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pi-image")
@click.option("-v", "--verbose", is_flag=True, help="Log every external command pi-image runs.")
def main(verbose: bool) -> None:
    """Turn stock Raspberry Pi, Kali ARM and NVIDIA Jetson images into Kubernetes nodes that join by themselves.

    \b
    Examples:
      pi-image inspect ubuntu-22.04-preinstalled-server-arm64+raspi.img.xz
      pi-image build --profile worker-8g --base ubuntu.img.xz --output pi-worker1.img
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(name)s: %(message)s")


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def inspect(image: Path, as_json: bool) -> None:
    """Show what IMAGE (a disk image, compressed image, or rootfs directory) is and how node-ready it is.

    Never writes to IMAGE. A compressed image is unpacked once into the cache (~/.cache/pi-image).

    \b
    Examples:
      pi-image inspect ubuntu-24.04-preinstalled-server-arm64+raspi.img.xz
      pi-image inspect --json pi-worker1.img | jq .k8s
      pi-image inspect Linux_for_Tegra/rootfs
    """
    report = inspect_target(detect(open_medium(image)))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{image}: {report['target']} — {report['os']['pretty_name']}")
    for p in report["partitions"]:
        name = p["label"] or p["name"] or ""
        click.echo(f"  partition {p['number']}: {p['fs'] or '?':7} {name:14} start {p['start']:>12}  size {_size(p['size'])}")
    click.echo(f"  kernel cmdline: {report['boot_cmdline']}")
    for key, value in report["k8s"].items():
        click.echo(f"  {key:15} {_mark(value)}")
    fb = report["firstboot"]
    network = fb["network"]
    where = network if isinstance(network, str) else network and f"{network['address']} via {network['gateway']}"
    facts = [f"node {fb['node']}", fb["role"], fb["kubernetes_version"] and f"Kubernetes {fb['kubernetes_version']}",
             fb["cluster"] and f"cluster {fb['cluster']}", where]
    click.echo(f"  {'firstboot':15} {_mark(fb['installed'])}"
               + (f" ({', '.join(str(f) for f in facts if f)})" if fb["node"] else ""))


@main.command()
@click.option("--profile", "-p", "profile",
              help="Profile name (see `pi-image profiles`) or YAML file; default: the node's profile in the inventory.")
@click.option("--base", "-b", help="Vendor image (.img, .img.xz, .img.zst, .img.gz, .zip) or L4T rootfs directory.")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="Output image (.img, or .img.zst/.img.xz to compress); default NODE.img. With --all: a directory.")
@click.option("--cluster", type=click.Path(path_type=Path, file_okay=False), help="Cluster directory (inventory, secrets).")
@click.option("--node", help="Node name: its identity comes from the cluster inventory, else it is just the hostname.")
@click.option("--all", "all_nodes", is_flag=True, help="Build one image per inventory node (needs --cluster).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a profile value (repeatable).")
@click.option("--overlay", "overlays", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Extra overlay directory rendered after the profile's (repeatable).")
@click.option("--kube-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="pkgs.k8s.io Release.key to install (default: download once and cache).")
@click.option("--ssh-key", "ssh_key_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="SSH public key file (.pub) for the admin user (repeatable).")
@click.option("--password", "ask_password", is_flag=True,
              help="Prompt for the admin user's password (hashed here with SHA-512 crypt; never stored in clear).")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Read the admin user's password from the first line of FILE (hashed like --password).")
@click.option("--no-login", is_flag=True, help="Build even though the admin user gets no key and no password.")
@click.option("--replace-overlay", "replace_overlays", is_flag=True,
              help="Let an --overlay directory shadow the shipped overlay of the same name.")
@click.option("--dry-run", is_flag=True, help="Print every file operation, write nothing.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--in-place", is_flag=True, help="Directory targets only: edit the base tree itself.")
@click.option("--sha256", "full_sha256", is_flag=True,
              help="Also record the plain SHA-256 of a raw output (costs ~1 s per 1.3 GiB of image, holes included).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan (--dry-run) or the manifest as JSON.")
def build(profile: str | None, base: str | None, output: Path | None, cluster: Path | None, node: str | None,
          all_nodes: bool, sets: tuple[str, ...], overlays: tuple[str, ...], kube_key: Path | None,
          ssh_key_files: tuple[Path, ...], ask_password: bool, password_file: Path | None, no_login: bool,
          replace_overlays: bool, dry_run: bool, force: bool, in_place: bool, full_sha256: bool,
          as_json: bool) -> None:
    """Customize a vendor image into a Kubernetes node that joins its cluster at first power-on.

    The base is never written: the output is a sparse copy, edited offline (no root, loop devices or mounts),
    checked with e2fsck/fsck.vfat, and renamed into place only when complete. A manifest of how it was made is
    written beside it (OUTPUT.json) and into the image (/etc/pi-image/build.json).

    \b
    Examples:
      pi-image build --profile worker-8g --base ubuntu-22.04.5-preinstalled-server-arm64+raspi.img.xz \
          --ssh-key ~/.ssh/id_ed25519.pub
      pi-image build -b ubuntu.img.xz --cluster ./homelab --node pi-worker1 -o pi-worker1.img.zst --password
      pi-image build -b ubuntu.img.xz --cluster ./homelab --all -o images/ --ssh-key ~/.ssh/id_ed25519.pub
      pi-image build -p kali-worker -b kali.img.xz --set timezone=Asia/Shanghai --no-login --dry-run
    """
    request = BuildRequest(profile, base, output, cluster, node, parse_set(sets), list(overlays), kube_key,
                           force, in_place, full_sha256, read_public_keys(ssh_key_files),
                           _password_hash(ask_password, password_file), no_login, replace_overlays)
    results = []
    for one in _requests(request, all_nodes, output):
        if dry_run:
            _print_plan(prepare(one), as_json)
        else:
            results.append(run_build(one))
            _report(results[-1], as_json)
    if results and not as_json:
        _next_steps(results, cluster)


def _requests(request: BuildRequest, all_nodes: bool, output: Path | None) -> list[BuildRequest]:
    """The one build asked for, or with --all one per inventory node (OUTPUT is then a directory)."""
    if not all_nodes:
        return [request]
    if not request.cluster:
        raise UserError("--all needs --cluster DIR")
    # control planes last: their card carries the endpoint's copy of the inventory, with every node's newest card
    names = [n.name for n in sorted(load_cluster(request.cluster).nodes, key=lambda n: n.role == "control-plane")]
    if not names:
        raise UserError(f"{request.cluster}/inventory.yaml has no nodes: add some with `pi-image cluster add-node`")
    return [dataclasses.replace(request, node=name, output=(output or Path(".")) / f"{name}.img") for name in names]


def _password_hash(ask: bool, path: Path | None) -> str | None:
    """The admin password from a prompt or a file, as a crypt hash; the plaintext goes no further."""
    if ask and path:
        raise click.UsageError("give --password or --password-file, not both")
    if path:
        source = f"--password-file {path}"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{source}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
        plain = lines[0] if lines else ""
        if not plain:
            raise UserError(f"{source}: the file is empty (its first line is the password)")
    elif ask:
        source = "--password"
        plain = click.prompt("Password for the admin user", hide_input=True, confirmation_prompt=True, err=True)
    else:
        return None
    if len(plain) < 8:
        raise UserError(f"{source}: the admin password has {len(plain)} characters; it needs at least 8")
    return hash_password(plain)


def _print_plan(ctx: BuildContext, as_json: bool) -> None:
    ops = ctx.plan.describe(tuple(ctx.profile.secret_values())) + [
        {"step": "manifest", "action": "write", "fs": "root", "path": MANIFEST_PATH}]
    if as_json:
        click.echo(json.dumps({"target": ctx.target.name, "node": ctx.node.name, "role": ctx.node.role,
                               "cluster": ctx.node.cluster, "network": ctx.static_network(), "ops": ops}, indent=2))
        return
    click.echo(f"# {ctx.target.name} node {ctx.node.name!r} ({ctx.node.role}"
               + (f", cluster {ctx.node.cluster}" if ctx.node.cluster else "") + f"), profile {ctx.profile.name}, "
               f"Kubernetes {ctx.profile['kubernetes_version']} — nothing written")
    network = ctx.static_network()
    click.echo("# network: " + (f"{network['interface']} {network['address']} via {network['gateway']}, "
                                f"dns {', '.join(network['dns'])}" if network else "DHCP"))
    for op in ctx.plan.ops:
        click.echo(op.line())
    click.echo(f"[{'manifest':18}] write (build record) root:{MANIFEST_PATH}  0644 0:0")


def _report(result: BuildResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.manifest, indent=2, sort_keys=True, default=str))
        return
    click.echo(f"Built {result.target.name} node {result.node.name!r} with profile {result.profile.name}: "
               f"{len(result.changed)} of {len(result.ops) + 1} file operations changed something")
    for op in result.changed:
        click.echo("  " + op.line())
    assert result.output is not None
    size = result.output.stat().st_size if result.output.is_file() else 0
    click.echo(f"Output: {result.output}" + (f" ({_size(size)})" if size else ""))
    if result.output.is_file() and result.output.stat().st_mode & 0o077 == 0:
        click.echo("  It holds secrets (the node's join credential, the cluster's keys on a control plane, a password "
                   "hash or a Wi-Fi passphrase), so it "
                   "is readable by you only (0600): keep it, and the card, private.")


def _next_steps(results: list[BuildResult], cluster: Path | None) -> None:
    """The summary of what goes where, and what the user does next."""
    if len(results) > 1:
        click.echo(f"\nBuilt {len(results)} images:")
        for result in results:
            click.echo(f"  {result.node.name:20} {result.node.role:13} {result.output}")
    click.echo("\nNext: write each image to its node's SD card or USB SSD (e.g. `bmaptool copy IMAGE /dev/sdX`, or "
               "`dd if=IMAGE of=/dev/sdX bs=4M conv=fsync`), put it in the board and power it on.")
    if not cluster:
        return
    if any(result.node.role == "control-plane" for result in results):
        click.echo("  The control plane's card initializes the cluster at its first boot (kubeadm init, flannel) and "
                   "then serves join tokens: workers powered on before it wait and join by themselves.")
        click.echo(f"  Then: `pi-image cluster kubeconfig {cluster}` fetches the admin kubeconfig; "
                   f"`pi-image status --cluster {cluster}` run on the master shows each node.")
    else:
        click.echo(f"  Workers join by themselves once the token endpoint runs: the one the control plane's card "
                   f"starts (`pi-image build --cluster {cluster} --node MASTER`), or `pi-image token-server --cluster "
                   f"{cluster}` where kubectl reaches the cluster.")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def profiles(as_json: bool) -> None:
    """List the profiles (profiles/*.yaml), one line each.

    \b
    Example:
      pi-image profiles
    """
    found = list_profiles()
    if as_json:
        click.echo(json.dumps([{"name": p.name, "description": p["description"], "target": p["target"],
                                "role": p["role"], "runtime": p["runtime"]} for p in found], indent=2))
        return
    for p in found:
        click.echo(f"{p.name:14} {p['target'] or '-':13} {p['description']}")


@main.command("demo-image")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--target", "target_name", default="ubuntu-raspi", show_default=True,
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


def _mark(value: object) -> str:
    if value is True:
        return "yes"
    if value in (False, None):
        return "no"
    return str(value)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


for _command in CLUSTER_COMMANDS:  # cluster, token-server, approve, status
    main.add_command(_command)
