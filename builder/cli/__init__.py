"""The `pi-image` command line: parses arguments, calls the library, prints results. No logic lives here."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..build import MANIFEST_PATH, BuildRequest, BuildResult, prepare
from ..build import build as run_build
from ..build.fleet import Failure, Fleet, attempt, failed_summary, plan_fleet
from ..build.inspect import inspect as inspect_target
from ..build.seed_iso import SeedIsoRequest, seed_iso
from ..cards.flash import FlashRequest
from ..cards.flash import flash as run_flash
from ..cluster import (
    default_cluster_dir,
    load_cluster,
    required_cluster_dir,
)
from ..cluster import (
    record_release as clusters_record_release,
)
from ..cluster.status import push_inventory
from ..config.profile_keys import key_reference, key_table
from ..config.profiles import list_profiles, parse_set
from ..config.values import wifi_psk
from ..errors import Interrupted, UserError
from ..image import open_medium
from ..plan.steps import BuildContext
from ..plan.users import hash_password, read_public_keys
from ..progress import human_size
from ..samples import SAMPLES, make_sample
from ..targets import DEFAULT_TARGET, detect
from .bases import COMMANDS as CATALOG_COMMANDS
from .cache import cache_command
from .cluster import COMMANDS as CLUSTER_COMMANDS
from .dashboard import dashboard_command
from .enroll import enroll_command
from .summary import flash_summary, fleet_table, image_summary, next_steps


class PiImageGroup(click.Group):
    """Turns a `UserError` into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):
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
        except KeyboardInterrupt as err:  # an `Interrupted` says what it kept; elsewhere, cleanups ran
            said = str(err) if isinstance(err, Interrupted) else "nothing was left behind"
            click.echo(f"pi-image: interrupted: {said}", err=True)
            sys.exit(130)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.group(cls=PiImageGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pi-image")
@click.option("-v", "--verbose", is_flag=True,
              help="Log every external command pi-image runs (and list what each build changed).")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Turn stock Raspberry Pi, Kali ARM and NVIDIA Jetson images into Kubernetes nodes that join by themselves.

    \b
    Examples:
      pi-image inspect ubuntu-22.04-preinstalled-server-arm64+raspi.img.xz
      pi-image build --profile worker-8g --base ubuntu.img.xz --output pi-worker1.img
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(name)s: %(message)s")
    ctx.obj = {"verbose": verbose}


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
        click.echo(f"  partition {p['number']}: {p['fs'] or '?':7} {name:14} start {p['start']:>12}  "
                   f"size {human_size(p['size'])}")
    click.echo(f"  kernel cmdline: {report['boot_cmdline']}")
    if report["boot_cmdline_problem"]:
        click.echo(f"  {'':15} a build refuses it: {report['boot_cmdline_problem']}")
    for key, value in report["k8s"].items():
        click.echo(f"  {key:15} {_mark(value)}")
    fb = report["firstboot"]
    network = fb["network"]
    where = network if isinstance(network, str) else network and f"{network['address']} via {network['gateway']}"
    version = fb["kubernetes_release"] or fb["kubernetes_version"]
    facts = [f"node {fb['node']}", fb["role"], version and f"Kubernetes {version}",
             fb["cluster"] and f"cluster {fb['cluster']}", where]
    click.echo(f"  {'firstboot':15} {_mark(fb['installed'])}"
               + (f" ({', '.join(str(f) for f in facts if f)})" if fb["node"] else ""))
    if fb["stamp_at_flash"]:
        click.echo(f"  {'joins':15} when stamped: a profile image, `pi-image flash {image} DEVICE --cluster DIR` "
                   "makes each card a node")
    elif fb["node"] and not fb["joins"]:
        click.echo(f"  {'joins':15} no cluster: build it with --cluster DIR (`pi-image cluster init` makes one)")
    offline = fb["offline"]
    if offline:
        click.echo(f"  {'offline':15} yes: {offline['packages']} packages and {offline['images']} images for "
                   f"{offline['platform']} on the card ({human_size(offline['size'])}, Kubernetes "
                   f"{offline['kubernetes']})")
    elif fb["installed"]:
        click.echo(f"  {'offline':15} no: first boot installs the runtime and the kube packages from the network")


def _node_options(command):
    """The options a node's build and its x86 seed share: profile values, overlays, the apt key, the login."""
    for option in reversed([
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a profile value, or one "
                     "field of a mapping (--set wifi.ssid=HomeNet; `pi-image profiles --keys` lists them); "
                     "repeatable."),
        click.option("--overlay", "overlays", multiple=True, type=click.Path(exists=True, file_okay=False),
                     help="Extra overlay directory rendered after the profile's (repeatable)."),
        click.option("--kube-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="pkgs.k8s.io Release.key to install (default: download once and cache)."),
        click.option("--ssh-key", "ssh_key_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
                     help="SSH public key file (.pub) for the admin user (repeatable)."),
        click.option("--password", "ask_password", is_flag=True, help="Prompt for the admin user's password "
                     "(hashed here with SHA-512 crypt; never stored in clear)."),
        click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Read the admin user's password from the first line of FILE (hashed like --password)."),
        click.option("--wifi-psk", "ask_wifi_psk", is_flag=True, help="Prompt for the Wi-Fi passphrase (hidden): it "
                     "never goes on the command line, where shell history and `ps` would keep it. The network: "
                     "--set wifi.ssid=NAME --set wifi.country=GB (or `wifi:` in a profile)."),
        click.option("--wifi-psk-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Read the Wi-Fi passphrase from the first line of FILE."),
        click.option("--no-login", is_flag=True, help="Build even though the admin user gets no key and no password."),
    ]):
        command = option(command)
    return command


@main.command()
@click.option("--profile", "-p", "profile",
              help="Profile name (see `pi-image profiles`) or YAML file; default: the node's profile in the inventory.")
@click.option("--base", "-b", help="Vendor image: a catalog name (`pi-image bases`, downloaded once and verified), "
              "an https URL[#sha256=HEX], a file (.img, .img.xz, .img.zst, .img.gz, .zip) or an L4T rootfs directory "
              "[default: the node's base in the inventory, else the profile's]. With --all: only for the nodes whose "
              "inventory entry and profile name none (each is listed).")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="Output image (.img, or .img.zst/.img.xz/.img.gz to compress); default NODE.img. With --all: a "
                   "directory.")
@click.option("--cluster", type=click.Path(path_type=Path, file_okay=False),
              help="Cluster directory (inventory, secrets) [default: $PI_IMAGE_CLUSTER, else ~/.config/pi-image/"
                   "cluster if it exists]. Without --node: the profile's image for that cluster, stamped per node by "
                   "`pi-image flash`.")
@click.option("--no-cluster", is_flag=True, help="Build an image that joins no cluster, even if a default exists.")
@click.option("--node", help="Node name: its identity comes from the cluster inventory, else it is just the hostname.")
@click.option("--all", "all_nodes", is_flag=True, help="Build one image per inventory node (needs --cluster).")
@_node_options
@click.option("--replace-overlay", "replace_overlays", is_flag=True,
              help="Let an --overlay directory shadow the shipped overlay of the same name.")
@click.option("--bmap", is_flag=True, help="Also write IMAGE.bmap beside the image, named after that exact file "
              "(node.img.xz.bmap): the ranges that matter with their SHA-256, for `bmaptool copy` (e.g. on another "
              "machine). A node's image only: a profile image is written by `pi-image flash`, which stamps the node.")
@click.option("--offline", is_flag=True, help="Carry every package and container image the node needs on the card "
              "(made once, cached): first boot needs no network but the cluster's [default: cluster.yaml's offline].")
@click.option("--dry-run", is_flag=True, help="Print every file operation, write nothing.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--in-place", is_flag=True, help="Directory targets only: edit the base tree itself.")
@click.option("--sha256", "full_sha256", is_flag=True,
              help="Also record the plain SHA-256 of a raw output (costs ~1 s per 1.3 GiB of image, holes included).")
@click.option("-v", "--verbose", is_flag=True, help="Also list every file operation that changed the image.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the plan (--dry-run) or the manifest as JSON (with --all: a list, {node, error} for a node "
                   "not built), and nothing else.")
@click.pass_context
def build(ctx: click.Context, profile: str | None, base: str | None, output: Path | None, cluster: Path | None,
          no_cluster: bool, node: str | None, all_nodes: bool, sets: tuple[str, ...], overlays: tuple[str, ...],
          kube_key: Path | None, ssh_key_files: tuple[Path, ...], ask_password: bool, password_file: Path | None,
          ask_wifi_psk: bool, wifi_psk_file: Path | None, no_login: bool, replace_overlays: bool, bmap: bool,
          offline: bool, dry_run: bool, force: bool, in_place: bool, full_sha256: bool, verbose: bool,
          as_json: bool) -> None:
    """Customize a vendor image into a Kubernetes node that joins its cluster at first power-on.

    The base is never written: the output is a sparse copy, edited offline (no root, loop devices or mounts),
    checked with e2fsck/fsck.vfat, and renamed into place only when complete. A manifest of how it was made is
    written beside it (OUTPUT.json) and into the image (/etc/pi-image/build.json). Each image ends with a summary
    (target, node, role, cluster, address, login, Kubernetes version, output); -v adds the files it changed.
    Long steps (copy, compression, checksums) show a progress bar on stderr when it is a terminal.

    With --all, every inventory node is built from its own base (the inventory's, else its profile's; --base fills
    the others), control planes last; a node that fails does not stop the others, and the table at the end says
    which were not built (exit 1 then).

    \b
    Examples:
      pi-image build --profile worker-8g --base ubuntu-22.04.5-preinstalled-server-arm64+raspi.img.xz \\
          --ssh-key ~/.ssh/id_ed25519.pub                  # with a default cluster: its worker-8g image
      pi-image flash worker-8g.img /dev/sdb                # each card becomes the next worker-8g node
      pi-image build -b ubuntu.img.xz --cluster ./homelab --node pi-worker1 -o pi-worker1.img.zst --password
      pi-image build -b ubuntu.img.xz --cluster ./homelab --all -o images/ --ssh-key ~/.ssh/id_ed25519.pub
      pi-image build -p kali-worker -b kali.img.xz --set timezone=Asia/Shanghai --no-login --dry-run
      pi-image build -p worker-8g --set wifi.ssid=HomeNet --set wifi.country=GB --wifi-psk   # asks for it
      pi-image build --cluster ./homelab --node pi-worker1 -b ubuntu.img.xz --json | jq .output
      pi-image build --profile worker-8g --offline         # packages and images on the card: no internet needed
    """
    cluster = _cluster_dir(cluster, no_cluster)
    if all_nodes and cluster is None:
        raise UserError("--all needs --cluster DIR (the inventory whose nodes it builds)")
    if all_nodes and (node or profile):
        raise click.UsageError(f"--all builds every inventory node with the profile the inventory gives it: drop "
                               f"{'--node' if node else '--profile'}")
    settings = {**_settings(sets, ask_wifi_psk, wifi_psk_file), **({"offline": True} if offline else {})}
    request = BuildRequest(profile=profile, base=base, output=output, cluster=cluster, node=node, sets=settings,
                           overlays=list(overlays), kube_key=kube_key, force=force, in_place=in_place,
                           sha256=full_sha256, ssh_keys=read_public_keys(ssh_key_files),
                           password_hash=_password_hash(ask_password, password_file), no_login=no_login,
                           replace_overlays=replace_overlays, bmap=bmap, dry_run=dry_run)
    verbose = verbose or ctx.obj["verbose"]
    if not all_nodes:
        if dry_run:
            plan = prepare(request)
            if as_json:
                click.echo(json.dumps(_plan_document(plan), indent=2, sort_keys=True, default=str))
            else:
                _print_plan(plan)
                click.echo("# nothing was written: run the same command without --dry-run to build it")
            return
        result = run_build(request)
        if as_json:
            click.echo(json.dumps(result.manifest, indent=2, sort_keys=True, default=str))
        else:
            _echo_lines(image_summary(result, verbose) + [""] + next_steps([result], cluster))
        return
    _build_fleet(_fleet(request, output), dry_run, verbose, as_json)


def _build_fleet(fleet: Fleet, dry_run: bool, verbose: bool, as_json: bool) -> None:
    """`build --all`: every member built (or planned) in turn, a failure said and passed over; the table of every
    node, the next steps; exit 1 if any node was not built."""
    documents: list[dict[str, Any]] = []
    results: list[BuildResult] = []
    failures: list[Failure] = []
    for member in fleet.members:
        outcome = attempt(member, prepare) if dry_run else attempt(member, run_build)
        if isinstance(outcome, Failure):
            failures.append(outcome)
            documents.append({"node": member.node.name, "error": outcome.error})
            click.echo(f"pi-image: error: {member.node.name}: {outcome.error}", err=True)
        elif isinstance(outcome, BuildContext):  # --dry-run: the plan
            documents.append(_plan_document(outcome))
            if not as_json:
                _print_plan(outcome)
        else:
            results.append(outcome)
            documents.append(outcome.manifest)
            if not as_json:
                _echo_lines(([""] if len(results) > 1 else []) + image_summary(outcome, verbose))
    if as_json:
        click.echo(json.dumps(documents, indent=2, sort_keys=True, default=str))
    elif dry_run:
        click.echo("# nothing was written: run the same command without --dry-run to build it")
    else:
        table = fleet_table(results, failures) + [""] if len(results) > 1 or failures else []
        _echo_lines([""] + table + (next_steps(results, fleet.directory, fleet.x86) if results else []))
    if failures:
        raise UserError(failed_summary(failures, len(fleet.members), fleet.directory))


def _fleet(request: BuildRequest, output: Path | None, only: tuple[str, ...] = ()) -> Fleet:
    """The fleet of request.cluster (only the nodes named in `only`, if any), the x86 nodes and the nodes --base
    fills said on stderr, a line each."""
    fleet = plan_fleet(request, output)
    if only:
        fleet = dataclasses.replace(fleet, x86=[n for n in fleet.x86 if n.name in only],
                                    members=[m for m in fleet.members if m.node.name in only])
    for node in fleet.x86:  # no card: the stock system's cloud-init sets it up from a seed
        click.echo(f"pi-image: {node.name} is an x86 node, made with `pi-image seed-iso --cluster {request.cluster} "
                   f"--node {node.name}`, not a card: skipped", err=True)
    for member in fleet.members:
        if member.filled:
            click.echo(f"pi-image: {member.node.name}: its inventory entry and profile {member.node.profile} name no "
                       f"base: --base {member.base} is its base", err=True)
    if fleet.base_unused:
        click.echo(f"pi-image: --base {request.base} is not used: every node names its own base (in the inventory "
                   "or its profile)", err=True)
    return fleet


@main.command("seed-iso")
@click.option("--profile", "-p", help="Profile (default: the node's in the inventory), e.g. x86-worker.")
@click.option("--cluster", type=click.Path(path_type=Path, file_okay=False),
              help="Cluster directory [default: $PI_IMAGE_CLUSTER, else ~/.config/pi-image/cluster if it exists].")
@click.option("--node", required=True, help="The inventory node the x86 machine becomes.")
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False),
              help="The ISO [default: NODE-seed.iso].")
@click.option("--autoinstall", is_flag=True, help="Wrap it for the Ubuntu live-server installer (a fresh install).")
@_node_options
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def seed_iso_command(profile: str | None, cluster: Path | None, node: str, output: Path | None, autoinstall: bool,
                     sets: tuple[str, ...], overlays: tuple[str, ...], kube_key: Path | None,
                     ssh_key_files: tuple[Path, ...], ask_password: bool, password_file: Path | None,
                     ask_wifi_psk: bool, wifi_psk_file: Path | None, no_login: bool, force: bool,
                     as_json: bool) -> None:
    """Make a cloud-init NoCloud seed (an ISO labelled CIDATA) that turns a stock Ubuntu Server amd64 into NODE.

    Its user-data carries the same plan as a card: the agent, its node config with the credential, sysctls,
    modules, the runtime's config, the kube repository, key and pin, the unit — as cloud-init write_files. Attach
    it as a CD or second drive to the Ubuntu cloud image at its first boot; with --autoinstall, boot the
    live-server ISO with it attached and add `autoinstall` to the kernel command line to skip the confirmation.
    The ISO holds the node's credential: it is 0600.

    \b
    Examples:
      pi-image cluster add-node ./homelab x86-1 --profile x86-worker --address 192.168.6.30 --mac 52:54:00:12:34:56
      pi-image seed-iso --cluster ./homelab --node x86-1 --ssh-key ~/.ssh/id_ed25519.pub
      pi-image seed-iso --cluster ./homelab --node x86-1 --autoinstall --password -o x86-1-autoinstall.iso
    """
    directory = required_cluster_dir(cluster)
    result = seed_iso(SeedIsoRequest(profile=profile, cluster=directory, node=node, output=output,
                                     autoinstall=autoinstall, ssh_keys=read_public_keys(ssh_key_files),
                                     password_hash=_password_hash(ask_password, password_file), no_login=no_login,
                                     sets=_settings(sets, ask_wifi_psk, wifi_psk_file), overlays=list(overlays),
                                     kube_key=kube_key, force=force))
    if as_json:
        click.echo(json.dumps({"output": str(result.output), "node": result.node, "role": result.role,
                               "size": result.size, "user_data_bytes": result.user_data_bytes,
                               "files": result.files}, indent=2))
        return
    _echo_lines([f"Wrote {result.output} ({human_size(result.size)}, 0600: it holds the node's credential)",
                 f"  node        {result.node}: {result.role}, cluster {directory}",
                 f"  user-data   {human_size(result.user_data_bytes)}, {len(result.files)} files",
                 "Next: " + ("boot Ubuntu's live-server ISO with this one attached as a second drive and add "
                             "`autoinstall` to the kernel command line; the installed system joins at its first boot."
                             if autoinstall else "attach it as a CD or second drive to a stock Ubuntu Server amd64 "
                             "(the cloud image) at its first boot: cloud-init applies it and the node joins.")])


@main.command("bundle")
@click.option("--cluster", type=click.Path(path_type=Path, file_okay=False),
              help="Cluster directory [default: $PI_IMAGE_CLUSTER, else ~/.config/pi-image/cluster if it exists].")
@click.option("--node", "nodes", multiple=True, help="Only this inventory node (repeatable) [default: every card].")
@click.option("--base", "-b", help="Base image for nodes whose inventory entry and profile name none.")
@click.option("--kube-key", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="The Kubernetes apt repository's key (armored) [default: downloaded from pkgs.k8s.io, cached].")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a profile setting (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per node instead of a table.")
def bundle_command(cluster: Path | None, nodes: tuple[str, ...], base: str | None, kube_key: Path | None,
                   sets: tuple[str, ...], as_json: bool) -> None:
    """Fill the cache with the offline bundle of every node of a cluster (packages and container images for its
    OS, architecture and role), so that `build --offline` then needs no network. Bundles of nodes alike are made
    once; the first records the cluster's exact Kubernetes release in cluster.yaml.

    \b
    Examples:
      pi-image bundle --cluster ./homelab                 # while online; later builds work with no network
      pi-image bundle --cluster ./homelab --node pi-master1 --json
    """
    directory = required_cluster_dir(cluster)
    request = BuildRequest(base=base, cluster=directory, sets={**parse_set(sets), "offline": True},
                           kube_key=kube_key, no_login=True)
    wanted = [m.request for m in _fleet(request, None, nodes).members]
    unknown = sorted(set(nodes) - {one.node for one in wanted})
    if unknown:
        load_cluster(directory).node(unknown[0])  # names the inventory and the known nodes
    rows = []
    for one in wanted:
        ctx = prepare(one)
        if ctx.bundle is None:
            continue
        clusters_record_release(directory, ctx.bundle.release)
        manifest = ctx.bundle.manifest
        rows.append({"node": ctx.node.name, "kubernetes": ctx.bundle.release, "platform": manifest["platform"],
                     "packages": len(manifest["packages"]), "images": len(manifest["images"]),
                     "size": ctx.bundle.size})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'NODE':16}  {'KUBERNETES':10}  {'PLATFORM':13}  {'PACKAGES':>8}  {'IMAGES':>6}  SIZE")
    for row in rows:
        click.echo(f"{row['node']:16}  {row['kubernetes']:10}  {row['platform']:13}  {row['packages']:>8}  "
                   f"{row['images']:>6}  {human_size(row['size'])}")
    click.echo(f"Next: pi-image build --cluster {directory} --all --offline (works with no network now)")


def _cluster_dir(cluster: Path | None, no_cluster: bool) -> Path | None:
    """--cluster, else the default cluster (PI_IMAGE_CLUSTER or ~/.config/pi-image/cluster), unless --no-cluster."""
    if no_cluster:
        if cluster:
            raise click.UsageError("give --cluster or --no-cluster, not both")
        return None
    return cluster or default_cluster_dir()


@main.command()
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("device", type=click.Path(path_type=Path))
@click.option("--cluster", type=click.Path(path_type=Path, file_okay=False),
              help="The cluster the image was built with [default: $PI_IMAGE_CLUSTER, else ~/.config/pi-image/"
                   "cluster if it exists].")
@click.option("--node", help="Stamp this inventory node onto the card [default for a profile image: the next free "
              "node of its profile, added to the inventory].")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before overwriting DEVICE.")
@click.option("--no-verify", is_flag=True, help="Skip reading the card back.")
@click.option("--force", is_flag=True, help="Write to a disk that does not look removable (never the system's own).")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
def flash(image: Path, device: Path, cluster: Path | None, node: str | None, yes: bool, no_verify: bool,
          force: bool, as_json: bool) -> None:
    """Write IMAGE to DEVICE (an SD card or USB disk, or a file), verify it by reading it back, and stamp the node.

    Only the blocks the image's filesystems use are written (plus partition tables and anything pi-image cannot
    read); the partition table goes last, so an interrupted flash leaves a card that nothing mistakes for a node.
    Refused: a device with a mounted filesystem, the disk the running system lives on, a non-removable disk
    (unless --force), a device smaller than the image. Asks first, showing what is on the card, unless --yes.

    A profile image (`pi-image build --cluster DIR --profile P`) becomes a node only here: the card gets the next
    free node of that profile (or --node NAME) — hostname, address, a fresh credential — so one image serves a fleet
    and reflashing a card rebuilds its node.

    
    Examples:
      pi-image flash worker-8g.img /dev/sdb                       # the next worker-8g node of the default cluster
      pi-image flash worker-8g.img.zst /dev/mmcblk0 --node pi-worker3 --cluster ./homelab
      pi-image flash pi-master1.img /dev/sdb --yes --json
      pi-image flash worker-8g.img vm-disk.img --yes              # a file: for VMs and tests
    """
    confirm = None if yes else _confirm
    cluster_dir = _cluster_dir(cluster, False)
    result = run_flash(FlashRequest(image, device, cluster_dir, node, not no_verify, force, confirm))
    # a node the flash added must be known to the master before the card asks it for a token
    pushed = push_inventory(load_cluster(cluster_dir)) if result.added_node and cluster_dir else None
    if as_json:
        ctx = result.stamped
        click.echo(json.dumps({
            "device": str(result.device.path), "image": str(image), "previous": result.previous,
            "node": ctx.node.name if ctx else (result.manifest or {}).get("node"),
            "generation": ctx.node_config.generation if ctx else None, "added_to_inventory": result.added_node,
            "written_bytes": result.written, "zeroed_bytes": result.zeroed, "verified_bytes": result.verified,
            "image_bytes": result.usage.size, "inventory": pushed,
            "seconds": round(result.seconds, 3)}, indent=2))
        return
    _echo_lines(flash_summary(result) + ([pushed] if pushed else []))


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise UserError("DEVICE would be overwritten and there is no terminal to ask: pass --yes")
    click.echo(question, err=True)
    return click.prompt("Type yes to go on", default="", show_default=False, err=True).strip().lower() == "yes"


def _password_hash(ask: bool, path: Path | None) -> str | None:
    """The admin password from a prompt or a file, as a crypt hash; the plaintext goes no further."""
    secret = _secret(ask, path, "--password", "Password for the admin user", "password")
    if secret is None:
        return None
    plain, source = secret
    if len(plain) < 8:
        raise UserError(f"{source}: the admin password has {len(plain)} characters; it needs at least 8")
    return hash_password(plain)


def _settings(sets: tuple[str, ...], ask_wifi_psk: bool, wifi_psk_file: Path | None) -> dict[str, Any]:
    """The --set values, and the Wi-Fi passphrase (from a prompt or a file, never the command line) as wifi.psk."""
    settings = parse_set(sets)
    secret = _secret(ask_wifi_psk, wifi_psk_file, "--wifi-psk", "Wi-Fi passphrase", "passphrase")
    if secret is not None:
        plain, source = secret
        problem = wifi_psk(plain)
        if problem:
            raise UserError(f"{source}: {problem}")
        settings["wifi.psk"] = plain
    return settings


def _secret(ask: bool, path: Path | None, option: str, prompt: str, what: str) -> tuple[str, str] | None:
    """(the secret, where it came from) from a hidden prompt (`option`) or the first line of a file
    (`option`-file), or None when neither was asked for."""
    if ask and path:
        raise click.UsageError(f"give {option} or {option}-file, not both")
    if path:
        source = f"{option}-file {path}"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{source}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
        plain = lines[0] if lines else ""
        if not plain:
            raise UserError(f"{source}: the file is empty (its first line is the {what})")
        return plain, source
    if ask:
        return click.prompt(prompt, hide_input=True, confirmation_prompt=True, err=True), option
    return None


def _plan_document(ctx: BuildContext) -> dict[str, Any]:
    """What `build --dry-run --json` prints for one node."""
    ops = ctx.plan.describe(tuple(ctx.profile.secret_values())) + [
        {"step": "manifest", "action": "write", "fs": "root", "path": MANIFEST_PATH}]
    return {"target": ctx.target.name, "node": ctx.node.name, "role": ctx.node.role, "cluster": ctx.node.cluster,
            "network": ctx.static_network(), "ops": ops}


def _print_plan(ctx: BuildContext) -> None:
    click.echo(f"# {ctx.target.name} node {ctx.node.name!r} ({ctx.node.role}"
               + (f", cluster {ctx.node.cluster}" if ctx.node.cluster else "") + f"), profile {ctx.profile.name}, "
               f"Kubernetes {ctx.profile['kubernetes_version']} — nothing written")
    network = ctx.static_network()
    click.echo("# network: " + (f"{network['interface']} {network['address']} via {network['gateway']}, "
                                f"dns {', '.join(network['dns'])}" if network else "DHCP"))
    for op in ctx.plan.ops:
        click.echo(op.line())
    if ctx.kube_keyring is None:
        click.echo(f"[{'kube-key':18}] (the pkgs.k8s.io key is not cached yet: the build downloads it; --dry-run "
                   "never does)")
    click.echo(f"[{'manifest':18}] write (build record) root:{MANIFEST_PATH}  0644 0:0")


@main.command()
@click.option("--keys", is_flag=True, help="List every key a profile may set: type, default and meaning.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def profiles(keys: bool, as_json: bool) -> None:
    """List the profiles (profiles/*.yaml), one line each; with --keys, every setting a profile (or
    `build --set KEY=VALUE`) may give, with its type, default and meaning, fields of mappings as `wifi.country`.

    \b
    Examples:
      pi-image profiles
      pi-image profiles --keys
      pi-image profiles --keys --json | jq '.[] | select(.key == "wifi.country")'
    """
    if keys:
        _print_keys(as_json)
        return
    found = list_profiles()
    if as_json:
        click.echo(json.dumps([{"name": p.name, "description": p["description"], "target": p["target"],
                                "role": p["role"], "runtime": p["runtime"]} for p in found], indent=2))
        return
    for p in found:
        click.echo(f"{p.name:14} {p['target'] or 'any':13} {p['description']}")


def _print_keys(as_json: bool) -> None:
    rows = key_reference()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _echo_lines(key_table(rows, shutil.get_terminal_size((120, 24)).columns))
    fields = sum("." in row["key"] for row in rows)
    click.echo(f"\n{len(rows) - fields} keys and {fields} fields of mappings. Set them in a profile of your own "
               "(`extends: worker-8g`, then `pi-image build --profile my.yaml`) or one at a time with "
               "`pi-image build --set KEY=VALUE` (a field too: --set wifi.ssid=HomeNet). Secrets never go on the "
               "command line: the Wi-Fi passphrase comes from --wifi-psk (asked) or --wifi-psk-file FILE.")


@main.command("demo-image")
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


def _mark(value: object) -> str:
    if value is True:
        return "yes"
    if value in (False, None):
        return "no"
    return str(value)


def _echo_lines(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


for _command in CLUSTER_COMMANDS + CATALOG_COMMANDS + [dashboard_command, cache_command, enroll_command]:
    # cluster, token-server, approve, status; bases, fetch; dashboard; cache; enroll
    main.add_command(_command)
