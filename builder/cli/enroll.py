"""`pi-image enroll`: the script that makes an installed machine a worker. Parsing and printing only:
builder/build/enroll.py makes the script, firstboot/enroll.py is what runs on the machine."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

from ..build.enroll import EnrollRequest, enroll
from ..cluster import required_cluster_dir
from ..config.profiles import parse_set
from ..progress import human_size


@click.command("enroll")
@click.option("--cluster", type=click.Path(path_type=Path, file_okay=False),
              help="Cluster directory [default: $PI_IMAGE_CLUSTER, else ~/.config/pi-image/cluster if it exists].")
@click.option("--node", required=True, help="The inventory node (a worker) the machine becomes.")
@click.option("--profile", "-p", help="Profile (default: the node's in the inventory), e.g. x86-worker.")
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False),
              help="The script [default: enroll-NODE.sh].")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a profile value (`pi-image profiles --keys` lists them); repeatable.")
@click.option("--overlay", "overlays", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Extra overlay directory rendered after the profile's (repeatable).")
@click.option("--kube-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="pkgs.k8s.io Release.key to install (default: download once and cache).")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON (every change, no content).")
def enroll_command(cluster: Path | None, node: str, profile: str | None, output: Path | None,
                   sets: tuple[str, ...], overlays: tuple[str, ...], kube_key: Path | None, force: bool,
                   as_json: bool) -> None:
    """Write one self-contained script that makes an already installed machine (x86 Ubuntu, Arch) the worker NODE,
    without reflashing it: run it there once as root.

    It carries the node's plan, as a card or a seed ISO does (the agent, node.json with the credential, sysctls,
    modules, the runtime's config, Kubernetes), but the machine keeps its own hostname, time zone, locale, accounts
    and network. On the machine it checks first (root, the OS family, systemd, not a node already, swap it can turn
    off), backs up every file it replaces, journals each change (an interrupted run resumes), then starts the
    agent, which joins. `--dry-run` lists the changes; `--undo` puts every file back byte for byte. The script holds
    the node's credential: it is 0600.

    \b
    Examples:
      pi-image cluster add-node ./homelab x220 --profile x86-worker --address 192.168.6.40
      pi-image enroll --cluster ./homelab --node x220
      scp enroll-x220.sh x220: && ssh -t x220 sudo sh enroll-x220.sh --dry-run
      ssh -t x220 sudo sh enroll-x220.sh            # then: sudo sh enroll-x220.sh --undo to take it back
    """
    directory = required_cluster_dir(cluster)
    result = enroll(EnrollRequest(profile=profile, cluster=directory, node=node, output=output,
                                  sets=parse_set(sets), overlays=list(overlays), kube_key=kube_key, force=force))
    if as_json:
        click.echo(json.dumps({"output": str(result.output), "node": result.node, "role": result.role,
                               "target": result.target, "os_ids": result.os_ids, "size": result.size,
                               "ops": result.ops, "units": result.units}, indent=2))
        return
    counts = Counter(op["action"] for op in result.ops)
    name = result.output.name
    for line in [f"Wrote {result.output} ({human_size(result.size)}, 0600: it holds the node's credential)",
                 f"  node        {result.node}: {result.role}, cluster {directory}",
                 f"  for         an installed {' / '.join(result.os_ids)} system with systemd ({result.target} plan)",
                 f"  changes     {counts['write']} files, {counts['symlink']} links, {counts['mkdir']} directories; "
                 "hostname, time zone, locale, accounts and network stay the machine's",
                 f"Next: scp {result.output} MACHINE: && ssh -t MACHINE sudo sh {name} (--dry-run first lists every "
                 f"change; --undo puts it all back), then: pi-image status --cluster {directory}"]:
        click.echo(line)
