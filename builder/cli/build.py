"""`pi-image build` (one node, a profile image, or every node of an inventory, or their plans) and `pi-image bundle`
(the offline bundles a cluster's builds need). Parsing and printing only: builder.build does the work."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from ..build import MANIFEST_PATH, BuildRequest, BuildResult, prepare
from ..build import build as run_build
from ..build.fleet import Failure, Fleet, attempt, failed_summary, plan_fleet
from ..cluster import load_cluster, required_cluster_dir
from ..cluster import record_release as clusters_record_release
from ..config.profiles import parse_set
from ..errors import UserError
from ..plan.steps import BuildContext
from ..plan.users import read_public_keys
from ..progress import human_size
from .options import cluster_directory, echo_lines, node_options, password_hash, set_values
from .summary import fleet_table, image_summary, next_steps


@click.command("build")
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
@node_options
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
    cluster = cluster_directory(cluster, no_cluster)
    if all_nodes and cluster is None:
        raise UserError("--all needs --cluster DIR (the inventory whose nodes it builds)")
    if all_nodes and (node or profile):
        raise click.UsageError(f"--all builds every inventory node with the profile the inventory gives it: drop "
                               f"{'--node' if node else '--profile'}")
    settings = {**set_values(sets, ask_wifi_psk, wifi_psk_file), **({"offline": True} if offline else {})}
    request = BuildRequest(profile=profile, base=base, output=output, cluster=cluster, node=node, sets=settings,
                           overlays=list(overlays), kube_key=kube_key, force=force, in_place=in_place,
                           sha256=full_sha256, ssh_keys=read_public_keys(ssh_key_files),
                           password_hash=password_hash(ask_password, password_file), no_login=no_login,
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
            echo_lines(image_summary(result, verbose) + [""] + next_steps([result], cluster))
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
                echo_lines(([""] if len(results) > 1 else []) + image_summary(outcome, verbose))
    if as_json:
        click.echo(json.dumps(documents, indent=2, sort_keys=True, default=str))
    elif dry_run:
        click.echo("# nothing was written: run the same command without --dry-run to build it")
    else:
        table = fleet_table(results, failures) + [""] if len(results) > 1 or failures else []
        echo_lines([""] + table + (next_steps(results, fleet.directory, fleet.x86) if results else []))
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


@click.command("bundle")
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
