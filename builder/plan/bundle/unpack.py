"""The bundle's .debs unpacked on the build host by the host's own dpkg, so that a node's first boot only configures
them (`dpkg --configure -a`): the node's dpkg then runs their maintainer scripts, processes their triggers and
settles their conffiles, exactly as after a `dpkg --unpack` on the node itself.

    fakeroot dpkg --root=STAGING --force-script-chrootless --no-triggers [--force-architecture] --unpack DEBS

STAGING holds a copy of the image's dpkg database (/var/lib/dpkg) and its relative top-level links to directories (a
merged /usr: bin -> usr/bin), nothing else: an absolute link would lead dpkg out of STAGING into the host, so such a
path is left to the image writer, which resolves it inside the image. No maintainer script runs on the host:
--unpack of a package that is not installed runs only its preinst, so a set with a preinst, or with a package the
image already has, is not unpacked here (the node installs those .debs as before), and --no-triggers leaves every
trigger pending for the node. fakeroot lets dpkg set owners without root; the owners written into the image are the
data.tar's own (`dpkg-deb --fsys-tarfile`). Without dpkg and fakeroot on the host the .debs go on the card as they
are. An image built so, stamped later (`pi-image flash`), is recognised by its bundle.json: nothing is unpacked again.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ...run import run
from .. import PlanView
from .apt import status_stanzas

DPKG_DIR = "/var/lib/dpkg"
# what dpkg keeps for itself, or what this run changed for this host only: never copied into the image
_NOT_COPIED = {"arch", "status-old", "available-old", "diversions-old", "statoverride-old", "lock", "lock-frontend",
               "triggers/Lock"}
DATABASE_LIMIT = 256 << 20  # bytes of an image's dpkg database read into STAGING (a real one: tens of MiB)


@dataclass
class Unpacked:
    """The image's changes: directories to make and files to write ((mode, uid, gid)), links to make."""

    directories: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    files: dict[str, tuple[bytes, int, int, int]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Bytes of the files written."""
        return sum(len(content) for content, *_ in self.files.values())


def already_unpacked(view: PlanView, packages: list[tuple[str, str]]) -> bool:
    """True if the image's dpkg has each (package, version) unpacked or further (an image this builder unpacked them
    into, being stamped)."""
    entries = {(fields.get("Package"), fields.get("Version")): fields.get("Status", "")
               for fields in status_stanzas(view.read_text("root", f"{DPKG_DIR}/status") or "")}
    return bool(packages) and all(entries.get(wanted, "").split()[-1:] in (["unpacked"], ["half-configured"],
                                                                           ["installed"]) for wanted in packages)


def why_not(view: PlanView, debs: dict[str, Path]) -> str | None:
    """Why these .debs ({package: path}) cannot be unpacked on this host into the image seen through `view`, or
    None."""
    missing = [tool for tool in ("dpkg", "dpkg-deb", "fakeroot") if shutil.which(tool) is None]
    if missing:
        return f"this host has no {', '.join(missing)} (apt install dpkg fakeroot)"
    listed = {fields.get("Package") for fields in status_stanzas(view.read_text("root", f"{DPKG_DIR}/status") or "")}
    there = [package for package in debs if package in listed]
    if there:
        return f"the image has {there[0]} already (a reinstall would run its scripts)"
    size = sum(_files_below(view, DPKG_DIR).values())
    if size > DATABASE_LIMIT:
        return f"the image's dpkg database ({DPKG_DIR}) holds {size >> 20} MiB, more than {DATABASE_LIMIT >> 20} MiB"
    with_preinst = [path.name for path in debs.values() if "preinst" in _control_members(path)]
    if with_preinst:
        return f"{with_preinst[0]} has a preinst, which only the node may run"
    return None


def unpack(view: PlanView, debs: list[Path], arch: str, users: dict[str, int], groups: dict[str, int]) -> Unpacked:
    """`dpkg --unpack` of `debs` against the image's dpkg database (why_not() must have said None); a ToolError if
    dpkg refuses them (a file of another package, a conflict)."""
    with tempfile.TemporaryDirectory(prefix="pi-image-unpack-") as scratch:
        staging = Path(scratch) / "root"
        original = _stage(view, staging)
        command = ["fakeroot", "dpkg", f"--root={staging}", "--force-script-chrootless", "--no-triggers",
                   "--log=/dev/null", "--unpack"]
        if arch not in (run(["dpkg", "--print-architecture"]).stdout.decode().strip(), "all"):
            command.insert(-1, "--force-architecture")
        run([*command, *map(str, debs)])
        owners = {}
        for deb in debs:
            owners.update(_owners(deb, users, groups))
        return _changes(view, staging, original, owners)


def _stage(view: PlanView, staging: Path) -> dict[str, bytes]:
    """Copy the image's dpkg database and top-level links into `staging`; the database's files by relative path."""
    original: dict[str, bytes] = {}
    files = _files_below(view, DPKG_DIR)
    # one read of the whole database (an Ubuntu image's info/ holds thousands of files), not one per file
    view.filesystem("root").prefetch({f"{DPKG_DIR}/{relative}": size for relative, size in files.items()})
    for relative in files:
        content = view.read_bytes("root", f"{DPKG_DIR}/{relative}") or b""
        original[relative] = content
        target = staging / DPKG_DIR.lstrip("/") / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    (staging / DPKG_DIR.lstrip("/") / "updates").mkdir(parents=True, exist_ok=True)
    for name in view.listdir("root", "/"):
        entry = view.lstat("root", f"/{name}")
        if entry is None or not entry.is_symlink:
            continue
        link = view.readlink("root", f"/{name}")
        pointed = view.stat("root", f"/{name}")
        # a relative link into the root only (an absolute one would lead dpkg out of STAGING, into this host), to a
        # directory, which is made: dpkg keeps a link to a directory, and replaces a dangling one
        if not link.startswith("/") and ".." not in link.split("/") and pointed is not None and pointed.is_dir:
            (staging / link).mkdir(parents=True, exist_ok=True)
            (staging / name).symlink_to(link)
    return original


def _files_below(view: PlanView, directory: str, prefix: str = "") -> dict[str, int]:
    """{path relative to `directory`: size} of the regular files below it."""
    found = {}
    for name in sorted(view.listdir("root", directory)):
        entry = view.lstat("root", f"{directory}/{name}")
        if entry is None:
            continue
        if entry.is_dir:
            found.update(_files_below(view, f"{directory}/{name}", f"{prefix}{name}/"))
        elif entry.is_file:
            found[prefix + name] = entry.size
    return found


def _changes(view: PlanView, staging: Path, original: dict[str, bytes], owners: dict[str, tuple[int, int, int]]
             ) -> Unpacked:
    """What dpkg added in `staging`, as the image's changes: the packages' entries (their data.tar's modes and
    owners; a conffile as dpkg leaves it, NAME.dpkg-new) and the database's new or changed files."""
    changes = Unpacked()
    database = staging / DPKG_DIR.lstrip("/")
    for top, directories, names in os.walk(staging):
        here = Path(top)
        if here == database or database in here.parents:
            for name in names:
                inside = str((here / name).relative_to(database))
                content = (here / name).read_bytes()
                if inside not in _NOT_COPIED and not inside.startswith("updates/") and original.get(inside) != content:
                    # as dpkg made it: maintainer scripts executable, root's
                    changes.files[f"{DPKG_DIR}/{inside}"] = (content, stat.S_IMODE((here / name).stat().st_mode), 0, 0)
            continue
        relative = "" if here == staging else "/" + str(here.relative_to(staging))
        for name in sorted(directories + names):
            path = f"{relative}/{name}"
            entry = (here / name).lstat()
            if here == staging and stat.S_ISLNK(entry.st_mode):
                continue  # the image's own top-level links, staged
            mode, uid, gid = owners.get(path.removesuffix(".dpkg-new"), (stat.S_IMODE(entry.st_mode), 0, 0))
            if stat.S_ISLNK(entry.st_mode):
                changes.links[path] = os.readlink(here / name)
            elif stat.S_ISDIR(entry.st_mode):
                if view.lstat("root", path) is None:
                    changes.directories[path] = (mode, uid, gid)
            else:
                changes.files[path] = ((here / name).read_bytes(), mode, uid, gid)
    return changes


def _control_members(deb: Path) -> set[str]:
    """The names in the .deb's control archive (postinst, conffiles, ...)."""
    stream = run(["dpkg-deb", "--ctrl-tarfile", str(deb)]).stdout
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r|") as archive:
        return {member.name.removeprefix("./") for member in archive}


def _owners(deb: Path, users: dict[str, int], groups: dict[str, int]) -> dict[str, tuple[int, int, int]]:
    """{path: (mode, uid, gid)} of the .deb's data.tar entries: owners by name through the image's accounts, else the
    tar's numbers."""
    stream = run(["dpkg-deb", "--fsys-tarfile", str(deb)]).stdout
    owners = {}
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r|") as archive:
        for member in archive:
            path = "/" + member.name.removeprefix("./").rstrip("/")
            owners[path] = (member.mode & 0o7777, users.get(member.uname, member.uid),
                            groups.get(member.gname, member.gid))
    return owners
