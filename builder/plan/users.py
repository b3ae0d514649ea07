"""Accounts in an offline root filesystem: read /etc/passwd and /etc/group, and add a user the way useradd would."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..config import values
from ..errors import UserError
from ..run import run
from . import PlanView


@dataclass(frozen=True)
class Account:
    """One /etc/passwd entry."""

    name: str
    uid: int
    gid: int
    home: str


def _table(view: PlanView, path: str) -> list[list[str]]:
    text = view.read_text("root", path) or ""
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def accounts(view: PlanView) -> dict[str, Account]:
    """Users of the image by name."""
    return {f[0]: Account(f[0], int(f[2]), int(f[3]), f[5]) for f in _table(view, "/etc/passwd")
            if len(f) >= 7 and f[2].isdigit() and f[3].isdigit()}


def groups(view: PlanView) -> dict[str, int]:
    """Group ids of the image by name."""
    return {f[0]: int(f[2]) for f in _table(view, "/etc/group") if len(f) >= 3 and f[2].isdigit()}


def owner_ids(view: PlanView) -> tuple[dict[str, int], dict[str, int]]:
    """(user name -> uid, group name -> gid), for overlay owners."""
    return {n: a.uid for n, a in accounts(view).items()}, groups(view)


def hash_password(plain: str) -> str:
    """SHA-512 crypt(3) of `plain` ($6$: read by every supported target's libc, L4T R32's glibc 2.27 included),
    made by `openssl passwd` with the password on its stdin, never on a command line."""
    return run(["openssl", "passwd", "-6", "-stdin"], input=plain.encode() + b"\n").stdout.decode().strip()


def read_public_keys(paths: Iterable[Path]) -> list[str]:
    """The key lines of SSH public key files (.pub or authorized_keys format; comments and blank lines skipped)."""
    keys: list[str] = []
    for path in paths:
        if path.suffix != ".pub" and path.with_name(path.name + ".pub").is_file():
            raise UserError(f"--ssh-key {path}: this looks like a PRIVATE key; pass {path}.pub")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"--ssh-key {path}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
        if "PRIVATE KEY" in text:
            raise UserError(f"--ssh-key {path}: this is a PRIVATE key; pass the public one ({path}.pub)")
        found = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)
                 if line.strip() and not line.startswith("#")]
        if not found:
            raise UserError(f"--ssh-key {path}: the file holds no key")
        for number, key in found:
            problem = values.ssh_public_key(key)
            if problem:
                raise UserError(f"--ssh-key {path}:{number}: {problem}")
        keys.extend(key for _, key in found)
    return keys


def shadow_with_password(view: PlanView, name: str, password_hash: str | None, day: int) -> str | None:
    """/etc/shadow with `name`'s password set to `password_hash` (or locked with '!' when None) and its last
    change set to `day` (days since 1970: a 0 there forces a password change at the first login, which key-only
    SSH can never complete); None if the user has no shadow entry."""
    lines = (view.read_text("root", "/etc/shadow") or "").splitlines()
    for index, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == name and len(fields) >= 3:
            fields[1] = password_hash or "!" + fields[1].lstrip("!")  # locked as `passwd -l` does
            fields[2] = str(day)
            lines[index] = ":".join(fields)
            return "\n".join(lines) + "\n"
    return None


def add_user_lines(view: PlanView, name: str, password_hash: str | None, day: int,
                   admin_groups: tuple[str, ...]) -> dict[str, str]:
    """New texts of passwd, shadow, group (and gshadow) with `name` added as an admin user (uid >= 1000), a member
    of each of `admin_groups` the image has."""
    users, gids = accounts(view), groups(view)
    uid = next(i for i in range(1000, 60000) if i not in {a.uid for a in users.values()} and i not in gids.values())
    files = {}
    passwd = view.read_text("root", "/etc/passwd") or ""
    files["/etc/passwd"] = passwd + f"{name}:x:{uid}:{uid}:{name}:/home/{name}:/bin/bash\n"
    shadow = view.read_text("root", "/etc/shadow") or ""
    files["/etc/shadow"] = shadow + f"{name}:{password_hash or '!'}:{day}:0:99999:7:::\n"
    group_lines = []
    for line in (view.read_text("root", "/etc/group") or "").splitlines():
        fields = line.split(":")
        if len(fields) == 4 and fields[0] in admin_groups:
            members = [m for m in fields[3].split(",") if m]
            fields[3] = ",".join(members + [name])
        group_lines.append(":".join(fields))
    files["/etc/group"] = "\n".join(group_lines + [f"{name}:x:{uid}:"]) + "\n"
    gshadow = view.read_text("root", "/etc/gshadow")
    if gshadow is not None:
        files["/etc/gshadow"] = gshadow + f"{name}:!::\n"
    return files
