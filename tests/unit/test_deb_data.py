"""A bundled .deb's data member decompressed on the build host (builder/plan/bundle/debs.py), read back by dpkg-deb."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from builder.errors import UserError
from builder.plan.bundle import debs
from builder.plan.bundle.debs import decompress_data


def make_deb(tmp_path: Path, compression: str) -> Path:
    """A real .deb built by dpkg-deb with its data member compressed by `compression`."""
    root = tmp_path / f"tree-{compression}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: demo\nVersion: 1.0-1\nArchitecture: all\n"
                                             "Maintainer: nobody <nobody@invalid>\nDescription: a demo\n")
    (root / "usr/bin").mkdir(parents=True)
    tool = root / "usr/bin/demo"
    tool.write_bytes(bytes(range(256)) * 4001)  # odd-sized, so the ar padding is exercised
    tool.chmod(0o755)
    (root / "usr/bin/demo-link").symlink_to("demo")
    deb = tmp_path / f"demo_1.0-1_all.{compression}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "-b", str(root), str(deb)], check=True,
                   capture_output=True, env={"SOURCE_DATE_EPOCH": "1700000000", "PATH": "/usr/bin:/bin"})
    return deb


def dpkg_deb(*argv: str) -> bytes:
    return subprocess.run(["dpkg-deb", *argv], check=True, capture_output=True).stdout


def members(deb: Path) -> list[str]:
    return subprocess.run(["ar", "t", str(deb)], check=True, capture_output=True, text=True).stdout.split()


@pytest.mark.parametrize("compression", ["xz", "gzip"])
def test_the_data_member_becomes_a_plain_tar_dpkg_reads_as_before(tmp_path, compression):
    deb = make_deb(tmp_path, compression)
    tar, listing, control = (dpkg_deb("--fsys-tarfile", str(deb)), dpkg_deb("-c", str(deb)),
                             dpkg_deb("-f", str(deb)))

    assert decompress_data(deb) is True

    assert members(deb) == ["debian-binary", "control.tar.xz" if compression == "xz" else "control.tar.gz",
                            "data.tar"]
    assert dpkg_deb("--fsys-tarfile", str(deb)) == tar and dpkg_deb("-c", str(deb)) == listing
    assert dpkg_deb("-f", str(deb)) == control
    assert deb.stat().st_size > len(tar)  # the tar itself, uncompressed
    assert not list(tmp_path.glob("*.plain"))


def test_the_same_deb_gives_the_same_bytes_and_a_plain_one_is_left_alone(tmp_path):
    first, second = make_deb(tmp_path, "xz"), tmp_path / "copy.deb"
    second.write_bytes(first.read_bytes())
    decompress_data(first)
    decompress_data(second)
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()
    before = first.read_bytes()
    assert decompress_data(first) is False and first.read_bytes() == before


def test_zstd_data_is_kept_as_it_is(tmp_path):
    deb = make_deb(tmp_path, "zstd")
    before = deb.read_bytes()
    assert decompress_data(deb) is False and deb.read_bytes() == before


@pytest.mark.parametrize("damage, words", [
    (lambda data: b"not a deb" + data, "no ar header"),
    (lambda data: data[:len(data) // 2], "cut short"),
    (lambda data: data[:8] + data[8:56] + b"xxxxxxxxxx" + data[66:], "damaged ar header"),
    (lambda data: data[:-200] + bytes(200), "does not decompress"),
])
def test_a_damaged_deb_is_one_line_naming_it_and_is_left_as_it_was(tmp_path, damage, words):
    deb = make_deb(tmp_path, "xz")
    deb.write_bytes(damage(deb.read_bytes()))
    before = deb.read_bytes()
    with pytest.raises(UserError) as caught:
        decompress_data(deb)
    assert str(deb) in str(caught.value) and words in str(caught.value) and "\n" not in str(caught.value)
    assert deb.read_bytes() == before and not list(tmp_path.glob("*.plain"))


def test_a_data_member_that_decompresses_past_the_bound_is_refused(tmp_path, monkeypatch):
    deb = make_deb(tmp_path, "xz")
    monkeypatch.setattr(debs, "MAX_DATA", 4096)
    with pytest.raises(UserError, match="decompresses to more than"):
        decompress_data(deb)
    assert not list(tmp_path.glob("*.plain"))
