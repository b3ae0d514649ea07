"""Files from a base are data, never a path to follow (issue 30).

Generated: every file a build reads from a base (found by recording the reads of a real plan on each sample) is made
hostile five ways with the real tools (debugfs -w on the ext4 root, mtools on the FAT boot partition, plain os calls
on a directory target): a symlink to a secret inside the image, a symlink that climbs out of it, a directory, a file
larger than any config file, and NUL bytes. Each build either refuses in one line (naming the file, when it is
one the build edits in place), or plans no write that carries the secret or the bytes after the NULs (a step may
skip what is not a regular file: masking replaces a linked unit, it does not read it). Then the two leaks that were
found, end to end through the CLI, and the modes an edit keeps, read back with debugfs.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from readback import KUBE_KEY, TEST_SSH_KEY, Card, filesystems, tool

import builder.image.fs as image_fs
from builder.build import BuildRequest, prepare
from builder.errors import UserError
from builder.image.fs import Filesystem
from builder.plan.users import read_public_keys

SAMPLES = {  # sample -> a profile for it (settings that make every step read what it can)
    ("ubuntu-raspi", "24.04"): "worker-8g",
    ("kali-raspi", "rolling"): "kali-worker",
    ("raspios", "bookworm"): "worker-8g",
    ("raspios", "trixie"): "worker-8g",
    ("l4t-rootfs", "r32.6.1"): "jetson-l4t",
    ("jetson-sd", "r32.6.1"): "jetson-gpu",
}
SETS = {"locale": "en_GB.UTF-8", "wifi": {"ssid": "homelab", "country": "GB"}}
KINDS = ("symlink-inside", "symlink-out", "directory", "huge", "nul")
SECRET_PATH = "/pi-image-test-secret"
MARK = b"stolen-7f3a9c"
SECRET = b"root:$6$" + MARK + b":19000:0:99999:7:::\n"
HOSTILE = b"edited after the NULs?"
READ_LIMIT = 256 << 10  # MAX_READ_BYTES for these tests, so that a "huge" file costs 300 KiB, not 64 MiB


def _request(base: Path, profile: str) -> BuildRequest:
    return BuildRequest(profile=profile, base=str(base), kube_key=KUBE_KEY, dry_run=True, sets=dict(SETS),
                        ssh_keys=read_public_keys([TEST_SSH_KEY]))


@pytest.fixture
def recorded_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[tuple[str, str], bool]]:
    """(filesystem kind, path) -> True if every read of it followed a final link, for reads made under it."""
    reads: dict[tuple[str, str], bool] = {}
    original = Filesystem.read

    def recording(self: Filesystem, path: str, follow: bool = True) -> bytes:
        key = ("boot" if "fat" in self.description else "root", path)
        reads[key] = reads.get(key, True) and follow
        return original(self, path, follow)

    monkeypatch.setattr(Filesystem, "read", recording)
    yield reads


def _mutate_ext4(image: Path, path: str, kind: str, scratch: Path) -> None:
    """Make `path` in the image's ext4 root hostile with debugfs -w (the secret planted first)."""
    spec = Card(image).root.spec
    secret = scratch / "secret"
    secret.write_bytes(SECRET)
    parents = [path[:i] for i in range(1, len(path)) if path[i] == "/"]  # mkdir of one that exists fails harmlessly
    lines = [f'write "{secret}" "{SECRET_PATH}"', f'sif "{SECRET_PATH}" mode 0100600',
             *(f'mkdir "{parent}"' for parent in parents), f'rm "{path}"']
    if kind == "symlink-inside":
        lines.append(f'symlink "{path}" "{SECRET_PATH}"')
    elif kind == "symlink-out":
        lines.append(f'symlink "{path}" "{"../" * 12}{SECRET_PATH.lstrip("/")}"')
    elif kind == "directory":
        lines.append(f'mkdir "{path}"')
    else:
        host = scratch / "content"
        host.write_bytes(_hostile_content(kind))
        lines.append(f'write "{host}" "{path}"')
    script = scratch / "mutate.debugfs"
    script.write_text("\n".join(lines) + "\n")
    tool("debugfs", "-w", "-f", script, spec)
    made = Card(image).root.stat(path)
    assert made is not None and made.kind == {"symlink-inside": "link", "symlink-out": "link", "directory": "dir"}.get(
        kind, "file"), f"debugfs did not make {path} a {kind}: {made}"


def _mutate_fat(image: Path, path: str, kind: str, scratch: Path) -> None:
    """Make `path` on the image's FAT boot partition hostile with mtools (FAT has no symlinks)."""
    boot = Card(image).boot
    assert boot is not None
    tool("mdel", "-i", boot.spec, f"::{path}", check=False)
    if kind == "directory":
        tool("mmd", "-i", boot.spec, f"::{path}")
        return
    host = scratch / "content"
    host.write_bytes(_hostile_content(kind))
    tool("mcopy", "-i", boot.spec, host, f"::{path}")


def _mutate_tree(root: Path, path: str, kind: str) -> None:
    """Make `path` in a directory target hostile with plain os calls."""
    (root / SECRET_PATH.lstrip("/")).write_bytes(SECRET)
    host = root / path.lstrip("/")
    if host.is_dir() and not host.is_symlink():
        shutil.rmtree(host)
    else:
        host.unlink(missing_ok=True)
    host.parent.mkdir(parents=True, exist_ok=True)
    if kind == "symlink-inside":
        host.symlink_to(SECRET_PATH)
    elif kind == "symlink-out":
        host.symlink_to("../" * 12 + SECRET_PATH.lstrip("/"))
    elif kind == "directory":
        host.mkdir()
    else:
        host.write_bytes(_hostile_content(kind))


def _hostile_content(kind: str) -> bytes:
    if kind == "huge":
        return (b"# " + b"x" * 77 + b"\n") * (READ_LIMIT // 80 + 64)
    return b"# a vendor file\n\0\0\0" + HOSTILE + b"\n\0"


def _copy(source: Path, dest: Path) -> Path:
    if source.is_dir():
        shutil.copytree(source, dest, symlinks=True)
    else:
        subprocess.run(["cp", "--sparse=always", str(source), str(dest)], check=True)
    return dest


@pytest.mark.parametrize("sample", list(SAMPLES), ids=[f"{t}-{r}" for t, r in SAMPLES])
def test_every_file_a_build_reads_made_hostile_is_refused_in_one_line_or_never_leaks(
        sample: tuple[str, str], sample_image, recorded_reads, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    target, release = sample
    profile = SAMPLES[sample]
    source = sample_image(target, release)
    prepare(_request(source, profile))
    reads = dict(recorded_reads)
    assert len(reads) >= 7, reads  # the plan reads fstab, hosts, passwd, group, os-release, cmdline, ...
    monkeypatch.setattr(image_fs, "MAX_READ_BYTES", READ_LIMIT)
    failures = []
    cases = 0
    for (fs, path), follows in sorted(reads.items()):
        if path == SECRET_PATH:
            continue
        for kind in KINDS:
            if fs == "boot" and kind.startswith("symlink"):
                continue  # FAT has no symlinks
            cases += 1
            scratch = tmp_path / f"case-{cases}"
            scratch.mkdir()
            base = _copy(source, scratch / source.name)
            if base.is_dir():
                _mutate_tree(base, path, kind)
            elif fs == "boot":
                _mutate_fat(base, path, kind, scratch)
            else:
                _mutate_ext4(base, path, kind, scratch)
            problem = _judge(base, profile, path, follows)
            if problem:
                failures.append(f"{fs}:{path} as {kind}: {problem}")
            shutil.rmtree(scratch)
    assert cases >= 30
    assert not failures, "\n".join(failures)


def _judge(base: Path, profile: str, path: str, follows: bool) -> str | None:
    """None if the build refused in one line (naming `path` when it is a file the build edits), or planned nothing
    that carries the secret or the hostile bytes."""
    try:
        ctx = prepare(_request(base, profile))
    except UserError as err:
        text = str(err)
        if "\n" in text or len(text) > 600:
            return f"refused in more than one line: {text!r}"
        if not follows and path not in text:
            return f"refused without naming {path}: {text}"
        return None
    except Exception as err:  # noqa: BLE001 - any other exception is a traceback for the user
        return f"{type(err).__name__}: {err}"
    carried = [op.path for op in ctx.plan.ops if op.content and (MARK in op.content or HOSTILE in op.content)]
    return f"what the base holds there would be written into {carried}" if carried else None


# --- end to end: the two leaks that were found, and the modes an edit keeps --------------------------------------

def _hostile_ubuntu(sample_copy, scratch: Path, debugfs_lines: list[str]) -> Path:
    base = sample_copy("ubuntu-raspi")
    script = scratch / "mutate.debugfs"
    script.write_text("\n".join(debugfs_lines) + "\n")
    tool("debugfs", "-w", "-f", script, Card(base).root.spec)
    return base


@pytest.mark.parametrize("secret", ["/etc/shadow", "/etc/pi-image/node.json"])
def test_a_base_whose_fstab_links_to_a_secret_is_refused_and_leaves_nothing(secret: str, cli, sample_copy,
                                                                            tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    planted.write_bytes(SECRET)
    lines = ['mkdir /etc/pi-image', f'write "{planted}" "{secret}"', f'sif "{secret}" mode 0100600']
    base = _hostile_ubuntu(sample_copy, tmp_path, [f'rm "{secret}"', *lines, 'rm /etc/fstab',
                                                   f'symlink /etc/fstab "{secret}"'])
    out = tmp_path / "out"
    out.mkdir()
    proc = cli("build", "--profile", "worker-8g", "--base", base, "--output", out / "node.img",
               "--kube-key", KUBE_KEY)
    assert proc.returncode == 1, proc.stderr
    lines_out = proc.stderr.strip().splitlines()
    assert len(lines_out) == 1 and "/etc/fstab is a symlink" in lines_out[0] and secret in lines_out[0], proc.stderr
    assert "Traceback" not in proc.stderr and MARK.decode() not in proc.stdout + proc.stderr
    assert list(out.iterdir()) == []


def test_files_edited_in_place_keep_their_mode_and_owner_and_a_secret_never_widens(cli, sample_copy,
                                                                                  tmp_path: Path) -> None:
    """The base's /etc/hosts is 0600 and its fstab 0640 root:adm (gid 4): after the build they still are (read back
    with debugfs); a node.json the base holds 0400 is replaced by the node's 0400, never 0600 or wider."""
    planted = tmp_path / "old-node.json"
    planted.write_text("{}\n")
    base = _hostile_ubuntu(sample_copy, tmp_path, [
        'sif /etc/hosts mode 0100600', 'sif /etc/fstab mode 0100640', 'sif /etc/fstab gid 4',
        'mkdir /etc/pi-image', f'write "{planted}" /etc/pi-image/node.json',
        'sif /etc/pi-image/node.json mode 0100400'])
    output = tmp_path / "node.img"
    proc = cli("build", "--profile", "worker-8g", "--base", base, "--output", output, "--kube-key", KUBE_KEY)
    assert proc.returncode == 0, proc.stderr
    root = filesystems(output)["root"]
    hosts, fstab, node = root.stat("/etc/hosts"), root.stat("/etc/fstab"), root.stat("/etc/pi-image/node.json")
    assert hosts is not None and (hosts.mode, hosts.uid, hosts.gid) == (0o600, 0, 0)
    assert fstab is not None and (fstab.mode, fstab.uid, fstab.gid) == (0o640, 0, 4)
    assert node is not None and node.mode == 0o400
    assert b"127.0.1.1" in (root.read("/etc/hosts") or b"")  # edited, not skipped
