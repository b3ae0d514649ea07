"""The pkgs.k8s.io apt signing key: from a file the user gives, or downloaded once per minor (through the bounded
download client, builder/bases/download.py: https redirects only, MAX_KEY_BYTES, the floor rate) and cached.

apt's `signed-by=` wants a binary OpenPGP keyring; the Release.key is ASCII-armored, so it is dearmored here
(base64 body between the armor lines, without the CRC line) — no gpg needed.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from ..errors import UserError
from ..image.inputs import default_cache_dir
from ..outputs import write_atomic
from .download import Failed, get_small

KEY_URL = "https://pkgs.k8s.io/core:/stable:/v{minor}/deb/Release.key"
MAX_KEY_BYTES = 1 << 20  # a Release.key is a few KiB


def dearmor(data: bytes, source: str) -> bytes:
    """Binary OpenPGP data from armored (or already binary) `data`."""
    text = data.decode("ascii", errors="replace")
    if "-----BEGIN PGP PUBLIC KEY BLOCK-----" not in text:
        if data[:1] and data[0] & 0x80:  # an OpenPGP packet tag: already binary
            return data
        raise UserError(f"{source}: not an OpenPGP public key (armored or binary)")
    body = text.split("-----BEGIN PGP PUBLIC KEY BLOCK-----", 1)[1].split("-----END PGP PUBLIC KEY BLOCK-----", 1)[0]
    lines = body.strip().splitlines()
    if "" in lines:  # armor headers end at the first blank line
        lines = lines[lines.index("") + 1:]
    lines = [line.strip() for line in lines if line.strip() and not line.startswith("=")]
    try:
        return base64.b64decode("".join(lines), validate=True)
    except binascii.Error:
        raise UserError(f"{source}: the armored key is corrupt (bad base64)") from None


def kube_keyring(minor: str, key_file: Path | None, cache_dir: Path | None = None,
                 download: bool = True) -> bytes | None:
    """The dearmored keyring for Kubernetes `minor`, from `key_file` or the cache (downloading it if needed, unless
    `download` is False: a dry run then plans without it)."""
    if key_file is not None:
        try:
            return dearmor(key_file.read_bytes()[:MAX_KEY_BYTES], str(key_file))
        except OSError as err:
            raise UserError(f"--kube-key {key_file}: {err.strerror}") from None
    cached = (cache_dir or default_cache_dir()) / "keys" / f"kubernetes-v{minor}.gpg"
    if cached.is_file():
        return cached.read_bytes()
    if not download:
        return None
    url = KEY_URL.format(minor=minor)
    try:
        armored = get_small(url, MAX_KEY_BYTES, "apt key")
    except Failed as err:
        raise UserError(f"cannot download the Kubernetes {minor} apt key from {url} ({err.reason}): "
                        f"download it elsewhere and pass --kube-key FILE") from None
    keyring = dearmor(armored, url)
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cached, keyring, 0o644)
    return keyring
