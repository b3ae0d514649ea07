"""The offline bundle on the card (`pi-image build --offline`): packages and container images, so first boot needs no
network but the cluster's.

    /var/lib/pi-image/bundle/bundle.json      Kubernetes release, platform, sandbox image; each file with its SHA-256
    /var/lib/pi-image/bundle/debs/*.deb       installed by dpkg from these files only (apt-get with no source if
                                              dpkg alone cannot: nothing to download either way); their data.tar
                                              is uncompressed (the build host decompressed it: dpkg only copies).
                                              None when the build host's dpkg unpacked them into the image
                                              (bundle.json: "unpacked"): `dpkg --configure -a` finishes those
    /var/lib/pi-image/bundle/images/*.tar     OCI archives (one holding every image; older cards: one each),
                                              imported into containerd's k8s.io namespace once
    /var/lib/pi-image/bundle/release/*        kube_install release: the upstream assets (kubeadm, kubelet, kubectl,
                                              crictl and CNI plugin archives), installed by release.py

Every file is checked against bundle.json before it is used: a card whose bundle was cut or changed says which file.
The import is recorded in IMPORTED (the bundle's digest), so a reboot does not import again; an image that is not in
containerd afterwards is named in the failure, since kubeadm with IfNotPresent would then try the network.
"""

import hashlib
import json
import logging
import os

from .errors import SetupFailed

log = logging.getLogger("pi-image.agent")

BUNDLE_DIR = "/var/lib/pi-image/bundle"
BUNDLE_MANIFEST = "bundle.json"
EMPTY_SOURCES = "no-sources"  # a directory with no apt source in it: apt installs from the given files only
IMPORTED = "/var/lib/pi-image/bundle.imported"
NAMESPACE = "k8s.io"  # the containerd namespace the CRI (and so the kubelet and kubeadm) uses


class Bundle(object):
    """The bundle under `root`, or an empty one when the card has none (`present` is then False)."""

    def __init__(self, root):
        self.root = root
        self.directory = os.path.join(root, BUNDLE_DIR.lstrip("/"))
        self.manifest = None
        self._verified = set()  # (path, SHA-256) of the files found to have it
        path = os.path.join(self.directory, BUNDLE_MANIFEST)
        try:
            with open(path) as handle:
                self.manifest = json.load(handle)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            raise SetupFailed("{} cannot be read ({}): rebuild the card".format(path, err), retry=False) from None

    @property
    def present(self):
        return self.manifest is not None

    def package_files(self):
        """The bundle's package files (checked), as the absolute paths a package manager installs."""
        return [self._checked(entry) for entry in self.manifest.get("packages", [])]

    def debs(self):
        """The bundle's .debs as (package, version, checked absolute path): what dpkg has decides what it needs.
        Packages the build host unpacked into the image are not among them: `dpkg --configure -a` configures those."""
        return [(entry.get("package"), entry.get("version"), self._checked(entry))
                for entry in self.manifest.get("packages", []) if entry.get("unpacked") is not True]

    def release_file(self, name):
        """The checked path of the release asset `name` (its upstream file name), or None if the bundle has none."""
        for entry in self.manifest.get("release", []):
            if os.path.basename(entry["file"]) == name:
                return self._checked(entry)
        return None

    def apt_options(self):
        """apt-get options that leave it only the given files: no source at all, so nothing it could download.
        (Not --no-download: apt 2.6 then fails on a dependency it takes from one of the files, "Pathname to install
        is not absolute".)"""
        empty = os.path.join(self.directory, EMPTY_SOURCES)
        return ["-o", "Dir::Etc::SourceList=" + os.path.join(empty, "sources.list"),
                "-o", "Dir::Etc::SourceParts=" + empty]

    def import_images(self, commands, socket_path):
        """Import the bundle's archives (once per bundle), then check with one listing that every image is in
        containerd; SetupFailed naming the first one missing. Nothing is listed before: an import that a power cut
        interrupted is simply done again (containerd keeps the blobs it has), and a first boot saves a ctr run."""
        stamp = os.path.join(self.root, IMPORTED.lstrip("/"))
        digest = self._digest()
        try:
            with open(stamp) as handle:
                done = handle.read().strip() == digest
        except OSError:
            done = False
        ctr = ["ctr", "--address", socket_path, "-n", NAMESPACE]
        if not done:
            archives = {}  # archive -> the references it brings: one archive may hold every image (one ctr run)
            for entry in self.manifest.get("images", []):
                archives.setdefault(self._checked(entry), []).append(entry["reference"])
            for archive, references in archives.items():
                result = commands.run(ctr + ["images", "import", "--platform", self.manifest["platform"], archive],
                                      timeout=900)
                if not result.ok:
                    raise SetupFailed("ctr could not import {} from the bundle: {}".format(
                        ", ".join(references), result.summary()), retry=True)
                log.info("imported %s from the bundle", ", ".join(references))
        present = self._present(commands, ctr)
        missing = [entry["reference"] for entry in self.manifest.get("images", []) if entry["reference"] not in present]
        if missing:
            raise SetupFailed("the image {} is not in containerd after importing the bundle: kubeadm would try to pull "
                              "it (rebuild the card with --offline)".format(missing[0]), retry=False)
        if not done:
            with open(stamp, "w") as handle:
                handle.write(digest + "\n")
            log.info("%d image(s) of the bundle are in containerd's %s namespace",
                     len(self.manifest.get("images", [])), NAMESPACE)

    def _present(self, commands, ctr):
        result = commands.run(ctr + ["images", "ls", "-q"], timeout=60)
        if not result.ok:
            raise SetupFailed("ctr cannot list containerd's images: {}".format(result.summary()), retry=True)
        return set(result.stdout.split())

    def _checked(self, entry):
        """The absolute path of a bundle file whose size and SHA-256 are those bundle.json records (read once)."""
        path = os.path.join(self.directory, entry["file"])
        if (path, entry.get("sha256")) in self._verified:
            return path
        sha = hashlib.sha256()
        try:
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    sha.update(chunk)
        except OSError as err:
            raise SetupFailed("the bundle's {} cannot be read ({}): rebuild the card".format(
                entry["file"], err.strerror or err), retry=False) from None
        if sha.hexdigest() != entry.get("sha256"):
            raise SetupFailed("the bundle's {} does not match its SHA-256 in {}: the card is damaged; rebuild or "
                              "reflash it".format(entry["file"], BUNDLE_MANIFEST), retry=False)
        self._verified.add((path, entry.get("sha256")))
        return path

    def _digest(self):
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()
