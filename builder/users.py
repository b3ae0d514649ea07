"""Accounts in an offline root filesystem: read /etc/passwd and /etc/group, and add a user the way useradd would."""

from __future__ import annotations

from dataclasses import dataclass

from .plan import PlanView

# Groups an admin user of a Debian-family system gets (those missing in the image are skipped).
ADMIN_GROUPS = ("adm", "sudo", "video", "audio", "plugdev", "netdev", "dialout", "gpio", "i2c", "render")


@dataclass(frozen=True)
class Account:
    """One /etc/passwd entry."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str


def _table(view: PlanView, path: str) -> list[list[str]]:
    text = view.read_text("root", path) or ""
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def accounts(view: PlanView) -> dict[str, Account]:
    """Users of the image by name."""
    return {f[0]: Account(f[0], int(f[2]), int(f[3]), f[5], f[6]) for f in _table(view, "/etc/passwd")
            if len(f) >= 7 and f[2].isdigit() and f[3].isdigit()}


def groups(view: PlanView) -> dict[str, int]:
    """Group ids of the image by name."""
    return {f[0]: int(f[2]) for f in _table(view, "/etc/group") if len(f) >= 3 and f[2].isdigit()}


def owner_ids(view: PlanView) -> tuple[dict[str, int], dict[str, int]]:
    """(user name -> uid, group name -> gid), for overlay owners."""
    return {n: a.uid for n, a in accounts(view).items()}, groups(view)


def add_user_lines(view: PlanView, name: str, password_hash: str | None) -> dict[str, str]:
    """New texts of passwd, shadow, group (and gshadow) with `name` added as an admin user (uid >= 1000)."""
    users, gids = accounts(view), groups(view)
    uid = next(i for i in range(1000, 60000) if i not in {a.uid for a in users.values()} and i not in gids.values())
    files = {}
    passwd = view.read_text("root", "/etc/passwd") or ""
    files["/etc/passwd"] = passwd + f"{name}:x:{uid}:{uid}:{name}:/home/{name}:/bin/bash\n"
    shadow = view.read_text("root", "/etc/shadow") or ""
    files["/etc/shadow"] = shadow + f"{name}:{password_hash or '!'}:0:0:99999:7:::\n"
    group_lines = []
    for line in (view.read_text("root", "/etc/group") or "").splitlines():
        fields = line.split(":")
        if len(fields) == 4 and fields[0] in ADMIN_GROUPS:
            members = [m for m in fields[3].split(",") if m]
            fields[3] = ",".join(members + [name])
        group_lines.append(":".join(fields))
    files["/etc/group"] = "\n".join(group_lines + [f"{name}:x:{uid}:"]) + "\n"
    gshadow = view.read_text("root", "/etc/gshadow")
    if gshadow is not None:
        files["/etc/gshadow"] = gshadow + f"{name}:!::\n"
    return files
