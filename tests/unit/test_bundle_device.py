"""The agent's side of an --offline card (firstboot/bundle.py): dpkg installs the bundle's files, nothing is
downloaded, images are imported into containerd once, a damaged bundle or a missing image is named."""

import hashlib
import json
from pathlib import Path

import pytest

from firstboot import localsetup
from firstboot.bundle import BUNDLE_DIR, IMPORTED, Bundle
from firstboot.commands import CommandResult
from firstboot.errors import SetupFailed

IMAGES = ("registry.k8s.io/kube-proxy:v1.31.4", "registry.k8s.io/pause:3.10")


class FakeContainerd:
    """dpkg-query, apt-get and ctr as a fresh node answers them: nothing installed, an empty image store that
    `ctr images import` fills (unless `drop` names an image the import loses)."""

    def __init__(self, drop=()):
        self.images = set()
        self.drop = set(drop)
        self.calls = []

    def run(self, argv, input_text=None, timeout=None):
        self.calls.append(argv)
        if "images" in argv and "ls" in argv:
            return CommandResult(argv, 0, "".join(name + "\n" for name in sorted(self.images)), "")
        if "images" in argv and "import" in argv:
            held = json.loads(Path(argv[-1]).read_text())
            self.images.update(set(held.get("references", [held.get("reference")])) - self.drop)
            return CommandResult(argv, 0, "", "")
        return CommandResult(argv, 0, "", "")

    def available(self, tool):
        return True

    def imports(self):
        return [call for call in self.calls if "import" in call]


def write_bundle(root: Path, images=IMAGES) -> dict:
    """A bundle.json with one .deb and an archive per image (the archive's bytes name its image, for the fake)."""
    directory = root / BUNDLE_DIR.lstrip("/")
    (directory / "debs").mkdir(parents=True)
    (directory / "images").mkdir()
    manifest = {"kubernetes": "1.31.4", "platform": "linux/arm64", "packages": [], "images": []}
    deb = directory / "debs" / "kubeadm_1.31.4-1.1_arm64.deb"
    deb.write_bytes(b"!<arch>\n")
    manifest["packages"].append({"file": "debs/" + deb.name, "package": "kubeadm", "version": "1.31.4-1.1",
                                 "sha256": hashlib.sha256(deb.read_bytes()).hexdigest(), "size": 8})
    for n, reference in enumerate(images):
        archive = directory / "images" / f"image{n}.oci.tar"
        archive.write_text(json.dumps({"reference": reference}))
        manifest["images"].append({"file": "images/" + archive.name, "reference": reference, "digest": "sha256:" +
                                   "0" * 64, "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
                                   "size": archive.stat().st_size})
    (directory / "bundle.json").write_text(json.dumps(manifest))
    return manifest


def test_a_card_without_a_bundle_installs_from_the_network_as_before(tmp_path):
    assert not Bundle(str(tmp_path)).present


def test_dpkg_gets_the_bundles_files_and_nothing_else(tmp_path):
    write_bundle(tmp_path)
    commands = FakeContainerd()
    setup = localsetup.LocalSetup(str(tmp_path), commands, runtime_packages=["containerd"])
    setup.runtime.problem = lambda: None  # containerd answers

    setup.install_packages()

    [install] = [call for call in commands.calls if call[:1] == ["dpkg"] and "--install" in call]
    assert install[-1].endswith("/debs/kubeadm_1.31.4-1.1_arm64.deb")
    assert not [call for call in commands.calls if call[0] == "apt-get"], "no archive is asked for anything"
    assert commands.images == set(IMAGES)


def test_images_are_imported_once_and_a_reboot_imports_nothing(tmp_path):
    write_bundle(tmp_path)
    commands = FakeContainerd()
    Bundle(str(tmp_path)).import_images(commands, "/run/containerd/containerd.sock")
    assert len(commands.imports()) == 2
    assert (tmp_path / IMPORTED.lstrip("/")).exists()
    assert all(call[call.index("--platform") + 1] == "linux/arm64" for call in commands.imports())

    Bundle(str(tmp_path)).import_images(commands, "/run/containerd/containerd.sock")
    assert len(commands.imports()) == 2, "the stamp holds across a reboot"


def test_a_first_import_lists_containerds_images_once_after_importing(tmp_path):
    write_bundle(tmp_path)
    commands = FakeContainerd()

    Bundle(str(tmp_path)).import_images(commands, "/run/containerd/containerd.sock")

    ctr = [call for call in commands.calls if call[0] == "ctr"]
    assert ["import" in call for call in ctr] == [True, True, False] and ctr[-1][-3:] == ["images", "ls", "-q"]


def test_an_import_a_power_cut_interrupted_is_done_again_whole(tmp_path):
    write_bundle(tmp_path)
    commands = FakeContainerd()
    commands.images.add(IMAGES[0])  # imported before the power went

    Bundle(str(tmp_path)).import_images(commands, "/run/containerd/containerd.sock")

    assert len(commands.imports()) == 2 and commands.images == set(IMAGES)


def test_an_image_the_import_lost_is_named(tmp_path):
    write_bundle(tmp_path)
    commands = FakeContainerd(drop=[IMAGES[1]])

    with pytest.raises(SetupFailed, match="registry.k8s.io/pause:3.10 is not in containerd") as failure:
        Bundle(str(tmp_path)).import_images(commands, "/run/containerd/containerd.sock")
    assert not failure.value.retry
    assert not (tmp_path / IMPORTED.lstrip("/")).exists()


def test_a_damaged_bundle_file_is_named_and_never_used(tmp_path):
    manifest = write_bundle(tmp_path)
    archive = tmp_path / BUNDLE_DIR.lstrip("/") / manifest["images"][0]["file"]
    archive.write_text(archive.read_text() + " ")
    commands = FakeContainerd()

    with pytest.raises(SetupFailed, match="images/image0.oci.tar does not match its SHA-256"):
        Bundle(str(tmp_path)).import_images(commands, "/run/containerd/containerd.sock")
    assert commands.imports() == []


def test_one_archive_of_every_image_is_checked_once_and_imported_with_one_ctr_run(tmp_path, monkeypatch):
    manifest = write_bundle(tmp_path)
    directory = tmp_path / BUNDLE_DIR.lstrip("/")
    combined = directory / "images" / "images-all.oci.tar"
    combined.write_text(json.dumps({"references": list(IMAGES)}))
    for entry in manifest["images"]:
        entry.update(file="images/" + combined.name, sha256=hashlib.sha256(combined.read_bytes()).hexdigest(),
                     size=combined.stat().st_size)
    (directory / "bundle.json").write_text(json.dumps(manifest))
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    commands = FakeContainerd()

    Bundle(str(tmp_path)).import_images(commands, "/run/containerd/containerd.sock")

    assert [call[-1] for call in commands.imports()] == [str(combined)]
    assert commands.images == set(IMAGES)
    assert opened.count(str(combined)) == 1, "its SHA-256 is computed once, not once per image"


def test_an_entry_without_a_sha256_is_never_used(tmp_path):
    manifest = write_bundle(tmp_path)
    del manifest["images"][0]["sha256"]
    (tmp_path / BUNDLE_DIR.lstrip("/") / "bundle.json").write_text(json.dumps(manifest))
    commands = FakeContainerd()

    with pytest.raises(SetupFailed, match="images/image0.oci.tar does not match its SHA-256"):
        Bundle(str(tmp_path)).import_images(commands, "/run/containerd/containerd.sock")
    assert commands.imports() == []
