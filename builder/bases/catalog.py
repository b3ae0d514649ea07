"""Base images by name: the shipped catalog (builder/data/catalog.yaml) plus the user's, and `resolve_base()`, which
turns what `--base` (or a profile's `base:`) says into a verified file on disk.

    resolve_base("ubuntu-24.04")               # a catalog name: its download in the cache, checked against its hash
    resolve_base("https://host/x.img.xz")      # a URL: checked against x.img.xz.sha256 / SHA256SUMS beside it, or
    resolve_base("https://host/x.img.xz#sha256=HEX")   # against the hash the user appends
    resolve_base("./x.img.xz")                 # a file or directory: itself

Where a hash comes from is data (the catalog), how bytes are fetched and checked is builder/bases/download.py. Catalog
URLs are https; plain http is accepted only for loopback hosts (127.0.0.0/8, localhost, ::1) in a user catalog or
`--base URL`: a local mirror, and the test suite's server. Hashes are never optional.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .. import DATA_DIR
from ..errors import UserError
from ..image.inputs import default_cache_dir
from ..run import run, summarize
from ..targets import TARGETS as TARGET_CLASSES
from . import download as downloads
from .download import Fetched, NotFound, get_small, url_problem

SHIPPED_CATALOG = DATA_DIR / "catalog.yaml"
SHIPPED_KEYRINGS = DATA_DIR / "keyrings"
TARGETS = tuple(dict.fromkeys(t.name for t in TARGET_CLASSES if t.in_catalog))  # what a catalog entry may hold
KEYS = ("description", "target", "url", "size", "sha256", "md5", "sums_url", "sums_signature_url", "keyring",
        "file_name", "default")
MAX_SUMS_BYTES = 1 << 20  # a SHA256SUMS of a whole release directory is a few KiB
MAX_SIGNATURE_BYTES = 64 << 10
_NAME = re.compile(r"[a-z0-9][a-z0-9._+-]{0,63}")
_YAML_KINDS = {"int": "a number", "float": "a number", "bool": "true/false", "null": "null", "timestamp": "a date"}
_HEX = {"sha256": re.compile(r"[0-9a-f]{64}"), "md5": re.compile(r"[0-9a-f]{32}")}


@dataclass(frozen=True)
class CatalogEntry:
    """One base image the catalog knows by name, and where its SHA-256 comes from."""

    name: str
    description: str
    target: str  # the pi-image target its image holds (one of TARGETS)
    url: str
    size: int | None = None  # bytes of the download: progress, and a bound on what the server may send
    sha256: str | None = None  # pinned
    md5: str | None = None  # where the vendor publishes nothing better
    sums_url: str | None = None  # the vendor's SHA256SUMS or URL.sha256
    sums_signature_url: str | None = None  # its detached OpenPGP signature
    keyring: Path | None = None  # the vendor's public key(s) that signature must verify with
    file_name: str = ""  # the image's name in the sums file (default: the URL's last part)
    source: str = ""  # the catalog file that defined it, for messages
    default: bool = False  # the base a profile for its target (or family) builds on when nothing names one

    def verification(self) -> str:
        """How a download is checked, in words: for `pi-image bases`."""
        if self.sha256:
            return "SHA-256 pinned in the catalog"
        if not self.sums_url:
            return "MD5 pinned (the vendor publishes no SHA-256)"
        sums = Path(urlsplit(self.sums_url).path).name
        sums = "IMAGE.sha256" if sums == f"{self.file_name}.sha256" else sums
        if self.sums_signature_url and self.keyring:
            return f"signed {sums} ({self.keyring.name})"
        return f"{sums} over https (unsigned)"


def user_catalog_path() -> Path:
    """`$PI_IMAGE_CATALOG`, else `$XDG_CONFIG_HOME/pi-image/catalog.yaml` (`~/.config/...`)."""
    if os.environ.get("PI_IMAGE_CATALOG"):
        return Path(os.environ["PI_IMAGE_CATALOG"])
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "pi-image" / "catalog.yaml"


def load_catalog() -> dict[str, CatalogEntry]:
    """The shipped catalog, then the user's: new names are added, a shipped name's keys are overridden one by one.

    Every entry is checked completely (known keys, https URLs, a known target, at least one hash source, an
    existing keyring); a bad one is a UserError naming the file, the line, the entry and the key.
    """
    return _load_catalog()[0]


def default_base(targets: tuple[str, ...]) -> str | None:
    """The base a profile for `targets` (its target, or its family's) builds on when nothing names one.

    The user's choice wins: the first entry the user catalog itself marks `default: true` among `targets` (an
    override like `ubuntu-22.04: {default: true}` is enough); else the first entry marked so in the merged catalog,
    which is the shipped default unless the user set `default: false` on it. None if no entry is marked.
    """
    catalog, marked = _load_catalog()
    candidates = [catalog[name] for name in marked] + list(catalog.values())
    return next((entry.name for entry in candidates if entry.default and entry.target in targets), None)


def _load_catalog() -> tuple[dict[str, CatalogEntry], list[str]]:
    """The merged catalog (see `load_catalog`), and the names the user catalog marks `default: true`, in its order."""
    raw = {entry[0]: entry for entry in _read(SHIPPED_CATALOG, shipped=True)}
    marked = []
    user = user_catalog_path()
    if user.is_file() or os.environ.get("PI_IMAGE_CATALOG"):
        for name, path, lines, fields in _read(user, shipped=False):
            raw[name] = (name, path, lines, {**raw[name][3], **fields} if name in raw else fields)
            if fields.get("default") is True:
                marked.append(name)
    return {name: _entry(*entry) for name, entry in raw.items()}, marked


def resolve_base(spec: str, *, cache_dir: Path | None = None, download: bool = True) -> Path:
    """The file `spec` names: an existing file or directory as is; a catalog name (or the file name of a catalog
    entry's image) or an https URL as its verified download in the cache, fetched if needed unless `download` is
    False (--dry-run), in which case only a cached copy will do."""
    if Path(spec).exists():
        return Path(spec)
    return fetch_base(spec, cache_dir=cache_dir, download=download).path


def fetch_base(spec: str, *, cache_dir: Path | None = None, download: bool = True) -> Fetched:
    """The verified download of the catalog name or URL `spec` (see `resolve_base`), and whether it was fetched now."""
    cache = cache_dir or default_cache_dir()
    if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", spec):
        return fetch_url(spec, cache, download=download)
    catalog = load_catalog()
    entry = catalog.get(spec) or next((e for e in catalog.values() if e.file_name == spec), None)
    if entry is None:
        close = difflib.get_close_matches(spec, list(catalog), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UserError(f"base '{spec}' is not a file, a URL or a catalog name: {hint}"
                        "`pi-image bases` lists the names pi-image can download")
    return fetch_entry(entry, cache, download=download)


def fetch_entry(entry: CatalogEntry, cache_dir: Path, *, download: bool = True) -> Fetched:
    """`entry`'s cached download, or (with `download`) a fresh one, verified before it appears in the cache."""
    cached = downloads.cached(entry.url, cache_dir, entry.sha256)
    if cached:
        return cached
    if not download:
        raise _not_downloaded(entry.name)
    request = downloads.Request(entry.url, entry.name, entry.sha256, entry.size, entry.md5)
    return downloads.fetch(request, cache_dir, (lambda: _sums_hash(entry)) if entry.sums_url else None)


def fetch_url(spec: str, cache_dir: Path, *, download: bool = True) -> Fetched:
    """The cached or (with `download`) fresh download of a `--base URL[#sha256=HEX]` outside the catalog, checked
    against the appended hash, else the URL.sha256 or SHA256SUMS beside it."""
    url, _, fragment = spec.partition("#")
    pinned = fragment[len("sha256="):].lower() if fragment.startswith("sha256=") else None
    if fragment and not (pinned and _HEX["sha256"].fullmatch(pinned)):
        raise UserError(f"--base {spec}: the only fragment pi-image reads is #sha256= and 64 hex digits")
    problem = url_problem(url)
    if problem:
        raise UserError(f"--base {url}: {problem}")
    cached = downloads.cached(url, cache_dir, pinned)
    if cached:
        return cached
    if not download:
        raise _not_downloaded(spec)
    file_name = Path(urlsplit(url).path).name
    return downloads.fetch(downloads.Request(url, file_name, pinned), cache_dir,
                           None if pinned else lambda: _beside(url, file_name))


def _not_downloaded(what: str) -> UserError:
    return UserError(f"base {what} is not downloaded yet and --dry-run never downloads: "
                     f"run `pi-image fetch {shlex.quote(what)}` first")


def _sums_hash(entry: CatalogEntry) -> str:
    """The SHA-256 the vendor's sums file gives for `entry`, its signature checked first where there is one."""
    assert entry.sums_url
    sums = get_small(entry.sums_url, MAX_SUMS_BYTES, "checksum file")
    if entry.sums_signature_url:
        assert entry.keyring
        verify_signature(sums, get_small(entry.sums_signature_url, MAX_SIGNATURE_BYTES, "signature"), entry.keyring,
                         entry.sums_url)
    digest = sums_lookup(sums, entry.file_name, entry.sums_url)
    if digest is None:
        raise UserError(f"{entry.sums_url} lists no SHA-256 for {entry.file_name}: the vendor has moved on; point "
                        f"'{entry.name}' at the current image in {user_catalog_path()} (see `pi-image bases`)")
    return digest


def _beside(url: str, file_name: str) -> str:
    """For a URL outside the catalog: the hash in URL.sha256, else in the SHA256SUMS of its directory."""
    for sums_url in (url + ".sha256", url.rsplit("/", 1)[0] + "/SHA256SUMS"):
        try:
            digest = sums_lookup(get_small(sums_url, MAX_SUMS_BYTES, "checksum file"), file_name, sums_url)
        except NotFound:
            continue
        if digest:
            return digest
    raise UserError(f"--base {url}: nothing to check it against (no {file_name}.sha256 and no SHA256SUMS listing it "
                    f"beside it): append #sha256=HEX with the vendor's published SHA-256, or add it to "
                    f"{user_catalog_path()}")


def sums_lookup(text: bytes, file_name: str, sums_url: str) -> str | None:
    """The SHA-256 that a `sha256sum`-style file (`HEX  NAME` or `HEX *NAME` lines), read from `sums_url`, gives for
    `file_name`; a UserError if it gives two different ones."""
    found = None
    for line in text.decode("utf-8", errors="replace").splitlines():
        fields = line.strip().split(None, 1)
        if len(fields) == 2 and _HEX["sha256"].fullmatch(fields[0].lower()):
            name = fields[1].strip().lstrip("*")
            if name.removeprefix("./") == file_name:
                digest = fields[0].lower()
                if found and digest != found:
                    raise UserError(f"{sums_url} lists {file_name} twice with different SHA-256s ({found} and "
                                    f"{digest}): refusing both, nothing was downloaded; the vendor's file is broken "
                                    "or tampered with: try again later, or pin the SHA-256 you trust (`sha256:` in "
                                    "a catalog entry, #sha256=HEX after a URL)")
                found = digest
    return found


def verify_signature(data: bytes, signature: bytes, keyring: Path, what: str) -> None:
    """Refuse `data` unless `signature` is a good detached signature of it by a key in `keyring` (gpgv)."""
    with tempfile.TemporaryDirectory(prefix="pi-image-gpgv-") as scratch:
        data_file, signature_file = Path(scratch) / "data", Path(scratch) / "data.sig"
        data_file.write_bytes(data)
        signature_file.write_bytes(signature)
        proc = run(["gpgv", "--homedir", scratch, "--keyring", str(keyring.resolve()), str(signature_file),
                    str(data_file)], check=False)
    if proc.returncode != 0:
        raise UserError(f"{what}: its signature does not verify with {keyring.name} ({summarize(proc.stderr, 200)}): "
                        "refusing it; nothing was downloaded or cached")


def _read(path: Path, *, shipped: bool) -> list[tuple[str, Path, dict[str, int], dict[str, Any]]]:
    """(name, path, line of each key ("" for the name's), fields) of each entry of the catalog `path`, its
    structure checked. Names and fields are built from the same YAML nodes the lines come from."""
    construct = yaml.constructor.SafeConstructor().construct_document
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
        data = construct(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise UserError(f"{path}:{line}: invalid YAML: {getattr(err, 'problem', err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read this catalog: {getattr(err, 'strerror', None) or err}") from None
    if data is None and not shipped:
        return []
    if (node is None or not isinstance(data, dict) or set(data) != {"bases"} or len(node.value) != 1
            or not isinstance(data["bases"], dict)):
        raise UserError(f"{path}:1: a catalog is one mapping `bases:` of NAME: {{url: ..., ...}}")
    entries: list[tuple[str, Path, dict[str, int], dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for key_node, value_node in node.value[0][1].value:
        name, fields, line = construct(key_node), construct(value_node), key_node.start_mark.line + 1
        if not isinstance(name, str):
            kind = key_node.tag.rsplit(":", 1)[-1]
            raise UserError(f"{path}:{line}: {key_node.value} is not a base name: YAML reads it as "
                            f"{_YAML_KINDS.get(kind, kind)}; quote it (\"{key_node.value}\":) or use lower-case "
                            "letters, digits, '.', '-', '+'")
        if not _NAME.fullmatch(name):
            raise UserError(f"{path}:{line}: {name!r} is not a base name: lower-case letters, digits, '.', '-', '+'")
        if name in seen:
            raise UserError(f"{path}:{line}: {name} is defined twice (first on line {seen[name]}): keep one")
        seen[name] = line
        if not isinstance(fields, dict):
            raise UserError(f"{path}:{line}: {name}: give its url, target and hash as a mapping")
        keys = {construct(k): k.start_mark.line + 1 for k, _ in value_node.value}
        for key in fields:
            if key not in KEYS:
                close = difflib.get_close_matches(str(key), KEYS, n=1)
                raise UserError(f"{path}:{keys.get(key, line)}: {name}: unknown key '{key}'"
                                + (f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(KEYS)})"))
        entries.append((name, path, {"": line, **keys}, fields))
    return entries


def _entry(name: str, path: Path, lines: dict[str, int], fields: dict[str, Any]) -> CatalogEntry:
    """A checked CatalogEntry from the merged `fields` of `name`, last defined in `path` (`lines`: where)."""
    def bad(key: str, problem: str) -> UserError:
        return UserError(f"{path}:{lines.get(key, lines[''])}: {name}: {key}: {problem}")

    for key in ("description", "target", "url"):
        if not isinstance(fields.get(key), str) or not fields[key].strip():
            raise bad(key, "missing: every base needs a description, a target and a url")
    if fields["target"] not in TARGETS:
        raise bad("target", f"'{fields['target']}' is not one of {', '.join(TARGETS)}")
    for key in ("url", "sums_url", "sums_signature_url"):
        value = fields.get(key)
        problem = url_problem(value) if isinstance(value, str) else "not a URL"
        if value is not None and problem:
            raise bad(key, f"{value!r}: {problem}")
        if value and path == SHIPPED_CATALOG and not value.startswith("https://"):
            raise bad(key, "shipped catalog URLs are https")
    size = fields.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise bad("size", f"{size!r} is not a number of bytes")
    for key, pattern in _HEX.items():
        value = fields.get(key)
        if value is not None and not (isinstance(value, str) and pattern.fullmatch(value.lower())):
            raise bad(key, f"{value!r} is not {64 if key == 'sha256' else 32} hex digits")
    if not (fields.get("sha256") or fields.get("sums_url") or fields.get("md5")):
        raise bad("sha256", "no hash source: pin sha256, or give the vendor's sums_url (SHA256SUMS or URL.sha256)")
    if bool(fields.get("sums_signature_url")) != bool(fields.get("keyring")):
        raise bad("keyring", "sums_signature_url and keyring go together: the signature and the key that made it")
    if not isinstance(fields.get("default", False), bool):
        raise bad("default", "true or false")
    file_name = fields.get("file_name") or Path(urlsplit(fields["url"]).path).name
    if not isinstance(file_name, str) or "/" in file_name or not file_name:
        raise bad("file_name", f"{file_name!r} is not a file name")
    return CatalogEntry(name, fields["description"].strip(), fields["target"], fields["url"], size,
                        (fields.get("sha256") or "").lower() or None, (fields.get("md5") or "").lower() or None,
                        fields.get("sums_url"), fields.get("sums_signature_url"),
                        _keyring(fields.get("keyring"), path, bad), file_name, str(path), fields.get("default", False))


def _keyring(value: Any, catalog: Path, bad: Any) -> Path | None:
    """The keyring file a catalog names: shipped ones by name; a user catalog's may also be a path (relative to it)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise bad("keyring", f"{value!r} is not a keyring file name")
    candidates = [SHIPPED_KEYRINGS / value] if "/" not in value else []
    if catalog != SHIPPED_CATALOG:
        candidates.insert(0, catalog.parent / value)
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        shipped = ", ".join(sorted(p.name for p in SHIPPED_KEYRINGS.iterdir()))
        relative = "; or a path relative to this catalog" if catalog != SHIPPED_CATALOG else ""
        raise bad("keyring", f"no keyring '{value}' (shipped: {shipped}{relative})")
    return found
