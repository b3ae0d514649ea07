"""`pi-image enroll`: a machine that is already installed becomes a worker of the cluster, without a reflash.

    reference tree of the target (builder.samples.catalog.REFERENCE_TREES) --prepare()--> the node's plan, as for
    a seed ISO --> the ops that do not change who the machine is --> a JSON payload (gzip + base64) --> enroll-NODE.sh:
    a POSIX sh header that runs firstboot/enroll.py (embedded verbatim) with python3, then the payload

The machine keeps its own identity: hostname and hosts, time zone, locale and keyboard, accounts and logins,
network (Wi-Fi) and cloud-init seed are its own; the steps that would write them are left out (MACHINE_OWN_STEPS).
Everything else is the plan a card or a seed carries: the agent, node.json with the credential, sysctls, modules,
the runtime's config, the kube repository or release, the units. firstboot/enroll.py applies it on the machine with
a journal and backups (`--undo` puts every file back), then starts the agent, which joins as on a card.

The file holds the node's credential (node.json): it is written 0600, atomically.
"""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firstboot.enroll import FORMAT, PAYLOAD_MARKER, payload_opener

from ..cluster import load_cluster
from ..config.profiles import load_profile
from ..errors import UserError
from ..plan import FileOp, Plan
from ..plan.steps import BuildContext, accounts, identity, regional, wifi
from ..plan.steps.firstboot import AGENT_DIR, NODE_CONFIG, SOURCE
from ..samples.catalog import REFERENCE_TREES
from ..targets import targets_of
from . import BuildRequest
from .seed_iso import (
    SEED_OVERLAY,
    WANTS_LINK,
    check_node_output,
    final_ops,
    owner_names,
    planned_on_reference,
    publish_node_file,
)

# The steps whose ops would change who an installed machine is: it keeps its own hostname and hosts, time zone,
# locale and keyboard, accounts and logins, Wi-Fi and cloud-init seed.
MACHINE_OWN_STEPS = (identity.STEP, regional.STEP, wifi.STEP, accounts.STEP, "overlay:locale-gen",
                     "overlay:netplan-wifi", "overlay:networkmanager-wifi", f"overlay:{SEED_OVERLAY}")
PROGRAM = SOURCE / "enroll.py"  # the device side, embedded verbatim
PROGRAM_END = "PI_IMAGE_ENROLL_PROGRAM"  # the here-document that feeds it to python3 ends here
PAYLOAD_WIDTH = 76  # base64 line length


@dataclass(kw_only=True)
class EnrollRequest:
    """What the user asked for (the CLI's options)."""

    profile: str | None  # default: the node's profile in the inventory
    cluster: Path
    node: str
    output: Path | None = None  # default: enroll-NODE.sh
    sets: dict[str, Any] = field(default_factory=dict)
    overlays: list[str] = field(default_factory=list)
    kube_key: Path | None = None
    force: bool = False


@dataclass(kw_only=True)
class EnrollResult:
    """What enroll() wrote."""

    output: Path
    node: str
    role: str
    target: str
    os_ids: list[str]  # the os-release IDs the file accepts
    size: int  # of the file, in bytes
    ops: list[dict[str, Any]]  # the payload's ops: what the file changes on the machine (no content)
    units: list[str]  # started once the files are in place


def enroll(request: EnrollRequest) -> EnrollResult:
    """Plan the node against its target's reference tree, keep the ops that leave the machine's identity alone,
    and write the self-contained enroll script atomically (0600); the node's new generation is recorded in the
    inventory once the file is complete, as for a card."""
    output = request.output or Path(f"enroll-{request.node}.sh")
    check_node_output(output, request.force, "enroll-node.sh")
    node = load_cluster(request.cluster).node(request.node)
    if node.role == "control-plane":
        raise UserError(f"node {node.name} is a control plane: a control plane is a card (`pi-image build --cluster "
                        f"{request.cluster} --node {node.name}`); enroll makes workers of installed machines")
    build = BuildRequest(profile=request.profile, cluster=request.cluster, node=request.node, sets=request.sets,
                         overlays=list(request.overlays), kube_key=request.kube_key, no_login=True)
    with planned_on_reference(_reference_target(request.profile or node.profile, request.sets), build) as ctx:
        payload = enroll_payload(ctx, request.cluster)  # reads the tree's passwd and group (owner names)
    script = enroll_script(payload)
    publish_node_file(output, ctx, request.cluster, lambda handle: handle.write(script))
    ops = [{key: value for key, value in op.items() if key not in ("content", "text")} for op in payload["ops"]]
    return EnrollResult(output=output, node=ctx.node.name, role=ctx.node.role, target=ctx.target.name,
                        os_ids=payload["os_ids"], size=len(script), ops=ops, units=payload["units"])


def _reference_target(profile_name: str, sets: dict[str, Any]) -> str:
    """The target the profile is for that has a reference tree (an installed system pi-image can plan against)."""
    profile = load_profile(profile_name, sets)
    found = [name for name in targets_of(profile["target"]) if name in REFERENCE_TREES] if profile["target"] else []
    if not found:
        raise UserError(f"profile '{profile.name}' is for {profile['target'] or 'any target'}: enroll sets up an "
                        f"installed {' or '.join(REFERENCE_TREES)} machine: pick a profile for one of those "
                        "(x86-worker), or build a card with `pi-image build` for a board")
    return found[0]


def enroll_payload(ctx: BuildContext, cluster_dir: Path) -> dict[str, Any]:
    """What firstboot/enroll.py applies: the node, the OS family it is for, the plan's final ops but those of
    MACHINE_OWN_STEPS, each with its content (text, else base64), mode and owner names, and the units it enables."""
    ops = final_ops(Plan(ops=[op for op in ctx.plan.ops if op.step not in MACHINE_OWN_STEPS]))
    owner = owner_names(ctx)
    units = [found["unit"] for found in map(WANTS_LINK.match, (op.path for op in ops if op.action == "symlink"))
             if found]
    return {"format": FORMAT, "node": ctx.node.name, "cluster": Path(cluster_dir).name,
            "cluster_dir": str(cluster_dir), "target": ctx.target.name, "os_name": ctx.target.os.pretty_name,
            "os_ids": [ctx.target.os.id, *ctx.target.os.id_like], "agent_dir": AGENT_DIR, "node_config": NODE_CONFIG,
            "ops": [_payload_op(op, owner) for op in ops], "units": list(dict.fromkeys(units))}


def _payload_op(op: FileOp, owner: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"action": op.action, "path": op.path, "step": op.step}
    if op.content is not None:  # text as it is (it compresses three times better than its base64)
        try:
            entry.update(text=op.content.decode("utf-8"), size=len(op.content))
        except UnicodeDecodeError:
            entry.update(content=base64.b64encode(op.content).decode(), size=len(op.content))
    if op.target is not None:
        entry["target"] = op.target
    if op.mode is not None:
        entry.update(mode=op.mode, owner=owner(op.uid, op.gid))
    return entry


def enroll_script(payload: dict[str, Any]) -> bytes:
    """The self-contained file: a POSIX sh header saying what it is, which runs the embedded device program with
    python3, and the payload (gzip + base64) that the program reads back from the file."""
    program = PROGRAM.read_text(encoding="utf-8")
    if PROGRAM_END in program.splitlines():
        raise AssertionError(f"{PROGRAM} holds the line {PROGRAM_END}, which ends its here-document")
    name = f"enroll-{payload['node']}.sh"
    packed = base64.encodebytes(gzip.compress(json.dumps(payload, sort_keys=True).encode(), mtime=0)).decode()
    header = f"""#!/bin/sh
# pi-image enroll: makes this machine node {payload['node']} of cluster {_comment(payload['cluster'])} without a
# reflash. For an installed {' / '.join(payload['os_ids'])} system with systemd ({payload['target']} plan).
# It holds the node's credential (/etc/pi-image/node.json): keep it private, delete it once the node has joined.
#
#   sudo sh {name} --dry-run   lists every change it would make, and makes none
#   sudo sh {name}             applies them (each replaced file backed up first), then starts the agent
#   sudo sh {name} --undo      puts every file back byte for byte and stops the agent
#
# Hostname, time zone, locale, accounts and network stay the machine's own. An interrupted run resumes when run
# again. The journal and backups are in /var/lib/pi-image/enroll.
command -v python3 >/dev/null 2>&1 || {{
    echo "{name}: python3 is needed (the node's agent is Python): install it and run this again" >&2; exit 1; }}
exec python3 - "$0" "$@" <<'{PROGRAM_END}'
"""
    return (header + program + (PROGRAM_END + "\n") + payload_opener() + "\n" + packed
            + PAYLOAD_MARKER + "\n").encode()


def _comment(text: str) -> str:
    """`text` fit for a shell comment: one line."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)
