"""Container image references and registry mirror URLs: the grammar Docker and containerd use, checked here so
that a bad entry in a profile is one line at load time, not a failure halfway through a bundle."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_REGISTRY = "docker.io"
_NAME = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"(?::[0-9]{1,5})?$")


@dataclass(frozen=True)
class Reference:
    """A fully qualified image reference: registry host, repository path, and a tag or a digest."""

    registry: str
    repository: str
    tag: str = ""
    digest: str = ""

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (f"@{self.digest}" if self.digest else f":{self.tag}")

    def on(self, host: str) -> str:
        """The same repository and tag on another registry (a mirror): the path stays, only the host changes."""
        return f"{host}/{self.repository}" + (f"@{self.digest}" if self.digest else f":{self.tag}")


def parse_reference(text: str) -> Reference:
    """`text` as a Reference, with Docker's defaults (`busybox` is docker.io/library/busybox:latest); ValueError
    naming what is wrong for anything else."""
    rest, digest = text.split("@", 1) if "@" in text else (text, "")
    if digest and not DIGEST.match(digest):
        raise ValueError(f"{text!r}: the digest must be sha256: and 64 hex digits")
    name, tag = rest, ""
    if ":" in rest.rsplit("/", 1)[-1]:
        name, tag = rest.rsplit(":", 1)
        if not _TAG.match(tag):
            raise ValueError(f"{text!r}: {tag!r} is not an image tag")
    first, _, remainder = name.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, remainder
        if not _HOST.match(registry):
            raise ValueError(f"{text!r}: {registry!r} is not a registry host")
    else:
        registry, repository = DEFAULT_REGISTRY, name
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    if not _NAME.match(repository):
        raise ValueError(f"{text!r} is not an image reference (like registry.example.com/team/app:1.2)")
    return Reference(registry, repository, tag or ("" if digest else "latest"), digest)


def mirror_host(url: str) -> tuple[str, bool]:
    """(HOST[:PORT], plain http) of a registry mirror URL; ValueError unless it is http(s)://HOST[:PORT]."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or not _HOST.match(parts.netloc):
        raise ValueError(f"{url!r} is not a registry mirror URL like https://mirror.example.com or "
                         "http://192.168.6.2:5000")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a registry mirror is a host (the image's path is kept): drop {parts.path!r}")
    return parts.netloc, parts.scheme == "http"


