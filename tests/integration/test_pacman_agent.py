"""The agent's pacman installer (firstboot/pacman.py) against the REAL pacman, on a sandbox root with a local file://
repository made by repo-add from tiny packages built with bsdtar: what is missing honours provides, an install pulls
its dependencies, a held package stays put through `pacman -Syu`, a held database lock is waited for and one a power
cut left is removed, and an unreachable mirror is a failure to retry. Results are read back with pacman -Q and
pacman-conf, not with the code under test."""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path

import pytest
from readback import tool

from builder.samples.catalog import REFERENCE_TREES
from builder.samples.tree import stage_tree
from firstboot.commands import CommandRunner
from firstboot.errors import SetupFailed
from firstboot.pacman import DB_LOCK, Pacman, with_ignored

TOOLS = {name: shutil.which(name) for name in ("pacman", "repo-add", "bsdtar", "pacman-conf")}
pytestmark = pytest.mark.skipif(not all(TOOLS.values()), reason="the real pacman, repo-add, pacman-conf and bsdtar "
                                "are not installed (./dev test installs pacman-package-manager, makepkg and "
                                "libarchive-tools)")
REPO_SECTION = "\n[test]\nSigLevel = Never\nServer = file://{}\n"


class World:
    """A sandbox Arch root (the reference tree, its pacman.conf pointing at a local repository only) and the
    repository's packages."""

    def __init__(self, base: Path):
        self.root, self.repo, self.build = base / "root", base / "repo", base / "build"
        stage_tree(REFERENCE_TREES["arch"], {}, self.root)
        for directory in (self.repo, self.build, self.root / "var/log"):
            directory.mkdir(parents=True, exist_ok=True)
        config = self.root / "etc/pacman.conf"
        stock = config.read_text().replace("SigLevel    = Required DatabaseOptional", "SigLevel = Never")
        stock = stock.replace("DownloadUser = alpm\n", "")  # pacman 7's; Debian's pacman 6 warns about it
        config.write_text(stock.split("\n#[core-testing]")[0] + REPO_SECTION.format(self.repo))
        self.bin = base / "bin"  # what the agent finds on PATH: pacman itself, or pacman under fakeroot
        self.bin.mkdir()
        if os.geteuid() == 0:
            (self.bin / "pacman").symlink_to(TOOLS["pacman"])
        else:
            (self.bin / "pacman").write_text(f'#!/bin/sh\nexec fakeroot {TOOLS["pacman"]} "$@"\n')
            (self.bin / "pacman").chmod(0o755)
        self.commands = CommandRunner(env={"PATH": f"{self.bin}:/usr/bin:/bin", "LC_ALL": "C"})

    def package(self, name: str, version: str, *, depends: tuple[str, ...] = (), provides: tuple[str, ...] = ()) \
            -> Path:
        """A package with one executable, made by bsdtar with its .PKGINFO (not in the repository yet)."""
        tree = self.build / f"{name}-{version}"
        (tree / "usr/bin").mkdir(parents=True)
        (tree / "usr/bin" / name).write_text(f"#!/bin/sh\necho {name} {version}\n")
        (tree / "usr/bin" / name).chmod(0o755)
        info = [f"pkgname = {name}", f"pkgbase = {name}", f"pkgver = {version}", "pkgdesc = pi-image test package",
                "builddate = 1700000000", "packager = pi-image tests", "size = 64", "arch = any", "license = MIT"]
        info += [f"depend = {d}" for d in depends] + [f"provides = {p}" for p in provides]
        (tree / ".PKGINFO").write_text("\n".join(info) + "\n")
        package = self.build / f"{name}-{version}-any.pkg.tar.gz"
        tool(TOOLS["bsdtar"], "-czf", package, "-C", tree, ".PKGINFO", "usr")
        return package

    def publish(self, *packages: Path) -> None:
        """Put `packages` in the repository (repo-add updates its database)."""
        for package in packages:
            shutil.copy(package, self.repo)
        tool(TOOLS["repo-add"], "-q", self.repo / "test.db.tar.gz", *(self.repo / p.name for p in packages))

    def pacman(self, **options) -> Pacman:
        return Pacman(self.commands, str(self.root), **options)

    def installed(self) -> dict[str, str]:
        """{name: version} as `pacman -Q` lists the sandbox's packages."""
        out = tool(TOOLS["pacman"], "--root", self.root, "--dbpath", self.root / "var/lib/pacman", "-Q").stdout
        return dict(line.split() for line in out.decode().splitlines())

    def ignored(self) -> list[str]:
        return tool(TOOLS["pacman-conf"], "--config", self.root / "etc/pacman.conf", "IgnorePkg").stdout.decode() \
            .split()


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = World(tmp_path)
    world.publish(world.package("libfoo", "1.0-1"), world.package("socat", "1.8.0-1", depends=("libfoo",)),
                  world.package("iptables-nft", "1:1.8.11-2", provides=("iptables",)),
                  world.package("conntrack-tools", "1.4.8-1"))
    return world


def test_what_is_missing_honours_provides_and_an_install_pulls_dependencies(world):
    pacman = world.pacman()
    wanted = ["conntrack-tools", "socat", "ethtool", "iptables"]
    world.publish(world.package("ethtool", "2:6.11-1"))

    assert pacman.missing(wanted) == wanted
    pacman.install(pacman.missing(wanted))
    assert pacman.missing(wanted) == []
    assert world.installed() == {"conntrack-tools": "1.4.8-1", "ethtool": "2:6.11-1", "iptables-nft": "1:1.8.11-2",
                                 "libfoo": "1.0-1", "pacman": "7.0.0.r6.gc685ae6-2", "socat": "1.8.0-1",
                                 "systemd": "257.5-1"}
    assert (world.root / "usr/bin/socat").read_text() == "#!/bin/sh\necho socat 1.8.0-1\n"
    pacman.install(["socat"])  # --needed: nothing to do, and no error


def test_the_offline_bundles_package_files_install_with_no_repository(world):
    files = [world.package("crun", "1.19-1"), world.package("libcrun", "1.19-1")]
    (world.repo / "test.db").unlink()  # nothing to sync from: -U takes the files alone

    world.pacman().install([str(f) for f in files], local_options=[])
    assert {"crun", "libcrun"} <= set(world.installed())


def test_a_held_package_stays_put_through_a_system_upgrade(world):
    pacman = world.pacman()
    pacman.install(["socat"])
    world.publish(world.package("libfoo", "2.0-1"))  # a newer libfoo in the repository

    pacman.hold(["libfoo"])
    pacman.install(["conntrack-tools"])  # -Syu: would upgrade libfoo if it were not held
    assert world.ignored() == ["libfoo"]
    assert world.installed()["libfoo"] == "1.0-1" and world.installed()["conntrack-tools"] == "1.4.8-1"


def test_hold_edits_pacman_conf_once_atomically_and_keeps_its_mode(world):
    config = world.root / "etc/pacman.conf"
    config.chmod(0o640)
    pacman = world.pacman()

    pacman.hold(["kubelet", "kubeadm"])
    inode, text = config.stat().st_ino, config.read_text()
    pacman.hold(["kubeadm", "kubelet"])
    assert config.stat().st_ino == inode and config.read_text() == text  # nothing to add: not rewritten
    pacman.hold(["kubectl"])
    assert world.ignored() == ["kubelet", "kubeadm", "kubectl"]
    assert "#IgnorePkg   =\nIgnorePkg = kubelet kubeadm kubectl\n#IgnoreGroup =\n" in config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert sorted(p.name for p in config.parent.iterdir() if "pacman" in p.name) == ["pacman.conf"]


@pytest.mark.parametrize("text, expected", [
    ("[options]\nIgnorePkg = linux\n\n[core]\nIgnorePkg = x\n", "[options]\nIgnorePkg = linux kubelet\n\n[core]\n"
                                                                 "IgnorePkg = x\n"),
    ("[options]\nIgnorePkg =\r\nArchitecture = auto\n", "[options]\nIgnorePkg = kubelet\r\nArchitecture = auto\n"),
    ("[options]\nIgnorePkg = a\nIgnorePkg = kubelet\n", "[options]\nIgnorePkg = a\nIgnorePkg = kubelet\n"),
    ("[options]\nArchitecture = auto\n", "[options]\nIgnorePkg = kubelet\nArchitecture = auto\n"),
    ("[core]\nServer = x\n", "[options]\nIgnorePkg = kubelet\n[core]\nServer = x\n"),
])
def test_ignore_pkg_is_added_where_pacman_reads_it(text, expected, tmp_path):
    assert with_ignored(text, ["kubelet"]) == expected
    (tmp_path / "pacman.conf").write_text(expected)
    assert "kubelet" in tool(TOOLS["pacman-conf"], "--config", tmp_path / "pacman.conf", "IgnorePkg").stdout.decode()


def test_a_held_database_lock_is_waited_for(world, caplog):
    lock = world.root / DB_LOCK.lstrip("/")
    lock.write_text("")  # another pacman, running now
    pauses = []

    def other_pacman_finishes(seconds: float) -> None:
        pauses.append(seconds)
        lock.unlink()

    with caplog.at_level(logging.INFO, logger="pi-image.agent"):
        world.pacman(sleep=other_pacman_finishes).install(["socat"])
    assert pauses == [10] and "socat" in world.installed()
    assert "waiting for the pacman database lock" in caplog.text and "lock is free" in caplog.text


def test_a_lock_held_for_ever_ends_in_a_failure_to_retry(world):
    (world.root / DB_LOCK.lstrip("/")).write_text("")
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += 60 * seconds  # ten minutes a pause: the agent gives up after three

    with pytest.raises(SetupFailed, match=r"pacman could not lock its database \(/var/lib/pacman/db.lck\) in 30 "
                                          r"min: error: .*\(unable to lock database\)") as err:
        world.pacman(sleep=sleep, clock=lambda: now[0]).install(["socat"])
    assert err.value.retry and "socat" not in world.installed()


def test_a_lock_left_from_before_this_boot_is_removed(world):
    lock = world.root / DB_LOCK.lstrip("/")
    lock.write_text("")
    booted = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                  if line.startswith("btime "))
    os.utime(lock, (booted - 60, booted - 60))

    world.pacman(sleep=lambda seconds: pytest.fail("waited for a stale lock")).install(["socat"])
    assert "socat" in world.installed() and not lock.exists()


def test_the_running_kernels_package_is_not_upgraded_under_it(world):
    world.pacman().install([str(world.package("linux", "6.12.1-1"))], local_options=[])
    world.publish(world.package("linux", "6.13.2-1"))
    modules = world.root / "usr/lib/modules" / os.uname().release
    modules.mkdir(parents=True)
    (modules / "pkgbase").write_text("linux\n")

    world.pacman().install(["socat"])
    assert world.installed()["linux"] == "6.12.1-1" and "socat" in world.installed()


def test_an_unreachable_mirror_is_a_failure_to_retry_naming_the_fix(world):
    config = world.root / "etc/pacman.conf"
    config.write_text(config.read_text().replace(f"file://{world.repo}", "http://127.0.0.1:9/repo"))

    with pytest.raises(SetupFailed, match=r"the package mirrors cannot be reached \(error: failed retrieving file "
                                          r"'test.db' from 127.0.0.1:9 .*check the node's network") as err:
        world.pacman().install(["socat"])
    assert err.value.retry and "\n" not in str(err.value)


def test_a_package_no_repository_has_is_not_retried(world):
    with pytest.raises(SetupFailed, match=r"pacman: error: target not found: containerdd: no enabled repository") \
            as err:
        world.pacman().install(["containerdd"])
    assert not err.value.retry


def test_a_system_without_pacman_is_refused_for_good(tmp_path):
    empty = CommandRunner(env={"PATH": str(tmp_path)})

    with pytest.raises(SetupFailed, match=r"package_manager: pacman, and this system has no pacman") as err:
        Pacman(empty, str(tmp_path)).missing(["socat"])
    assert not err.value.retry
