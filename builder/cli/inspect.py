"""`pi-image inspect`: what an image (or rootfs directory) is and how node-ready it is. Parsing and printing only:
builder.build.inspect does the work."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..build.inspect import inspect as inspect_target
from ..image import open_medium
from ..progress import human_size
from ..targets import detect


@click.command("inspect")
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


def _mark(value: object) -> str:
    if value is True:
        return "yes"
    if value in (False, None):
        return "no"
    return str(value)
