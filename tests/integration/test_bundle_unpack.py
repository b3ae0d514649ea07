"""The bundle's .debs unpacked on the build host by the host's own dpkg (builder/plan/bundle/unpack.py): the image gets
the packages' files and dpkg's "unpacked" state, no script of theirs runs on the host, and what cannot be unpacked
there is said."""

from __future__ import annotations

import subprocess
from pathlib import Path

from builder.image import DirectoryFilesystem
from builder.plan import Plan, PlanView
from builder.plan.bundle import unpack
from builder.targets.base import OsRelease
from builder.targets.kali_raspi import KaliRaspi

STATUS = """Package: dpkg
Status: install ok installed
Architecture: amd64
Version: 1.21.22
Description: package manager

"""


def image_root(tmp_path: Path) -> PlanView:
    """A root holding a dpkg database with one package and a merged /usr (bin -> usr/bin)."""
    root = tmp_path / "image"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/updates").mkdir()
    (root / "var/lib/dpkg/status").write_text(STATUS)
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "boot").mkdir()
    fs = DirectoryFilesystem(root, False)
    target = KaliRaspi(medium=fs, root=fs, os=OsRelease.parse(""), boot=DirectoryFilesystem(root / "boot", False))
    return PlanView(target, Plan())


def deb(tmp_path: Path, package: str, scripts: dict[str, str] | None = None) -> Path:
    """A .deb of `package` 1.0 (amd64): /bin/PACKAGE (through the merged /usr link), a conffile, a link."""
    tree = tmp_path / f"src-{package}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(f"Package: {package}\nVersion: 1.0\nArchitecture: amd64\n"
                                         "Maintainer: t <t@invalid>\nDescription: test\n")
    (tree / "DEBIAN/conffiles").write_text(f"/etc/{package}.conf\n")
    for name, body in (scripts or {}).items():
        (tree / "DEBIAN" / name).write_text(body)
        (tree / "DEBIAN" / name).chmod(0o755)
    (tree / "bin").mkdir()
    (tree / "bin" / package).write_text("#!/bin/sh\n")
    (tree / "bin" / package).chmod(0o755)
    (tree / "etc").mkdir()
    (tree / f"etc/{package}.conf").write_text("setting = 1\n")
    (tree / "usr/share/doc").mkdir(parents=True)
    (tree / "usr/share/doc" / package).symlink_to("/etc")
    out = tmp_path / f"{package}_1.0_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", tree, out], check=True, capture_output=True)
    return out


def test_the_image_gets_the_files_and_dpkgs_unpacked_state_and_no_script_runs_on_the_host(tmp_path):
    view = image_root(tmp_path)
    marker = tmp_path / "postinst-ran"
    package = deb(tmp_path, "tool", {"postinst": f"#!/bin/sh\ntouch {marker}\n"})

    assert unpack.why_not(view, {"tool": package}) is None
    changes = unpack.unpack(view, [package], "amd64", {"root": 0}, {"root": 0})

    assert changes.files["/usr/bin/tool"][1:] == (0o755, 0, 0), "through the image's merged /usr, root's"
    assert changes.files["/etc/tool.conf.dpkg-new"][0] == b"setting = 1\n", "a conffile as dpkg leaves it unpacked"
    assert changes.links["/usr/share/doc/tool"] == "/etc"
    status = changes.files["/var/lib/dpkg/status"][0].decode()
    assert "Package: tool\nStatus: install ok unpacked\n" in status and "Package: dpkg\n" in status
    assert b"/usr/bin/tool" in changes.files["/var/lib/dpkg/info/tool.list"][0] or \
        b"/bin/tool" in changes.files["/var/lib/dpkg/info/tool.list"][0]
    postinst, mode, *_ = changes.files["/var/lib/dpkg/info/tool.postinst"]
    assert b"touch" in postinst and mode == 0o755, "the node's dpkg runs it at configure"
    assert not marker.exists(), "no maintainer script ran on the host"
    assert "/bin" not in changes.links and "/var/lib/dpkg/arch" not in changes.files


def test_a_preinst_or_a_package_the_image_has_keeps_the_debs_for_the_node(tmp_path):
    view = image_root(tmp_path)
    with_preinst = deb(tmp_path, "early", {"preinst": "#!/bin/sh\nexit 0\n"})

    assert "has a preinst" in unpack.why_not(view, {"early": with_preinst})
    assert "the image has dpkg already" in unpack.why_not(view, {"dpkg": deb(tmp_path, "dpkg")})


def test_a_host_without_fakeroot_says_so(tmp_path, monkeypatch):
    view = image_root(tmp_path)
    monkeypatch.setattr(unpack.shutil, "which", lambda tool: None if tool == "fakeroot" else "/usr/bin/" + tool)

    assert unpack.why_not(view, {"tool": deb(tmp_path, "tool")}) == \
        "this host has no fakeroot (apt install dpkg fakeroot)"


def test_an_absolute_top_level_link_is_not_followed_out_of_the_staging_tree(tmp_path):
    view = image_root(tmp_path)
    (tmp_path / "image/bin").unlink()
    (tmp_path / "image/bin").symlink_to("/usr/bin")  # on this host, /usr/bin is the host's own
    package = deb(tmp_path, "tool")

    changes = unpack.unpack(view, [package], "amd64", {"root": 0}, {"root": 0})

    assert "/bin/tool" in changes.files, "written through the image's own link by the build, not dpkg's"
    assert not Path("/usr/bin/tool").exists()


def test_an_image_is_taken_as_already_unpacked_only_when_its_dpkg_has_each_package_at_its_version(tmp_path):
    view = image_root(tmp_path)
    status = tmp_path / "image/var/lib/dpkg/status"
    status.write_text(STATUS + "Package: tool\nStatus: install ok unpacked\nVersion: 1.0\n\n")

    assert unpack.already_unpacked(view, [("tool", "1.0"), ("dpkg", "1.21.22")])
    assert not unpack.already_unpacked(view, [("tool", "2.0")]), "another version: made again"
    assert not unpack.already_unpacked(view, [("other", "1.0")]), "a bundle.json a base carries proves nothing"
    assert not unpack.already_unpacked(view, [])


def test_an_image_whose_dpkg_database_is_too_large_keeps_the_debs_for_the_node(tmp_path, monkeypatch):
    view = image_root(tmp_path)
    monkeypatch.setattr(unpack, "DATABASE_LIMIT", 100)

    assert unpack.why_not(view, {"tool": deb(tmp_path, "tool")}) == \
        "the image's dpkg database (/var/lib/dpkg) holds 0 MiB, more than 0 MiB"
