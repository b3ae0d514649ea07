"""`pi-image seed-iso`: the cloud-init seed that makes a stock Ubuntu Server amd64 an inventory node. Parsing and
printing only: builder.build.seed_iso does the work."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..build.seed_iso import SeedIsoRequest, seed_iso
from ..cluster import required_cluster_dir
from ..plan.users import read_public_keys
from ..progress import human_size
from .options import echo_lines, node_options, password_hash, set_values


@click.command("seed-iso")
@click.option("--profile", "-p", help="Profile (default: the node's in the inventory), e.g. x86-worker.")
@click.option("--cluster", type=click.Path(path_type=Path, file_okay=False),
              help="Cluster directory [default: $PI_IMAGE_CLUSTER, else ~/.config/pi-image/cluster if it exists].")
@click.option("--node", required=True, help="The inventory node the x86 machine becomes.")
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False),
              help="The ISO [default: NODE-seed.iso].")
@click.option("--autoinstall", is_flag=True, help="Wrap it for the Ubuntu live-server installer (a fresh install).")
@node_options
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
                                     password_hash=password_hash(ask_password, password_file), no_login=no_login,
                                     sets=set_values(sets, ask_wifi_psk, wifi_psk_file), overlays=list(overlays),
                                     kube_key=kube_key, force=force))
    if as_json:
        click.echo(json.dumps({"output": str(result.output), "node": result.node, "role": result.role,
                               "size": result.size, "user_data_bytes": result.user_data_bytes,
                               "files": result.files}, indent=2))
        return
    echo_lines([f"Wrote {result.output} ({human_size(result.size)}, 0600: it holds the node's credential)",
                 f"  node        {result.node}: {result.role}, cluster {directory}",
                 f"  user-data   {human_size(result.user_data_bytes)}, {len(result.files)} files",
                 "Next: " + ("boot Ubuntu's live-server ISO with this one attached as a second drive and add "
                             "`autoinstall` to the kernel command line; the installed system joins at its first boot."
                             if autoinstall else "attach it as a CD or second drive to a stock Ubuntu Server amd64 "
                             "(the cloud image) at its first boot: cloud-init applies it and the node joins.")])
