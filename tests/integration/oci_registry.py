"""A real OCI registry for tests: Debian's `docker-registry` on 127.0.0.1, filled with small multi-platform images.

    with Registry(tmp_path / "registry") as registry:
        populate(registry, ["registry.k8s.io/kube-proxy:v1.31.4", "ghcr.io/flannel-io/flannel:v0.28.9"], tmp_path)
        registry.url   # http://127.0.0.1:PORT: a mirror of registry.k8s.io *and* of ghcr.io
        registry.host  # 127.0.0.1:PORT: serves kube-proxy:v1.31.4 and flannel-io/flannel:v0.28.9

Images are pushed under their repository path without the original host, which is how a mirror is asked for them
(containerd's hosts.toml and skopeo's registries.conf keep the path and change only the host). One local registry
can stand in for several upstreams as long as their paths do not collide (`populate` refuses a collision).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import secrets
import socket
import subprocess
import tarfile
import time
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from builder.run import run

if TYPE_CHECKING:
    from typing import Self

BUSYBOX = Path("/bin/busybox")  # busybox-static: one static binary, the same bytes for every platform
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


def _json(value: object) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces): the same value always has the same digest."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, blob: bytes, **extra: object) -> dict[str, object]:
    """The OCI descriptor of `blob`."""
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob),
            **extra}


@lru_cache(maxsize=1)
def _layer() -> tuple[bytes, bytes]:
    """The (uncompressed tar, gzip'd tar) of the one layer: /bin/busybox, root-owned, mtime 0."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folder = tarfile.TarInfo("bin")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        data = BUSYBOX.read_bytes()
        binary = tarfile.TarInfo("bin/busybox")
        binary.size, binary.mode = len(data), 0o755
        tar.addfile(binary, io.BytesIO(data))
    return raw.getvalue(), gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def make_image(work: Path, platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64"), label: str = "") -> Path:
    """Write a multi-platform OCI image layout under `work` and return its directory (named by its index digest).

    The layout's index.json names one image index (tag "latest") that lists a manifest per platform ("os/arch"
    or "os/arch/variant"); every config says its own platform and carries `label`, so different labels give
    different digests, and the same call gives the same bytes.
    """
    tar, gzipped = _layer()
    blobs = [gzipped]
    manifests = []
    for platform in platforms:
        os_name, arch, *variant = platform.split("/")
        spec = {"os": os_name, "architecture": arch, **({"variant": variant[0]} if variant else {})}
        config = _json({**spec, "created": "1970-01-01T00:00:00Z",
                        "config": {"Entrypoint": ["/bin/busybox"], "Labels": {"pi-image.test/label": label}},
                        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
                        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "oci_registry.make_image"}]})
        manifest = _json({"schemaVersion": 2, "mediaType": MANIFEST, "config": _descriptor(CONFIG, config),
                          "layers": [_descriptor(LAYER, gzipped)]})
        blobs += [config, manifest]
        manifests.append(_descriptor(MANIFEST, manifest, platform=spec))
    index = _json({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests})
    blobs.append(index)
    layout = work / ("oci-" + hashlib.sha256(index).hexdigest()[:16])
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    for blob in blobs:
        (layout / "blobs" / "sha256" / hashlib.sha256(blob).hexdigest()).write_bytes(blob)
    (layout / "oci-layout").write_bytes(_json({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_bytes(_json({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
        _descriptor(INDEX, index, annotations={REF_NAME: "latest"})]}))
    return layout


class Registry:
    """Debian's `docker-registry serve` on 127.0.0.1 at a free port, storing under `root`, until `stop()`."""

    def __init__(self, root: Path) -> None:
        """Choose the port; nothing runs until `start()`."""
        self.root = root
        with socket.socket() as probe:  # a free port (another process could take it first: start() would say so)
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._process: subprocess.Popen[bytes] | None = None
        self._token = secrets.token_hex(8)  # sent back in a header: the answer to GET /v2/ is this registry's

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, for docker:// references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`, for a mirror's address."""
        return f"http://{self.host}"

    def start(self, timeout: float = 15.0) -> Self:
        """Start the registry and wait until `GET /v2/` answers 200; raise with the registry's log if it does not."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                          f"    rootdirectory: {json.dumps(str(self.root / 'storage'))}\n  delete:\n    enabled: true\n"
                          f"http:\n  addr: {self.host}\n  headers:\n    X-Test-Registry: ['{self._token}']\n")
        log = self.root / "registry.log"
        with log.open("wb") as output:
            self._process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=output,
                                             stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self._process.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/v2/", timeout=1) as response:
                    if response.status == 200 and response.headers["X-Test-Registry"] == self._token:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        code = self._process.poll()
        self.stop()
        why = f"exited ({code})" if code is not None else f"did not answer GET /v2/ within {timeout:g}s"
        raise RuntimeError(f"docker-registry on {self.host} {why}: "
                           f"{log.read_text(errors='replace').strip() or 'no log output'}")

    def stop(self) -> None:
        """Terminate the registry (kill it if it lingers)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def push(self, layout: Path, name: str, tag: str) -> None:
        """Copy every platform of the image in `layout` to NAME:TAG here, digests unchanged."""
        run(["skopeo", "--insecure-policy", "copy", "--all", "--preserve-digests", "--quiet",
             "--dest-tls-verify=false", f"oci:{layout}", f"docker://{self.host}/{name}:{tag}"])


def parse(reference: str) -> tuple[str, str, str]:
    """(host, repository path, tag) of `reference`, Docker Hub's short names spelled out: `busybox:1.36` ->
    (`docker.io`, `library/busybox`, `1.36`); `ghcr.io/flannel-io/flannel` -> (`ghcr.io`, `flannel-io/flannel`,
    `latest`). The (path, tag) is what a mirror is asked for."""
    if "@" in reference:
        raise ValueError(f"{reference}: references by digest are not supported, give a tag")
    first, _, rest = reference.partition("/")
    host, path = (first, rest) if rest and ("." in first or ":" in first or first == "localhost") \
        else ("docker.io", reference)
    name, _, tag = path.rpartition(":") if ":" in path else (path, "", "latest")
    if host == "index.docker.io":
        host = "docker.io"
    if host == "docker.io" and "/" not in name:
        name = "library/" + name
    return host, name, tag


def populate(registry: Registry, images: list[str], work: Path) -> dict[str, Path]:
    """Push a distinct two-platform image (labelled with its reference) for every reference in `images` under its
    host-less path and tag; return reference -> the layout pushed. Two spellings of one image are pushed once; two
    upstream hosts with the same path and tag would overwrite each other in one registry, so they raise
    `ValueError` before anything is pushed."""
    owners: dict[tuple[str, str], tuple[str, str]] = {}  # (path, tag) -> (host, first reference naming it)
    for reference in images:
        host, name, tag = parse(reference)
        owner_host, owner = owners.setdefault((name, tag), (host, reference))
        if owner_host != host:
            raise ValueError(f"{reference} and {owner} would both be {name}:{tag} in one registry")
    layouts: dict[tuple[str, str], Path] = {}
    for (name, tag), (_, owner) in owners.items():
        layouts[name, tag] = make_image(work, label=owner)
        registry.push(layouts[name, tag], name, tag)
    return {reference: layouts[parse(reference)[1:]] for reference in images}
