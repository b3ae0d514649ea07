"""The release path of first boot (node.json kube_install: release): Kubernetes as upstream publishes it.

    /usr/local/bin/{kubeadm,kubelet,kubectl}   the cluster's exact release, {kube_url}/v{X.Y.Z}/bin/linux/{arch}/{tool}
    /usr/local/bin/crictl                      the `crictl` of crictl-{V}-linux-{arch}.tar.gz
    /opt/cni/bin/*                             every file of cni-plugins-linux-{arch}-{V}.tgz (flannel looks there)

The build fetched each asset's published .sha256 and wrote the digests into node.json: the card is trusted, never the
network. An asset comes from the card's offline bundle when it has one, else from its URL (30 s per read,
MAX_ASSET_BYTES, DOWNLOAD_SECONDS in all), streamed into a temporary file beside its destination and checked against
node.json's digest before anything is moved into place. Archive members must be regular files with plain names
(no path, no '..', no link, no device). The kubelet's unit and kubeadm drop-in come from the build (overlay
kube-release). RECORD keeps the digest of every installed file: an asset whose files are intact is not fetched again.
"""

import hashlib
import http.client
import json
import logging
import os
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zlib

from .errors import SetupFailed
from .nodeconfig import KUBE_BINARIES, write_private

log = logging.getLogger("pi-image.agent")

RECORD = "/var/lib/pi-image/release.json"
BIN_DIR = "/usr/local/bin"
CNI_DIR = "/opt/cni/bin"
READ_TIMEOUT = 30
DOWNLOAD_SECONDS = 1800
MAX_ASSET_BYTES = 256 << 20
_CHUNK = 1 << 20
_TEMPORARY = ".{}.pi-image-tmp"
NETWORK_FIX = ("check the node's network (address, gateway, DNS, proxy) and that the release mirror is reachable, or "
               "build the card with --offline")
MISMATCH_FIX = "rebuild the card (the build records the digests) or check the mirror it downloads from"


class ReleaseInstall(object):
    """The five assets of `settings` (nodeconfig.ReleaseSettings) for Kubernetes `kubernetes_release` ("1.31.4"),
    installed under `root`, from `bundle` (bundle.Bundle) when the card has one."""

    def __init__(self, root, settings, kubernetes_release, bundle):
        self.root = root
        self.settings = settings
        self.kubernetes_release = kubernetes_release
        self.bundle = bundle
        self.record_path = self._path(RECORD)

    def run(self):
        """Install every asset whose files are not in place with their recorded digests; True if any was. A
        failure is SetupFailed naming the asset and the fix."""
        record, installed = self._record(), False
        for name, url in self.settings.assets(self.kubernetes_release):
            expected = self.settings.sha256[name]
            if name in KUBE_BINARIES:  # the asset is the file: its digest says whether it is in place
                files = {_relative(BIN_DIR, name): expected}
            else:
                entry = record.get(name) or {}
                files = entry.get("files") if entry.get("sha256") == expected else None
            if files and self._intact(files):
                continue
            try:
                record[name] = {"sha256": expected, "files": self._install(name, url, expected)}
                os.makedirs(os.path.dirname(self.record_path), mode=0o700, exist_ok=True)
                write_private(self.record_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
                installed = True
            except OSError as err:
                raise SetupFailed("cannot install {}: {}: {}: check the free space and that the file system is "
                                  "writable".format(name, getattr(err, "filename", None) or "a file",
                                                    err.strerror or err), retry=True) from None
        return installed

    def _path(self, absolute):
        return os.path.join(self.root, absolute.lstrip("/"))

    def _record(self):
        try:
            with open(self.record_path) as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _intact(self, files):
        """True if every file (root-relative path -> digest) is a regular file (not a link) with that digest."""
        for relative, digest in files.items():
            path = self._path(relative)
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    return False
                with open(path, "rb") as handle:
                    if _digest_of(handle) != digest:
                        return False
            except OSError:
                return False
        return True

    def _install(self, name, url, expected):
        """Fetch asset `name`, check it, put its file(s) in place; {root-relative path: digest} of what it wrote."""
        directory = CNI_DIR if name == self.settings.cni_asset else BIN_DIR
        target = self._path(directory)
        os.makedirs(target, mode=0o755, exist_ok=True)
        temporary = os.path.join(target, _TEMPORARY.format(name))
        try:
            origin = self._fetch(name, url, expected, temporary)
            if name in KUBE_BINARIES:
                os.chmod(temporary, 0o755)
                os.replace(temporary, os.path.join(target, name))
                files = {_relative(directory, name): expected}
            else:
                unpacked = _unpack(name, temporary, target, "crictl" if name == self.settings.crictl_asset else None)
                files = {_relative(directory, member): digest for member, digest in unpacked.items()}
        finally:
            _discard(temporary)
        shown = "/" + next(iter(files)) if len(files) == 1 else "{} files into {}".format(len(files), directory)
        log.info("%s: installed %s from %s (sha256 %s)", name, shown, origin, expected)
        return files

    def _fetch(self, name, url, expected, temporary):
        """The asset's bytes into `temporary`, from the bundle or `url`, checked against node.json; where from."""
        if self.bundle.present:
            path = self.bundle.release_file(name)
            if path is None:
                raise SetupFailed("the card's bundle has no {} although this node installs the Kubernetes release: "
                                  "rebuild the card with --offline".format(name), retry=False)
            with open(path, "rb") as source:
                digest = _copy(source, temporary, name, "the card's bundle", "rebuild the card")
            origin = "the card's bundle"
        else:
            digest = self._download(name, url, temporary)
            origin = url
        if digest != expected:
            raise SetupFailed("{} from {} has SHA-256 {} but the card expects {}: {}".format(
                name, origin, digest, expected, MISMATCH_FIX), retry=False)
        return origin

    def _download(self, name, url, temporary):
        """GET `url` into `temporary` (bounded in size and time); its SHA-256."""
        try:
            response = urllib.request.urlopen(url, timeout=READ_TIMEOUT)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                raise SetupFailed("{} does not exist at {} (HTTP 404): check {} in the profile, then rebuild the "
                                  "card".format(self._what(name), url, self._setting(name)), retry=False) from None
            raise SetupFailed("{} answered HTTP {} for {}: {}".format(url, err.code, name, NETWORK_FIX),
                              retry=True) from None
        except (OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", None) or err
            raise SetupFailed("cannot download {} from {} ({}): {}".format(name, url, reason, NETWORK_FIX),
                              retry=True) from None
        with response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > MAX_ASSET_BYTES:
                raise SetupFailed("{} is {} bytes, more than any release asset ({} MiB): {}".format(
                    url, length, MAX_ASSET_BYTES >> 20, MISMATCH_FIX), retry=False)
            return _copy(response, temporary, name, url, NETWORK_FIX, time.monotonic() + DOWNLOAD_SECONDS)

    def _what(self, name):
        if name == self.settings.crictl_asset:
            return "crictl {}".format(self.settings.crictl_version)
        if name == self.settings.cni_asset:
            return "the CNI plugins {}".format(self.settings.cni_version)
        return "release v{}".format(self.kubernetes_release)

    def _setting(self, name):
        """The profile key that says where asset `name` comes from."""
        if name == self.settings.crictl_asset:
            return "crictl_url"
        return "cni_plugins_url" if name == self.settings.cni_asset else "kube_release_url"


def _copy(source, temporary, name, origin, fix, deadline=None):
    """Stream `source` into a new `temporary` (0600, never through a symlink), at most MAX_ASSET_BYTES and until
    `deadline` (monotonic); its SHA-256. A read failure is SetupFailed (retry) with `fix`."""
    sha, size = hashlib.sha256(), 0
    descriptor = os.open(temporary, os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        while True:
            try:
                chunk = source.read(_CHUNK)
            except (OSError, http.client.HTTPException) as err:
                raise SetupFailed("cannot read {} from {} ({}): {}".format(name, origin, err, fix),
                                  retry=True) from None
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_ASSET_BYTES:
                raise SetupFailed("{} from {} is larger than any release asset ({} MiB): {}".format(
                    name, origin, MAX_ASSET_BYTES >> 20, MISMATCH_FIX), retry=False)
            if deadline is not None and time.monotonic() > deadline:
                raise SetupFailed("downloading {} from {} took more than {} min: {}".format(
                    name, origin, DOWNLOAD_SECONDS // 60, NETWORK_FIX), retry=True)
            sha.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return sha.hexdigest()


def _unpack(name, archive, target, wanted=None):
    """The regular files of the .tar.gz `archive` (all of them, or only the member `wanted`) into `target`, each
    replaced atomically (0755 if executable, else 0644); {member name: digest}. Any member that is not a plain file
    name (a path, '..', an absolute name) or not a regular file (a link, a device) refuses the whole archive."""
    written = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                plain = _plain_name(member.name)
                if member.isdir() and plain in ("", "."):
                    continue
                if not member.isfile() or plain in (None, "", ".", ".."):
                    raise SetupFailed("{} holds {!r}, which is not a plain regular file: refused ({})".format(
                        name, member.name, MISMATCH_FIX), retry=False)
                if wanted is not None and plain != wanted:
                    continue
                temporary = os.path.join(target, _TEMPORARY.format(plain))
                try:
                    written[plain] = _copy(tar.extractfile(member), temporary, plain, name, MISMATCH_FIX)
                    os.chmod(temporary, 0o755 if member.mode & 0o111 else 0o644)
                    os.replace(temporary, os.path.join(target, plain))
                finally:
                    _discard(temporary)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise SetupFailed("{} is not a readable .tar.gz ({}): {}".format(name, err, MISMATCH_FIX), retry=False) \
            from None
    if wanted is not None and wanted not in written:
        raise SetupFailed("{} has no {}: {}".format(name, wanted, MISMATCH_FIX), retry=False)
    return written


def _plain_name(member):
    """A member name without its leading './', or None if it has a directory part (or is absolute)."""
    while member.startswith("./"):
        member = member[2:]
    return None if "/" in member else member


def _relative(directory, name):
    """RECORD's key of file `name` in `directory`: its path below the root."""
    return os.path.join(directory, name).lstrip("/")


def _digest_of(handle):
    sha = hashlib.sha256()
    for chunk in iter(lambda: handle.read(_CHUNK), b""):
        sha.update(chunk)
    return sha.hexdigest()


def _discard(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
