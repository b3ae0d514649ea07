"""Checks of single setting values (hostnames, time zones, locales, keyboard layouts, SSH keys, password hashes,
addresses, URLs).

Each check returns None when the value is fine, else the reason it is not, written to follow "KEY: " in a
one-line error: `profiles/x.yaml:4: 'timezone': unknown time zone 'Europe/Londn' (did you mean 'Europe/London'?)`.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import re
import zoneinfo
from collections.abc import Callable
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from firstboot import protocol

from .references import mirror_host, parse_reference

Check = Callable[[object], "str | None"]

SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                 "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
# crypt(3) methods every supported target's libc reads (L4T R32 = glibc 2.27: no yescrypt there, so $6$ is the
# portable choice pi-image itself makes; $y$/$gy$ are accepted for images that read them).
CRYPT_RE = re.compile(r"^\$(6|5|y|gy|2[aby]|7)\$[./A-Za-z0-9$=,]+$")
# language[_TERRITORY][.codeset][@modifier], as glibc names locales; C.UTF-8 is built into glibc (and Debian's).
LOCALE_RE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2}|_[0-9]{3})?(\.[A-Za-z0-9-]+)?(@[a-z]+)?$")
BUILT_IN_LOCALES = ("C", "C.UTF-8", "C.utf8", "POSIX")
# glibc's list of the locales it can generate (the `locales` package) and XKB's list of layouts (`xkb-data`): when
# the build host has them, a value must be in them; without them, only its form is checked.
SUPPORTED_LOCALES = Path("/usr/share/i18n/SUPPORTED")
XKB_RULES = Path("/usr/share/X11/xkb/rules/base.lst")


def hostname(value: object) -> str | None:
    """A Kubernetes node name: a lower-case RFC 1123 label (the hostname is the node name)."""
    if protocol.NODE_NAME_RE.match(str(value)):
        return None
    return (f"{value!r} is not a valid host name: use lower-case letters, digits and '-' "
            f"(at most 63, e.g. {_slug(str(value))!r})")


def login_name(value: object) -> str | None:
    """A user name useradd accepts on Debian-family systems."""
    if re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", str(value)) and value != "root":
        return None
    return f"{value!r} is not a login name for the admin (lower-case letters, digits, '_' and '-'; not root)"


def time_zone(value: object) -> str | None:
    """An IANA time zone name known to the tz database."""
    known = zoneinfo.available_timezones()  # the system's tz database, else the `tzdata` package (a dependency)
    if value in known or not known:
        return None
    close = difflib.get_close_matches(str(value), sorted(known), n=1)
    return f"unknown time zone {value!r}" + (f" (did you mean {close[0]!r}?)" if close else " (like Europe/London)")


def locale_name(value: object) -> str | None:
    """A locale glibc can generate, like en_GB.UTF-8 (or a built-in one: C.UTF-8, C, POSIX)."""
    text = str(value)
    if text in BUILT_IN_LOCALES:
        return None
    known = _supported_locales()
    if LOCALE_RE.match(text) and (not known or text in known):
        return None
    close = difflib.get_close_matches(text, sorted(known), n=1) if known else []
    return (f"{text!r} is not a locale glibc can generate"
            + (f" (did you mean {close[0]!r}?)" if close else " (like en_GB.UTF-8, de_DE.UTF-8 or C.UTF-8)"))


def keyboard_layout(value: object) -> str | None:
    """An XKB keyboard layout name, like us, gb or de."""
    text = str(value)
    known = _xkb_layouts()
    if re.fullmatch(r"[a-z][a-z0-9]{1,7}", text) and (not known or text in known):
        return None
    close = difflib.get_close_matches(text.lower(), sorted(known), n=1) if known else []
    return (f"{text!r} is not a keyboard layout" +
            (f" (did you mean {close[0]!r}?)" if close else " (an XKB name in lower case, like us, gb, de or fr)"))


def locale_charmap(name: str) -> str:
    """The character set `locale-gen` builds locale `name` in (the second field of its locale.gen line): glibc's
    SUPPORTED list says, else the name's own codeset (UTF-8 when it names none)."""
    codeset = name.partition(".")[2].partition("@")[0]
    return _supported_locales().get(name) or codeset or "UTF-8"


@cache
def _supported_locales() -> dict[str, str]:
    """Locale name -> character set, from glibc's SUPPORTED list; empty where it is not installed."""
    try:
        lines = SUPPORTED_LOCALES.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    return {fields[0]: fields[1] for fields in (line.split() for line in lines if not line.startswith("#"))
            if len(fields) == 2}


@cache
def _xkb_layouts() -> frozenset[str]:
    """The layout names of XKB's rules list (its `! layout` section), empty where it is not installed."""
    try:
        lines = XKB_RULES.read_text(encoding="utf-8").splitlines()
    except OSError:
        return frozenset()
    names, inside = set(), False
    for line in lines:
        if line.startswith("!"):
            inside = line.split()[1:2] == ["layout"]
        elif inside and line.strip():
            names.add(line.split()[0])
    return frozenset(names)


def ssh_public_key(value: object) -> str | None:
    """One OpenSSH public key line: `TYPE BASE64 [comment]` whose blob names the same type."""
    fields = str(value).split()
    if len(fields) < 2 or fields[0] not in SSH_KEY_TYPES:
        return (f"{_short(value)} is not an SSH public key (expected a line of a .pub file, like "
                "'ssh-ed25519 AAAA... you@laptop')")
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        return f"{_short(value)}: the key data is not base64"
    kind = fields[0].encode()
    if blob[:4] != len(kind).to_bytes(4, "big") or blob[4:4 + len(kind)] != kind:
        return f"{_short(value)}: the key data does not hold a {fields[0]} key"
    return None


def password_hash(value: object) -> str | None:
    """A crypt(3) hash of a modern method, never a plaintext."""
    if CRYPT_RE.match(str(value)):
        return None
    return ("is not a crypt(3) hash (like '$6$...'); never put a plaintext password in a profile: "
            "use `pi-image build --password-file FILE` (or --password to be prompted)")


def ip_address(value: object) -> str | None:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return f"{value!r} is not an IP address (like 192.168.6.1)"
    return None


def ip_interface(value: object) -> str | None:
    try:
        ipaddress.ip_interface(str(value))
    except ValueError:
        return f"{value!r} is not an address (like 192.168.6.15 or 192.168.6.15/24)"
    return None


def http_url(value: object) -> str | None:
    parts = urlsplit(str(value))
    if parts.scheme in ("http", "https") and parts.netloc and not any(c.isspace() for c in str(value)):
        return None
    return f"{value!r} is not an http:// or https:// URL"


def proxy_url(value: object) -> str | None:
    """An http(s) proxy URL without a user:password part (it would be readable in apt.conf.d and systemd units)."""
    problem = http_url(value)
    if problem is None and "@" in urlsplit(str(value)).netloc:
        return ("must not hold a user name or password (they would be readable by every user of the node): "
                "give the proxy without them and put credentials in /etc/apt/auth.conf.d with an --overlay")
    return problem


def kube_repo_url(value: object) -> str | None:
    """An apt repository URL for the Kubernetes packages; `{version}` stands for the minor (1.31)."""
    try:
        return http_url(str(value).format(version="1.31"))
    except (KeyError, IndexError, ValueError):
        return f"{value!r}: the only placeholder allowed is {{version}}"


def image_reference(value: object) -> str | None:
    """A container image reference (registry/repository:tag or @sha256:...)."""
    try:
        parse_reference(str(value))
    except ValueError as err:
        return str(err)
    return None


def registry_mirrors(value: object) -> str | None:
    """{registry host: mirror URL}: each host a registry name (registry.k8s.io, docker.io), each URL http(s)://HOST."""
    for host, url in dict(value).items():  # type: ignore[call-overload]
        problem = image_reference(f"{host}/x/y:z")
        if problem or "/" in str(host):
            return f"{host!r} is not a registry host name (like registry.k8s.io, docker.io, ghcr.io)"
        try:
            mirror_host(str(url))
        except ValueError as err:
            return f"{host}: {err}"
    return None


def package_mirrors(value: object) -> str | None:
    """{archive URL: mirror URL}, both http(s) URLs: where the build host fetches an image's archives from."""
    for archive, mirror in dict(value).items():  # type: ignore[call-overload]
        problem = http_url(archive) or http_url(mirror)
        if problem:
            return problem
    return None


def wifi_country(value: object) -> str | None:
    if re.fullmatch(r"[A-Z]{2}", str(value)):
        return None
    return f"{value!r} is not a two-letter country code in capitals (like GB, US, CN)"


def wifi_psk(value: object) -> str | None:
    """WPA: 8 to 63 printable ASCII characters, or 64 hex digits (nothing that could end a line of a keyfile)."""
    if re.fullmatch(r"[\x20-\x7e]{8,63}|[0-9a-fA-F]{64}", str(value)):
        return None
    return "a WPA passphrase has 8 to 63 printable ASCII characters (or is 64 hex digits)"


def wifi_ssid(value: object) -> str | None:
    """An SSID: 1 to 32 bytes of UTF-8, no control characters."""
    text = str(value)
    if 1 <= len(text.encode()) <= 32 and not any(ord(c) < 0x20 or ord(c) == 0x7f for c in text):
        return None
    return "an SSID has 1 to 32 bytes and no control characters (no newline or tab)"


def kernel_argument(value: object) -> str | None:
    if re.fullmatch(r"[\x21\x23-\x26\x28-\x7e]+", str(value)):  # printable ASCII but space and quotes
        return None
    return f"{_short(value)} is not one kernel argument (printable ASCII, no spaces or quotes)"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "...'"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63] or "pi-node"


def between(low: float, high: float, unit: str = "") -> Check:
    """A check that a number lies in [low, high]."""
    def check(value: object) -> str | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high:
            return None
        return f"{value!r} is out of range: give a number from {low:g} to {high:g}{unit}"
    return check
