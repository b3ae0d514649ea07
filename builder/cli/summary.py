"""What `pi-image build` tells its user: one summary per image, a table of every image of a fleet, the next step.

    Built images/pi-worker1.img (2.0 GiB)
      node        pi-worker1: worker, profile worker-8g
      target      ubuntu-raspi (Ubuntu 22.04.5 LTS)
      cluster     ./homelab
      address     192.168.6.15/24 on eth0, gateway 192.168.6.1, dns 192.168.6.1
      ...

Text for people only: `--json` prints the manifests instead (builder.cli), never any of this.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..build import BuildResult
from ..build.fleet import Failure
from ..cluster import Node
from ..image.inputs import DECOMPRESSORS
from ..progress import human_size

if TYPE_CHECKING:  # a build's summary needs none of the flash
    from ..cards.flash import FlashResult

NO_CLUSTER = ("none: this image joins no cluster — make one with `pi-image cluster init DIR ...` (or in "
              "~/.config/pi-image/cluster, used by default), then build with --cluster DIR")
SECRETS = ("0600, readable by you only: it holds secrets (a join credential, the cluster's keys, a password hash or "
           "a Wi-Fi passphrase) — keep it, and the card, private")
DEVICE = "/dev/sdX"


def image_summary(result: BuildResult, verbose: bool) -> list[str]:
    """The facts a user checks before flashing: what the image is, where it joins, how to log in, where it is.
    `verbose` adds every file operation that changed the image."""
    profile, node = result.profile, result.node
    stamp_later = result.manifest.get("stamp_at_flash")
    rows = [
        ("node", f"stamped at flash time: {node.role}, profile {profile.name}" if stamp_later
         else f"{node.name}: {node.role}, profile {profile.name}"),
        ("target", f"{result.target.name} ({result.target.os.pretty_name})"),
        ("base", _base(result.manifest)),
        ("cluster", (f"{node.cluster} (a profile image: each card written with `pi-image flash` becomes the next "
                     f"{profile.name} node, or --node NAME)" if stamp_later else node.cluster) or NO_CLUSTER),
        ("address", _address(result.manifest.get("network"), full=True)),
    ]
    if profile["wifi"]:
        rows.append(("wifi", f"{profile['wifi']['ssid']!r}, country {profile['wifi']['country']}"))
    rows += [
        ("login", _login(result)),
        ("Kubernetes", str(result.manifest.get("kubernetes_release") or profile["kubernetes_version"])),
    ]
    bundle = result.manifest.get("bundle")
    if bundle:
        rows.append(("offline", f"{len(bundle['packages'])} packages and {len(bundle['images'])} images on the card "
                                f"(+{human_size(bundle['size'])}, {bundle['platform']}"
                                + (f"; root grown by {human_size(bundle['grown_by'])} to hold them"
                                   if bundle.get("grown_by") else "") + "): first boot needs no network but the "
                                "cluster's"))
    if _holds_secrets(result.output):
        rows.append(("private", SECRETS))
    if result.bmap is not None:
        rows.append(("bmap", f"{result.bmap} (for bmaptool copy)"))
    changed = f"{len(result.changed)} of {len(result.ops) + 1} file operations changed something"
    rows.append(("files", changed + ("" if verbose else " (-v lists them)")))
    lines = [f"Built {_image(result.output)}"] + [f"  {name:11} {value}" for name, value in rows]
    if verbose:
        lines += ["    " + op.line() for op in result.changed]
    return lines


def fleet_table(results: list[BuildResult], failures: Sequence[Failure] = ()) -> list[str]:
    """Which image goes on which board: node, role, address, base, image and size, one line each; a node that was not
    built says so, and why, in the same table."""
    header = ("NODE", "ROLE", "ADDRESS", "BASE", "IMAGE", "SIZE")
    rows = [header] + [(r.node.name, r.node.role, _address(r.manifest.get("network"), full=False),
                        _base(r.manifest), str(r.output), _size(r.output))
                       for r in results]
    rows += [(f.member.node.name, f.member.node.role, f.member.node.address or "DHCP", _base_spec(f.member.base),
              "NOT BUILT", "-") for f in failures]
    reasons = [""] * (len(results) + 1) + [f"  {f.error}" for f in failures]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    title = (f"Built {len(results)} of {len(results) + len(failures)} images:" if failures
             else f"Built {len(results)} images:")
    return [title] + [
        ("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))).rstrip() + reason
        for row, reason in zip(rows, reasons, strict=True)]


def next_steps(results: list[BuildResult], cluster: Path | None, seeded: Sequence[Node] = ()) -> list[str]:
    """What the user does now: write each card the way its kind of image needs, power the boards on, make the x86
    nodes' seeds, and (for a cluster) get the admin kubeconfig."""
    outputs = [r.output for r in results if r.output is not None]
    if outputs and all(o.is_dir() for o in outputs):
        lines = ["Next: flash the board from Linux_for_Tegra with NVIDIA's tools, the tree above as its rootfs "
                 "(`sudo ./flash.sh BOARD mmcblk0p1`, or an SD card image: "
                 "`sudo ./tools/jetson-disk-image-creator.sh -o sd.img -b BOARD`)."]
    elif any(r.manifest.get("stamp_at_flash") for r in results):
        lines = _profile_image_steps(outputs, cluster)
    else:
        image = outputs[0] if len(outputs) == 1 else Path("IMAGE")
        bmap = results[0].bmap if len(outputs) == 1 else Path("IMAGE.bmap") if results[0].bmap else None
        which = "it to the node's" if len(outputs) == 1 else "each image to its node's"
        lines = [f"Next: write {which} SD card or USB SSD ({DEVICE} below: find it with `lsblk`; everything on it "
                 "is replaced), put it in the board and power it on:",
                 f"  pi-image flash {shlex.quote(str(image))} {DEVICE}"]
        lines += [f"  or: {command}" for command in write_commands(image, bmap)]
    for node in seeded:
        lines.append(f"  {node.name} is an x86 node: no card, a seed ISO for its stock Ubuntu: "
                     f"`pi-image seed-iso --cluster {cluster} --node {node.name}`")
    if not cluster:
        return lines
    if any(result.node.role == "control-plane" for result in results):
        lines.append("  The control plane's card initializes the cluster at its first boot (kubeadm init, flannel) "
                     "and then serves join tokens: workers powered on before it wait and join by themselves.")
        lines.append(f"  Then: `pi-image cluster kubeconfig {cluster}` fetches the admin kubeconfig; "
                     f"`pi-image status --cluster {cluster}` shows each node.")
    else:
        lines.append(f"  Workers join by themselves once the token endpoint runs: the one the control plane's card "
                     f"starts (`pi-image build --cluster {cluster} --node MASTER`), or `pi-image token-server "
                     f"--cluster {cluster}` where kubectl reaches the cluster.")
    return lines


def _profile_image_steps(outputs: list[Path], cluster: Path | None) -> list[str]:
    """A profile image becomes a node only when `pi-image flash` stamps it: no other way to write it is offered
    (bmaptool or dd would write a card with no identity, whose agent stops at first boot)."""
    image = shlex.quote(str(outputs[0])) if len(outputs) == 1 else "IMAGE"
    where = shlex.quote(str(cluster)) if cluster else "DIR"
    return [f"Next: write each card with `pi-image flash`, which makes it a node ({DEVICE} below: find it with "
            "`lsblk`; everything on it is replaced) — bmaptool or dd would write a card that is no node:",
            f"  pi-image flash {image} {DEVICE} --cluster {where}               # the next free node of the profile",
            f"  pi-image flash {image} {DEVICE} --cluster {where} --node NAME   # that inventory node (a reflash "
            "rebuilds it)"]


def write_commands(image: Path, bmap: Path | None = None) -> list[str]:
    """The documented ways to write a node's `image` to a card besides `pi-image flash`: bmaptool with the `.bmap`
    the build made for that exact file; else a compressed image through its decompressor into dd (conv=fsync: done
    means on the card), a raw one with bmaptool (--nobmap: never another build's bmap it might find) or dd."""
    name = shlex.quote(str(image))
    if bmap is not None:
        return [f"sudo bmaptool copy --bmap {shlex.quote(str(bmap))} {name} {DEVICE}"]
    dd = "bs=4M conv=fsync status=progress"
    decompress = DECOMPRESSORS.get(image.suffix)
    if decompress:
        return [f"{shlex.join(decompress)} {name} | sudo dd of={DEVICE} {dd}"]
    return [f"sudo bmaptool copy --nobmap {name} {DEVICE}", f"sudo dd if={name} of={DEVICE} {dd}"]


def _base(manifest: dict) -> str:
    """The base a manifest records: its catalog name or URL, else its file's name."""
    base = manifest.get("base") or {}
    return str(base.get("name") or base.get("path") or "-")


def _base_spec(spec: str | None) -> str:
    """A base as a manifest would record it: a file by its name, a catalog name or URL as it is."""
    if spec is None:
        return "-"
    return Path(spec).name if Path(spec).exists() else spec


def _address(network: object, full: bool) -> str:
    """A manifest's `network`: "dhcp" or the fixed settings; `full` adds interface, gateway and name servers."""
    if not isinstance(network, dict):
        return "DHCP"
    if not full:
        return str(network["address"])
    return (f"{network['address']} on {network['interface']}, gateway {network['gateway']}, "
            f"dns {', '.join(network['dns'])}")


def _login(result: BuildResult) -> str:
    profile = result.profile
    user = profile["user"] or result.target.default_user or "the admin user"
    keys = len(profile["ssh_authorized_keys"])
    ways = ([f"{keys} SSH key{'s' if keys != 1 else ''}"] if keys else []) + \
        (["password"] if profile["password_hash"] else [])
    return f"{user}: {' and '.join(ways)}" if ways else f"none: nobody can log in as {user} (--no-login)"


def _image(output: Path | None) -> str:
    if output is None:
        return "none"
    if output.is_dir():
        return f"{output} (directory tree)"
    return f"{output} ({_size(output)})"


def _size(output: Path | None) -> str:
    return human_size(output.stat().st_size) if output is not None and output.is_file() else "-"


def _holds_secrets(output: Path | None) -> bool:
    return output is not None and output.is_file() and output.stat().st_mode & 0o077 == 0


def flash_summary(result: FlashResult) -> list[str]:
    """What `pi-image flash` did: the card, the node it became, what it held before, bytes written and verified."""
    ctx, manifest = result.stamped, result.manifest or {}
    rate = result.written / result.seconds if result.seconds > 0 else 0
    share = f" ({result.written * 100 // max(result.usage.size, 1)}% of the image)"
    if ctx is not None:
        added = " (added to the inventory)" if result.added_node else ""
        node = (f"{ctx.node.name}: {ctx.node.role}, profile {ctx.profile.name}, generation "
                f"{ctx.node_config.generation}{added}; {_address(manifest.get('network'), full=True)}")
    elif manifest.get("node"):
        node = f"{manifest['node']} (as built)"
    else:
        node = "none: not a pi-image node image"
    rows = [("device", result.device.describe()), ("image", str(result.image)), ("node", node),
            ("cluster", manifest.get("cluster") or NO_CLUSTER), ("before", result.previous),
            ("written", f"{human_size(result.written)}{share} in {result.seconds:.1f} s ({human_size(rate)}/s)"
             + (f"; {human_size(result.zeroed)} of it zeros, zeroed without writing" if result.zeroed else "")),
            ("verified", f"{human_size(result.verified)} read back from the card" if result.verified
             else "no (--no-verify)")]
    lines = [f"Flashed {result.device.path}"] + [f"  {name:11} {value}" for name, value in rows]
    if manifest.get("cluster"):
        lines.append("Next: put the card in the board and power it on: it sets itself up and joins the cluster "
                     "(no keyboard, screen or ssh needed).")
    else:
        lines.append("Next: put the card in the board and power it on.")
    return lines
