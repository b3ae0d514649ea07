"""The table of bad inputs that test_every_bad_input.py feeds the real CLI, one `Case` each.

A case is data: the arguments, what to put in the workspace first, and the distinctive fragments the one error line
must hold. Arguments, file texts and fragments may name workspace places as `{tmp}` (the case's own directory, also
the command's working directory), `{out}` (an empty directory for outputs), `{base}` (the Ubuntu raspi sample,
read-only), `{l4t}` (the L4T rootfs sample, read-only), `{key}` (the test apt key), `{sshkey}` (a valid .pub
file outside the workspace: every build passes one, so that the no-way-in check does not hide the error a case is
about), `{profile}` (`{tmp}/my.yaml`) and `{lab}` (`{tmp}/lab`, a copy of a cluster with node pi-worker1, after
`cluster("lab")`). Other braces (YAML flow mappings) are left alone.

`pending=` marks a case whose contract is not implemented yet (no case has one today): it is neither skipped nor
xfailed — it fails until the code does what it says, and the note is printed with the failure.

The profile-type family is generated from builder.config.profiles.SCHEMA: a new key is fed every wrong type
automatically.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builder.config.profiles import SCHEMA

Setup = Callable[["object"], None]  # takes the test's Workspace

REFUSE, ACCEPT, EITHER = "refuse", "accept", "either"  # EITHER: refused per the contract, or built with exit 0


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: tuple[str, ...] = ()  # fragments of the error line (exit 1) or of click's "Error:" line (exit 2)
    setup: tuple[Setup, ...] = ()
    exit_code: int = 1
    outcome: str = REFUSE
    forbid: tuple[str, ...] = ()  # must appear nowhere in stdout/stderr (secrets, template internals)
    env: tuple[tuple[str, str], ...] = ()
    check_output: Callable[[Path], str | None] | None = None  # for an accepted build: None if the output is right
    pending: str = ""
    timeout: float = 120


# --- setup steps ------------------------------------------------------------------------------------------------

def write(rel: str, text: str | bytes) -> Setup:
    def step(w) -> None:
        path = w.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(w.sub(text))
    step.__name__ = f"write {rel}"
    return step


def profile(text: str) -> Setup:
    return write("my.yaml", text)


def mkdir(rel: str) -> Setup:
    def step(w) -> None:
        (w.tmp / rel).mkdir(parents=True, exist_ok=True)
    return step


def cluster(rel: str = "lab") -> Setup:
    """A copy of the module's cluster (192.168.6.0/24, node pi-worker1 dc:a6:32:01:02:03 192.168.6.21)."""
    def step(w) -> None:
        shutil.copytree(w.template_cluster, w.tmp / rel, symlinks=True)
    return step


def copy_l4t(rel: str) -> Setup:
    def step(w) -> None:
        subprocess.run(["cp", "-a", str(w.l4t), str(w.tmp / rel)], check=True)
    return step


def gzip_garbage(rel: str) -> Setup:
    def step(w) -> None:
        (w.tmp / rel).write_bytes(gzip.compress(os.urandom(4096), mtime=0))
    return step


def non_utf8_name_in_image(rel: str) -> Setup:
    """A private copy of the Ubuntu sample with files named b'\\xff.yaml' where builds and inspect look: /etc,
    /etc/netplan, /etc/apt, /etc/apt/sources.list.d (made with debugfs; `ls -p` shows the raw bytes)."""
    def step(w) -> None:
        dest = w.tmp / rel
        subprocess.run(["cp", "--sparse=always", str(w.base), str(dest)], check=True)
        table = subprocess.run(["sfdisk", "--json", str(dest)], capture_output=True, check=True, text=True).stdout
        part = json.loads(table)["partitiontable"]["partitions"][1]
        spec = f"{dest}?offset={part['start'] * 512}"
        dirs = ("/etc", "/etc/netplan", "/etc/apt", "/etc/apt/sources.list.d")
        script = b"".join(b'mkdir "%s"\nwrite /dev/null "%s/\xff.yaml"\n' % (d.encode(), d.encode()) for d in dirs)
        subprocess.run(["debugfs", "-w", "-f", "-", spec], input=script, capture_output=True, check=True)
        for d in dirs:
            listing = subprocess.run(["debugfs", "-R", f"ls -p {d}", spec], capture_output=True, check=True)
            assert b"/\xff.yaml/" in listing.stdout, (spec, listing)
    return step


# --- output checks for builds a case accepts ----------------------------------------------------------------

def magic(prefix: bytes, what: str) -> Callable[[Path], str | None]:
    def check(path: Path) -> str | None:
        with open(path, "rb") as f:
            head = f.read(len(prefix))
        return None if head == prefix else f"{path.name} is not {what} (starts {head!r}): a raw image was written"
    return check


# --- command lines ----------------------------------------------------------------------------------------------

KEY = ("--kube-key", "{key}", "--ssh-key", "{sshkey}")
BUILD = ("build", *KEY, "--base", "{base}", "--output", "{out}/node.img")
BUILD_MY = (*BUILD, "--profile", "{profile}")
BUILD_8G = (*BUILD, "--profile", "worker-8g")
INIT_ARGS = {"--api-server": "192.168.6.10:6443", "--endpoint": "192.168.6.10:8443",
             "--kubernetes-version": "1.31", "--node-subnet": "192.168.6.0/24", "--gateway": "192.168.6.1"}
PRIVATE_KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
               "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
               "-----END OPENSSH PRIVATE KEY-----\n")
VALID_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0Hq8cWJbpO7mIvFq1lS6mN3pYqTtR4zV9eXwKjLcDf test"


def init(directory: str = "{tmp}/new", **changes: str | None) -> tuple[str, ...]:
    """`cluster init DIRECTORY` with the good settings, `changes` (api_server="...") replacing or dropping some."""
    args: list[str] = ["cluster", "init", directory]
    for option, value in INIT_ARGS.items():
        value = changes.get(option[2:].replace("-", "_"), value)
        if value is not None:
            args += [option, value]
    return tuple(args)


def add_node(name: str, *args: str) -> tuple[str, ...]:
    return ("cluster", "add-node", "{lab}", name, *args)


# --- the profile-type family, from the schema ------------------------------------------------------------------

WRONG = {"string": "oops", "number": "42", "float": "2.5", "list": "[a, b]", "mapping": "{a: 1}", "bool": "true",
         "null": "null"}
ALLOWED = {str: {"string"}, int: {"number"}, float: {"number", "float"}, bool: {"bool"}, list: {"list"},
           dict: {"mapping"}}
# A valid value of each mapping key, so that one field at a time can be made wrong (a new mapping key without an
# entry here gets its field cases from an empty mapping).
FIELD_BASELINES = {"wifi": {"ssid": "homelab", "psk": "secretsecret", "country": "GB"},
                   "network": {"address": "192.168.6.15/24", "gateway": "192.168.6.1"}}


def _types(spec) -> tuple[type, ...]:
    return spec.type if isinstance(spec.type, tuple) else (spec.type,)


def _allowed(spec) -> set[str]:
    return set().union(*(ALLOWED.get(t, set()) for t in _types(spec)))


def _wrong_kinds(spec) -> list[str]:
    """Every kind of YAML value `spec` does not take (null aside: see profile_type_cases)."""
    kinds = [k for k in WRONG if k not in _allowed(spec) and k != "null"]
    if int not in _types(spec):
        kinds.remove("float")  # for a string, list or mapping, 2.5 is just another number
    return kinds


def _flow(mapping: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


def _items_spec(spec):
    """The schema of a list's items: `items=` where the schema gives it (else: strings, as every list key holds)."""
    return getattr(spec, "items", None) or type(spec)(str, None, "an item")


def profile_type_cases() -> list[Case]:
    """Every key, every wrong type, in a profile file and (where --set can express it) on the command line; every
    list key's items and every mapping key's fields likewise, plus an unknown and each required field left out.

    `null` where the default is not null: refused ("is empty"), never a crash.
    `--set KEY=VALUE` for a string key keeps VALUE as text by design (`--set kubernetes_version=1.31`), so only
    non-string keys get type cases there.
    """
    cases: list[Case] = []
    for key, spec in SCHEMA.items():
        if key == "extends":
            for kind in _wrong_kinds(spec):
                cases.append(Case(f"profile-type-file-extends-{kind}", BUILD_MY, ("{profile}:1", "extends"),
                                  (profile(f"extends: {WRONG[kind]}\n"),)))
            continue
        is_str = _allowed(spec) == {"string"}
        for kind in _wrong_kinds(spec) + (["null"] if spec.default is not None else []):
            # `null` where the default is not: refused ("is empty"), never a crash
            cases.append(Case(f"profile-type-file-{key}-{kind}", BUILD_MY, ("{profile}:2", key),
                              (profile(f"extends: worker-8g\n{key}: {WRONG[kind]}\n"),)))
            if kind == "null" or not is_str:
                cases.append(Case(f"profile-type-set-{key}-{kind}", (*BUILD_8G, "--set", f"{key}={WRONG[kind]}"),
                                  ("--set", key)))
        if list in _types(spec):
            for kind in [*_wrong_kinds(_items_spec(spec)), "null"]:
                value = f"[{WRONG[kind]}]"
                cases.append(Case(f"profile-type-file-{key}-item-{kind}", BUILD_MY, ("{profile}:2", key),
                                  (profile(f"extends: worker-8g\n{key}: {value}\n"),)))
            cases.append(Case(f"profile-type-set-{key}-item-number", (*BUILD_8G, "--set", f"{key}=[123]"),
                              ("--set", key)))
        fields = getattr(spec, "fields", None) or {}
        baseline = FIELD_BASELINES.get(key, {})
        for name, field_spec in fields.items():
            kinds = [*_wrong_kinds(field_spec)]
            if list in _types(field_spec):
                kinds += [f"item-{k}" for k in _wrong_kinds(_items_spec(field_spec))]
            for kind in kinds:
                value = f"[{WRONG[kind[5:]]}]" if kind.startswith("item-") else WRONG[kind]
                body = _flow({**{k: v for k, v in baseline.items() if k != name}, name: value})
                cases.append(Case(f"profile-type-file-{key}.{name}-{kind}", BUILD_MY, ("{profile}:2", key, name),
                                  (profile(f"extends: worker-8g\n{key}: {body}\n"),)))
        if fields:
            body = _flow({**baseline, "bogus_setting": "1"})
            cases.append(Case(f"profile-type-file-{key}-unknown-field", BUILD_MY, ("{profile}:2", "bogus_setting"),
                              (profile(f"extends: worker-8g\n{key}: {body}\n"),)))
        for name in getattr(spec, "required", ()):
            body = _flow({k: v for k, v in baseline.items() if k != name})
            cases.append(Case(f"profile-type-file-{key}-without-{name}", BUILD_MY, ("{profile}:2", key, name),
                              (profile(f"extends: worker-8g\n{key}: {body}\n"),)))
    return cases


# --- the profile-value family: the right type, a wrong value ------------------------------------------------------

WIFI_OK = "ssid: homelab, psk: secretsecret, country: GB"
NET_OK = "address: 192.168.6.15/24, gateway: 192.168.6.1"


def _file(id_: str, body: str, expect: tuple[str, ...], line: int = 2, **kw) -> Case:
    return Case(f"profile-value-file-{id_}", BUILD_MY, (f"{{profile}}:{line}", *expect),
                (profile(f"extends: worker-8g\n{body}\n"),), **kw)


def _set(id_: str, assignment: str, expect: tuple[str, ...], **kw) -> Case:
    return Case(f"profile-value-set-{id_}", (*BUILD_8G, "--set", assignment), ("--set", *expect), **kw)



PROFILE_VALUE_CASES = [
    _file("key-number", "1: x", ()),
    _file("key-list", "[a]: x", ()),
    _file("key-bool", "true: x", ()),
    _file("key-null", "~: x", ()),
    _file("key-typo", "runtim: docker", ("runtim", "runtime")),
    _file("duplicate-key", "timezone: Etc/UTC\ntimezone: Europe/London", ("timezone",), line=3),
    _file("cgroup-flag-with-space", 'cgroup_flags: ["cgroup_enable=memory quiet"]', ("cgroup_flags",)),
    _file("cgroup-flag-with-quote", "cgroup_flags: ['a\"b']", ("cgroup_flags",)),
    # overlay names are resolved against the shipped set AND --overlay directories, so only the build can tell
    Case("profile-value-file-overlay-unknown", BUILD_MY, ("no-such-overlay", "profile's overlays"),
         (profile("extends: worker-8g\noverlays: [no-such-overlay]\n"),)),
    _file("network-dns-string", f"network: {{{NET_OK}, dns: 192.168.6.1}}", ("dns",)),
    _file("network-bad-address", "network: {address: 192.168.6.300/24, gateway: 192.168.6.1}",
          ("192.168.6.300",)),
    _file("network-bad-gateway", "network: {address: 192.168.6.15/24, gateway: nope}", ("nope",)),
    _file("network-bad-dns-item", f"network: {{{NET_OK}, dns: [nope]}}", ("nope",)),
    _file("ssh-key-not-a-key", "ssh_authorized_keys: [not-a-key]", ("ssh_authorized_keys", "not-a-key")),
    _file("ssh-key-bad-base64", 'ssh_authorized_keys: ["ssh-ed25519 AAAA!!!! me"]', ("ssh_authorized_keys",)),
    _file("ssh-key-private", 'ssh_authorized_keys: ["-----BEGIN OPENSSH PRIVATE KEY-----"]',
          ("ssh_authorized_keys",)),
    _file("password-hash-plaintext", "password_hash: hunter2", ("password_hash",), forbid=("hunter2",)),
    _file("timezone-typo", "timezone: Europe/Londn", ("timezone", "Europe/Londn")),
    _file("timezone-path", "timezone: ../../etc/passwd", ("timezone",)),
    _file("hostname-underscore", "hostname: My_Pi", ("hostname", "My_Pi")),
    _file("hostname-too-long", f"hostname: {'a' * 64}", ("hostname",)),
    _file("user-bad", "user: 'root:x'", ("user",)),
    _file("kubernetes-version-number", "kubernetes_version: 1.31", ("kubernetes_version",)),
    _file("kubernetes-version-1x", 'kubernetes_version: "1.x"', ("kubernetes_version", "1.x")),
    _file("kubernetes-version-v2", 'kubernetes_version: "2.0"', ("kubernetes_version", "2.0")),
    _file("role-typo", "role: wroker", ("role", "wroker")),
    _file("runtime-typo", "runtime: containerd2", ("runtime",)),
    _file("containerd-config-version-4", "containerd_config_version: 4", ("containerd_config_version",)),
    _file("target-typo", "target: ubuntu", ("target",)),
    _file("wifi-open-network", "wifi: {ssid: homelab, country: GB}", ("psk",), outcome=EITHER),
    _file("wifi-secrets-not-echoed", "wifi: {ssid: homelab, psk: secretsecret, country: Britain}", ("country",),
          forbid=("secretsecret",)),
    _file("wifi-ssid-newline", 'wifi: {ssid: "home\\n[connection]", psk: secretsecret, country: GB}', ("ssid",)),
    _file("wifi-ssid-too-long", f"wifi: {{ssid: {'s' * 33}, psk: secretsecret, country: GB}}", ("ssid",)),
    _file("wifi-psk-newline", 'wifi: {ssid: homelab, psk: "secret\\nsecret", country: GB}', ("psk",),
          forbid=("secret",)),
    _file("wifi-psk-short", "wifi: {ssid: homelab, psk: abc12, country: GB}", ("psk",), forbid=("abc12",)),
    _file("wifi-psk-too-long", f"wifi: {{ssid: homelab, psk: {'p' * 64}, country: GB}}", ("psk",),
          forbid=("p" * 64,)),
    _set("timezone-typo", "timezone=Europe/Londn", ("timezone", "Europe/Londn")),
    _set("hostname-underscore", "hostname=My_Pi", ("hostname", "My_Pi")),
    _set("password-hash-plaintext", "password_hash=hunter2", ("password_hash",), forbid=("hunter2",)),
    _set("ssh-key-not-a-key", "ssh_authorized_keys=[not-a-key]", ("ssh_authorized_keys",)),
    _set("kubernetes-version-1x", "kubernetes_version=1.x", ("kubernetes_version", "1.x")),
    _set("network-dns-string", f"network={{{NET_OK}, dns: 192.168.6.1}}", ("dns",)),
    _set("wifi-open-network", "wifi={ssid: homelab, country: GB}", ("psk",), outcome=EITHER),
    _set("role-typo", "role=wroker", ("role", "wroker")),
    _file("locale-words", "locale: English (UK)", ("locale", "English (UK)")),
    _file("locale-path", "locale: ../../etc/passwd", ("locale",)),
    _file("keyboard-capitals", "keyboard: GB", ("keyboard", "GB")),
    _file("keyboard-words", "keyboard: English (UK)", ("keyboard", "English (UK)")),
    _set("keyboard-capitals", "keyboard=GB", ("keyboard", "GB")),
    _set("locale-words", "locale=English (UK)", ("locale", "English (UK)")),
]

PROFILE_FILE_CASES = [
    Case("profile-file-not-yaml", BUILD_MY, ("{profile}:2",), (profile("extends: worker-8g\nrole: worker: x\n"),)),
    Case("profile-file-a-list", BUILD_MY, ("{profile}",), (profile("- extends: worker-8g\n"),)),
    Case("profile-file-a-string", BUILD_MY, ("{profile}",), (profile("worker-8g\n"),)),
    Case("profile-file-not-utf8", BUILD_MY, ("{profile}",), (write("my.yaml", b"extends: worker-8g\nuser: \xff\n"),)),
    Case("profile-file-missing", (*BUILD, "--profile", "{tmp}/nothere.yaml"), ("nothere.yaml",)),
    Case("profile-file-extends-unknown", BUILD_MY, ("wroker-8g", "worker-8g"), (profile("extends: wroker-8g\n"),)),
    Case("profile-file-extends-itself", BUILD_MY, ("extends",), (profile("extends: {profile}\n"),)),
    Case("profile-file-is-directory", (*BUILD, "--profile", "{tmp}/dir.yaml"), ("dir.yaml",), (mkdir("dir.yaml"),)),
    Case("profile-unknown-name", (*BUILD, "--profile", "worker-9g"), ("worker-9g", "did you mean 'worker-8g'")),
]


# --- the CLI family ----------------------------------------------------------------------------------------------

CLI_CASES = [
    # outputs
    Case("cli-output-existing-dir-force", (*BUILD[:-1], "{out}/dir", "--profile", "worker-8g", "--force"),
         ("{out}/dir",), (mkdir("out/dir"), write("out/dir/keep.txt", "mine\n"))),
    Case("cli-output-existing-dir", (*BUILD[:-1], "{out}/dir", "--profile", "worker-8g"), ("{out}/dir",),
         (mkdir("out/dir"),)),
    Case("cli-output-under-a-file", (*BUILD[:-1], "{out}/afile/node.img", "--profile", "worker-8g"),
         ("afile",), (write("out/afile", "a file\n"),)),
    Case("cli-output-gz", (*BUILD[:-1], "{out}/node.img.gz", "--profile", "worker-8g"), (".gz",),
         outcome=EITHER, check_output=magic(b"\x1f\x8b", "gzip")),
    Case("cli-output-bz2", (*BUILD[:-1], "{out}/node.img.bz2", "--profile", "worker-8g"), (".bz2",),
         outcome=EITHER, check_output=magic(b"BZh", "bzip2")),
    Case("cli-output-zip", (*BUILD[:-1], "{out}/node.zip", "--profile", "worker-8g"), (".zip",),
         outcome=EITHER, check_output=magic(b"PK\x03\x04", "a zip archive")),
    Case("cli-output-iso", (*BUILD[:-1], "{out}/node.iso", "--profile", "worker-8g"), (".iso",)),
    Case("cli-output-tree-onto-file-force",
         ("build", *KEY, "--base", "{l4t}", "--profile", "jetson-l4t", "--output", "{out}/rootfs", "--force"),
         ("{out}/rootfs",), (write("out/rootfs", "a file\n"),)),
    Case("cli-output-tree-onto-file",
         ("build", *KEY, "--base", "{l4t}", "--profile", "jetson-l4t", "--output", "{out}/rootfs"),
         ("{out}/rootfs",), (write("out/rootfs", "a file\n"),)),
    Case("cli-output-tree-under-a-file",
         ("build", *KEY, "--base", "{l4t}", "--profile", "jetson-l4t", "--output", "{out}/afile/rootfs"),
         ("afile",), (write("out/afile", "a file\n"),)),
    Case("cli-output-tree-is-the-base",
         ("build", *KEY, "--base", "{tmp}/rootfs", "--profile", "jetson-l4t", "--output", "{tmp}/rootfs", "--force"),
         ("base",), (copy_l4t("rootfs"),)),
    Case("cli-all-output-is-a-file",
         ("build", *KEY, "--base", "{base}", "--cluster", "{lab}", "--all", "--output", "{out}/afile"),
         ("afile",), (cluster(), write("out/afile", "a file\n"))),
    Case("cli-in-place-on-a-disk-image", (*BUILD_8G, "--in-place"), ("--in-place",)),
    # unwritable places
    Case("cli-cache-unwritable-raw-base", BUILD_8G, ("/dev/null/x",), env=(("PI_IMAGE_CACHE", "/dev/null/x"),)),
    Case("cli-cache-unwritable-compressed-base",
         ("build", *KEY, "--base", "{tmp}/base.img.gz", "--profile", "worker-8g", "--output", "{out}/node.img"),
         ("/dev/null/x",), (gzip_garbage("base.img.gz"),), env=(("PI_IMAGE_CACHE", "/dev/null/x"),)),
    Case("cli-inspect-cache-unwritable", ("inspect", "{tmp}/base.img.gz"), ("/dev/null/x",),
         (gzip_garbage("base.img.gz"),), env=(("PI_IMAGE_CACHE", "/dev/null/x"),)),
    # demo-image
    Case("cli-demo-image-onto-a-file", ("demo-image", "{out}/demo.img"), ("{out}/demo.img", "--force"),
         (write("out/demo.img", "someone's image\n"),)),
    Case("cli-demo-image-onto-a-directory", ("demo-image", "{out}/dir"), ("{out}/dir",), (mkdir("out/dir"),)),
    Case("cli-demo-image-under-a-file", ("demo-image", "{out}/afile/demo.img"), ("afile",),
         (write("out/afile", "x\n"),)),
    Case("cli-demo-image-unknown-release", ("demo-image", "--release", "99.99", "{out}/demo.img"), ("99.99",)),
    Case("cli-demo-image-unknown-target", ("demo-image", "--target", "windows", "{out}/demo.img"), ("windows",),
         exit_code=2),
    # the base
    Case("cli-base-missing", ("build", *KEY, "--base", "{tmp}/nothere.img", "--output", "{out}/node.img",
                              "--profile", "worker-8g"), ("nothere.img",)),
    Case("cli-base-directory-not-a-rootfs", ("build", *KEY, "--base", "{tmp}/stuff", "--output", "{out}/node.img",
                                             "--profile", "worker-8g"), ("stuff",),
         (write("stuff/readme.txt", "not an OS\n"),)),
    Case("cli-base-empty-file", ("build", *KEY, "--base", "{tmp}/empty.img", "--output", "{out}/node.img",
                                 "--profile", "worker-8g"), ("empty.img",), (write("empty.img", b""),)),
    Case("cli-base-corrupt-gzip", ("build", *KEY, "--base", "{tmp}/base.img.gz", "--output", "{out}/node.img",
                                   "--profile", "worker-8g"), ("base.img.gz",), (gzip_garbage("base.img.gz"),)),
    Case("cli-base-truncated-xz", ("build", *KEY, "--base", "{tmp}/base.img.xz", "--output", "{out}/node.img",
                                   "--profile", "worker-8g"), ("base.img.xz",),
         (write("base.img.xz", b"\xfd7zXZ\x00\x00\x04\xe6\xd6\xb4F"),)),
    Case("cli-base-non-utf8-file-name-build",
         ("build", *KEY, "--base", "{tmp}/odd.img", "--output", "{out}/node.img", "--profile", "worker-8g"),
         ("netplan",), (non_utf8_name_in_image("odd.img"),), outcome=EITHER),
    Case("cli-base-non-utf8-file-name-inspect", ("inspect", "{tmp}/odd.img"), ("netplan",),
         (non_utf8_name_in_image("odd.img"),), outcome=EITHER),
    Case("cli-inspect-missing", ("inspect", "{tmp}/nothere.img"), ("nothere.img",)),
    Case("cli-base-of-another-target", (*BUILD, "--profile", "jetson-gpu"), ("jetson-sd", "ubuntu-raspi")),
    # options
    Case("cli-set-without-equals", (*BUILD_8G, "--set", "timezone"), ("--set", "timezone")),
    Case("cli-set-unknown-key", (*BUILD_8G, "--set", "unknownkey=1"), ("--set", "unknownkey")),
    Case("cli-set-empty-key", (*BUILD_8G, "--set", "=1"), ("--set",)),
    Case("cli-set-not-yaml", (*BUILD_8G, "--set", "cgroup_flags=[a"), ("--set", "cgroup_flags")),
    Case("cli-all-without-cluster", (*BUILD_8G, "--all"), ("--all", "--cluster")),
    Case("cli-cluster-and-no-cluster", (*BUILD_8G, "--cluster", "{lab}", "--no-cluster"), ("--no-cluster",),
         (cluster(),), exit_code=2),
    Case("cli-flash-node-without-cluster", ("flash", "{base}", "{out}/card.img", "--yes", "--node", "pi-worker1"),
         ("without a cluster", "--cluster")),
    Case("cli-flash-onto-a-directory", ("flash", "{base}", "{out}", "--yes"), ("directory",)),
    Case("cli-flash-unknown-node", ("flash", "{base}", "{out}/card.img", "--yes", "--node", "nobody", "--cluster",
                                    "{lab}"), ("without a cluster",), (cluster(),)),
    Case("cli-cluster-missing", (*BUILD_8G, "--cluster", "{tmp}/nothere", "--node", "pi-worker1"), ("nothere",)),
    Case("cli-cluster-unknown-node", (*BUILD_8G, "--cluster", "{lab}", "--node", "nobody"), ("nobody",),
         (cluster(),)),
    Case("cli-node-bad-name", (*BUILD_8G, "--node", "My_Pi"), ("My_Pi",)),
    Case("cli-no-profile", BUILD, ("--profile",)),
    Case("cli-kube-key-not-a-key", ("build", "--kube-key", "{tmp}/key.asc", *BUILD_8G[3:]), ("key.asc",),
         (write("key.asc", "hello\n"),)),
    # a way in (issue 12 item 5)
    Case("cli-login-none", ("build", "--kube-key", "{key}", "--base", "{base}", "--output", "{out}/node.img",
                            "--profile", "worker-8g"), ("--ssh-key",)),
    Case("cli-ssh-key-missing", (*BUILD_8G, "--ssh-key", "{tmp}/nothere.pub"), ("nothere.pub",)),
    Case("cli-ssh-key-not-a-key", (*BUILD_8G, "--ssh-key", "{tmp}/id.pub"), ("id.pub",),
         (write("id.pub", "hello\n"),)),
    Case("cli-ssh-key-is-the-private-key", (*BUILD_8G, "--ssh-key", "{tmp}/id_ed25519"), ("id_ed25519",),
         (write("id_ed25519", PRIVATE_KEY),), forbid=(PRIVATE_KEY.splitlines()[1],)),
    Case("cli-ssh-key-directory", (*BUILD_8G, "--ssh-key", "{tmp}/keys"), ("keys",), (mkdir("keys"),),
         exit_code=2),
    Case("cli-password-file-missing", (*BUILD_8G, "--password-file", "{tmp}/nothere.txt"), ("nothere.txt",)),
    Case("cli-password-file-too-short", (*BUILD_8G, "--password-file", "{tmp}/pw.txt"), ("--password-file", "8"),
         (write("pw.txt", "pw1234\n"),), forbid=("pw1234",)),
    Case("cli-password-file-empty", (*BUILD_8G, "--password-file", "{tmp}/pw.txt"), ("--password-file", "empty"),
         (write("pw.txt", ""),)),
    Case("cli-password-file-not-utf8", (*BUILD_8G, "--password-file", "{tmp}/pw.txt"), ("pw.txt",),
         (write("pw.txt", b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\n"),)),
    Case("cli-password-and-password-file", (*BUILD_8G, "--password", "--password-file", "{tmp}/pw.txt"),
         ("--password",), (write("pw.txt", "longenough\n"),), exit_code=2),
    Case("cli-kube-key-missing", ("build", "--kube-key", "{tmp}/nothere.asc", "--profile", "worker-8g"),
         ("nothere.asc",), exit_code=2),
    Case("cli-overlay-missing", (*BUILD_8G, "--overlay", "{tmp}/nothere"), ("nothere",), exit_code=2),
    Case("cli-overlay-yaml-invalid", (*BUILD_8G, "--overlay", "{tmp}/ov"), ("overlay.yaml",),
         (write("ov/overlay.yaml", "files: [\n"), write("ov/etc/motd", "hi\n"))),
    Case("cli-overlay-yaml-a-list", (*BUILD_8G, "--overlay", "{tmp}/ov"), ("overlay.yaml",),
         (write("ov/overlay.yaml", "- files\n"), write("ov/etc/motd", "hi\n"))),
    Case("cli-unknown-command", ("biuld",), ("biuld",), exit_code=2),
    Case("cli-unknown-option", ("build", "--profle", "worker-8g"), ("--profle",), exit_code=2),
]


# --- the cluster family ------------------------------------------------------------------------------------------

CLUSTER_CASES = [
    # init
    Case("cluster-init-api-server-no-port", init(api_server="192.168.6.10"), ("--api-server", "192.168.6.10")),
    Case("cluster-init-api-server-port-too-big", init(api_server="192.168.6.10:99999"), ("--api-server",)),
    Case("cluster-init-api-server-port-0", init(api_server="192.168.6.10:0"), ("--api-server",)),
    Case("cluster-init-api-server-url", init(api_server="https://192.168.6.10:6443"), ("--api-server",)),
    Case("cluster-init-api-server-no-host", init(api_server=":6443"), ("--api-server",)),
    Case("cluster-init-api-server-space", init(api_server="192.168.6.10 :6443"), ("--api-server",)),
    Case("cluster-init-endpoint-no-port", init(endpoint="192.168.6.10"), ("--endpoint",)),
    Case("cluster-init-endpoint-on-api-port", init(endpoint="192.168.6.10:6443"), ("--endpoint", "6443")),
    Case("cluster-init-version-word", init(kubernetes_version="latest"), ("--kubernetes-version", "latest")),
    Case("cluster-init-version-1x", init(kubernetes_version="1.x"), ("--kubernetes-version", "1.x")),
    Case("cluster-init-version-2", init(kubernetes_version="2.0"), ("--kubernetes-version", "2.0")),
    Case("cluster-init-subnet-bad-prefix", init(node_subnet="192.168.6.0/33"), ("--node-subnet",)),
    Case("cluster-init-subnet-word", init(node_subnet="lan"), ("--node-subnet", "lan")),
    Case("cluster-init-subnet-short", init(node_subnet="192.168.6/24"), ("--node-subnet",)),
    Case("cluster-init-missing-option", init(endpoint=None), ("--endpoint",), exit_code=2),
    Case("cluster-init-gateway-word", init(gateway="router"), ("--gateway", "router")),
    Case("cluster-init-gateway-outside-subnet", init(gateway="10.0.0.1"), ("--gateway", "10.0.0.1")),
    Case("cluster-init-gateway-is-the-network", init(gateway="192.168.6.0"), ("--gateway", "192.168.6.0")),
    Case("cluster-init-dns-word", (*init(), "--dns", "192.168.6.1,cloudflare"), ("--dns", "cloudflare")),
    Case("cluster-init-pod-subnet-word", (*init(), "--pod-subnet", "pods"), ("--pod-subnet", "pods")),
    Case("cluster-init-pod-subnet-ipv6", (*init(), "--pod-subnet", "fd00:10::/56"), ("--pod-subnet", "IPv4")),
    Case("cluster-init-pod-subnet-too-small", (*init(), "--pod-subnet", "10.244.0.0/24"), ("--pod-subnet", "/22")),
    Case("cluster-init-pod-subnet-overlaps-nodes", (*init(), "--pod-subnet", "192.168.0.0/16"),
         ("--pod-subnet", "overlaps", "--node-subnet")),
    Case("cluster-init-service-subnet-overlaps-pods", (*init(), "--service-subnet", "10.244.128.0/20"),
         ("--service-subnet", "overlaps", "--pod-subnet")),
    Case("cluster-kubeconfig-bad-endpoint", ("cluster", "kubeconfig", "{lab}", "--endpoint", "master"),
         ("--endpoint", "master"), (cluster(),)),
    Case("cluster-kubeconfig-nobody-there", ("cluster", "kubeconfig", "{lab}", "--endpoint", "127.0.0.1:9"),
         ("127.0.0.1:9", "master"), (cluster(),)),
    Case("cluster-sync-nobody-there", ("cluster", "sync", "{lab}", "--endpoint", "127.0.0.1:9"),
         ("127.0.0.1:9", "master"), (cluster(),)),
    Case("cluster-sync-not-a-cluster", ("cluster", "sync", "{tmp}"), ("cluster.yaml", "cluster init")),
    Case("cluster-init-existing-cluster", init("{lab}"), ("{lab}", "already"), (cluster(),)),
    Case("cluster-init-onto-a-file", init("{tmp}/afile"), ("afile",), (write("afile", "x\n"),), exit_code=2),
    Case("cluster-init-under-a-file", init("{tmp}/afile/lab"), ("afile",), (write("afile", "x\n"),)),
    # add-node
    Case("cluster-add-node-bad-name", add_node("My_Pi", "--profile", "worker-8g"), ("My_Pi",), (cluster(),)),
    Case("cluster-add-node-name-too-long", add_node("a" * 64, "--profile", "worker-8g"), ("a" * 64,), (cluster(),)),
    Case("cluster-add-node-unknown-profile", add_node("pi-worker2", "--profile", "wroker-8g"),
         ("wroker-8g", "worker-8g"), (cluster(),)),
    Case("cluster-add-node-duplicate-name", add_node("pi-worker1", "--profile", "worker-8g"), ("pi-worker1",),
         (cluster(),)),
    Case("cluster-add-node-duplicate-address", add_node("pi-worker2", "--profile", "worker-8g", "--address",
                                                        "192.168.6.21"), ("192.168.6.21",), (cluster(),)),
    Case("cluster-add-node-duplicate-mac", add_node("pi-worker2", "--profile", "worker-8g", "--mac",
                                                    "DC:A6:32:01:02:03"), ("01:02:03",), (cluster(),)),
    Case("cluster-add-node-address-outside-subnet", add_node("pi-worker2", "--profile", "worker-8g", "--address",
                                                             "10.0.0.5"), ("10.0.0.5",), (cluster(),)),
    Case("cluster-add-node-address-not-ip", add_node("pi-worker2", "--profile", "worker-8g", "--address",
                                                     "192.168.6.300"), ("192.168.6.300",), (cluster(),)),
    Case("cluster-add-node-address-cidr-33", add_node("pi-worker2", "--profile", "worker-8g", "--address",
                                                      "192.168.6.15/33"), ("192.168.6.15/33",), (cluster(),)),
    Case("cluster-add-node-address-broadcast", add_node("pi-worker2", "--profile", "worker-8g", "--address",
                                                        "192.168.6.255"), ("192.168.6.255",), (cluster(),)),
    Case("cluster-add-node-bad-mac", add_node("pi-worker2", "--profile", "worker-8g", "--mac", "dc:a6:32"),
         ("dc:a6:32",), (cluster(),)),
    Case("cluster-add-node-role-conflict", add_node("pi-master1", "--profile", "master-2g", "--role", "worker"),
         ("master-2g",), (cluster(),)),
    Case("cluster-add-node-role-unknown", add_node("pi-worker2", "--profile", "worker-8g", "--role", "boss"),
         ("boss",), (cluster(),), exit_code=2),
    Case("cluster-add-node-missing-cluster", ("cluster", "add-node", "{tmp}/nothere", "pi-worker2", "--profile",
                                              "worker-8g"), ("nothere",)),
    Case("cluster-add-node-address-is-the-gateway", add_node("pi-worker2", "--profile", "worker-8g", "--address",
                                                             "192.168.6.1"), ("192.168.6.1",), (cluster(),)),
    Case("cluster-remove-node-nobody", ("cluster", "remove-node", "{lab}", "nobody"), ("nobody",), (cluster(),)),
    Case("cluster-remove-node-missing-cluster", ("cluster", "remove-node", "{tmp}/nothere", "pi-worker1"),
         ("nothere",)),
    # approve, status, token-server
    Case("cluster-approve-nobody", ("approve", "nobody", "--cluster", "{lab}"), ("nobody",), (cluster(),)),
    Case("cluster-approve-bad-name", ("approve", "My_Pi", "--cluster", "{lab}"), ("My_Pi",), (cluster(),)),
    Case("cluster-approve-missing-cluster", ("approve", "pi-worker1", "--cluster", "{tmp}/nothere"), ("nothere",)),
    Case("cluster-status-not-a-cluster", ("status", "--cluster", "{tmp}/stuff"), ("stuff",),
         (write("stuff/readme.txt", "x\n"),)),
    Case("cluster-status-missing", ("status", "--cluster", "{tmp}/nothere"), ("nothere",)),
    Case("cluster-token-server-missing", ("token-server", "--cluster", "{tmp}/nothere"), ("nothere",),
         timeout=20),
    Case("cluster-token-server-bad-listen", ("token-server", "--cluster", "{lab}", "--ca-cert", "{tmp}/ca.crt",
                                             "--listen", "127.0.0.1:99999"), ("99999",),
         (cluster(), write("ca.crt", "not a certificate\n")), timeout=20),
    # hand-edited files
    *[Case(f"cluster-file-{name}", ("status", "--cluster", "{lab}"), expect,
           (cluster(), write(f"lab/{file}", text)))
      for name, file, text, expect in [
          ("inventory-not-yaml", "inventory.yaml", "nodes: [\n", ("inventory.yaml",)),
          ("inventory-a-list", "inventory.yaml", "- name: pi-worker1\n", ("inventory.yaml",)),
          ("inventory-unknown-key", "inventory.yaml", "nodez: []\n", ("inventory.yaml", "nodez")),
          ("inventory-nodes-mapping", "inventory.yaml", "nodes: {pi-worker1: {}}\n", ("inventory.yaml", "nodes")),
          ("inventory-node-a-string", "inventory.yaml", "nodes: [pi-worker1]\n", ("inventory.yaml",)),
          ("inventory-node-unknown-key", "inventory.yaml", "nodes:\n- {name: pi-worker1, profil: worker-8g}\n",
           ("profil",)),
          ("inventory-node-without-profile", "inventory.yaml", "nodes:\n- {name: pi-worker1}\n",
           ("inventory.yaml", "profile")),
          ("inventory-node-bad-name", "inventory.yaml", "nodes:\n- {name: My_Pi, profile: worker-8g}\n",
           ("My_Pi",)),
          ("inventory-node-name-twice", "inventory.yaml",
           "nodes:\n- {name: pi-worker1, profile: worker-8g}\n- {name: pi-worker1, profile: worker-8g}\n",
           ("pi-worker1",)),
          ("inventory-node-key-number", "inventory.yaml", "nodes:\n- {name: pi-worker1, profile: worker-8g, 1: x}\n",
           ("inventory.yaml",)),
          ("inventory-not-utf8", "inventory.yaml", b"nodes:\n- {name: pi-worker1, profile: \xff}\n",
           ("inventory.yaml",)),
          ("cluster-yaml-not-yaml", "cluster.yaml", "api_server: [\n", ("cluster.yaml",)),
          ("cluster-yaml-a-list", "cluster.yaml", "- api_server\n", ("cluster.yaml",)),
          ("cluster-yaml-unknown-key", "cluster.yaml",
           "api_server: 192.168.6.10:6443\nendpoint: 192.168.6.10:8443\nkubernetes_version: '1.31'\n"
           "node_subnet: 192.168.6.0/24\ngateway: 192.168.6.1\nendpoint_fingerprint: sha256:00\napi_servr: x\n",
           ("cluster.yaml", "api_servr")),
          ("cluster-yaml-missing-keys", "cluster.yaml", "api_server: 192.168.6.10:6443\n",
           ("cluster.yaml", "endpoint")),
          ("cluster-yaml-bad-version", "cluster.yaml",
           "api_server: 192.168.6.10:6443\nendpoint: 192.168.6.10:8443\nkubernetes_version: latest\n"
           "node_subnet: 192.168.6.0/24\ngateway: 192.168.6.1\nendpoint_fingerprint: sha256:00\n",
           ("cluster.yaml", "latest")),
          ("cluster-yaml-not-utf8", "cluster.yaml", b"api_server: \xff\n", ("cluster.yaml",)),
      ]],
    Case("cluster-file-cluster-yaml-bad-subnet", add_node("pi-worker2", "--profile", "worker-8g", "--address",
                                                          "192.168.6.22"), ("cluster.yaml", "node_subnet"),
         (cluster(), write("lab/cluster.yaml",
                           "api_server: 192.168.6.10:6443\nendpoint: 192.168.6.10:8443\nkubernetes_version: '1.31'\n"
                           "node_subnet: lan\ngateway: 192.168.6.1\nendpoint_fingerprint: sha256:00\n"))),
    Case("cluster-file-cluster-yaml-pod-subnet-overlaps", add_node("pi-worker2", "--profile", "worker-8g"),
         ("cluster.yaml", "pod_subnet", "overlaps"),
         (cluster(), write("lab/cluster.yaml",
                           "api_server: 192.168.6.10:6443\nendpoint: 192.168.6.10:8443\nkubernetes_version: '1.31'\n"
                           "node_subnet: 10.244.1.0/24\npod_subnet: 10.244.0.0/16\n"
                           "endpoint_fingerprint: sha256:00\n"))),
    Case("cluster-file-cluster-yaml-bad-api-server", ("build", *KEY, "--base", "{base}", "--output", "{out}/n.img",
                                                      "--cluster", "{lab}", "--node", "pi-worker1"),
         ("cluster.yaml", "api_server"),
         (cluster(), write("lab/cluster.yaml",
                           "api_server: 6443\nendpoint: 192.168.6.10:8443\nkubernetes_version: '1.31'\n"
                           "node_subnet: 192.168.6.0/24\ngateway: 192.168.6.1\nendpoint_fingerprint: sha256:00\n"))),
    # upgrade (issue 31): refused before anything changes; the template cluster runs 1.31 and has no master built
    *[Case(f"cluster-upgrade-{name}", ("cluster", "upgrade", "{lab}", *args), expect, (cluster(), *setup))
      for name, args, expect, setup in [
          ("downgrade", ("--to", "1.30"), ("--to 1.30", "cannot be downgraded"), ()),
          ("same-minor", ("--to", "1.31"), ("--to 1.31", "nothing to upgrade"), ()),
          ("two-minors", ("--to", "1.33"), ("--to 1.33", "one minor at a time", "1.32"), ()),
          ("unknown-minor", ("--to", "1.99"), ("--to 1.99", "not a minor pi-image knows"), ()),
          ("not-a-version", ("--to", "latest"), ("--to latest", "latest"), ()),
          ("no-target", (), ("--to 1.NN", "1.32"), ()),
          ("no-master-built", ("--to", "1.32"), ("no control plane", "kubernetes_version=1.32"), ()),
          ("offline-cluster", ("--to", "1.32"), ("not yet", "offline"),
           (write("lab/cluster.yaml", "api_server: 192.168.6.10:6443\nendpoint: 192.168.6.10:8443\n"
                  "kubernetes_version: '1.31'\nnode_subnet: 192.168.6.0/24\nendpoint_fingerprint: sha256:00\n"
                  "offline: true\n"),)),
          ("another-recorded", ("--to", "1.33"), ("upgrade to 1.32 recorded", "cluster upgrade"),
           (write("lab/cluster.yaml", "api_server: 192.168.6.10:6443\nendpoint: 192.168.6.10:8443\n"
                  "kubernetes_version: '1.31'\nnode_subnet: 192.168.6.0/24\nendpoint_fingerprint: sha256:00\n"
                  "upgrade_to: '1.32'\n"),)),
          ("recorded-not-newer", ("--to", "1.32"), ("cluster.yaml", "upgrade_to 1.30 is not newer"),
           (write("lab/cluster.yaml", "api_server: 192.168.6.10:6443\nendpoint: 192.168.6.10:8443\n"
                  "kubernetes_version: '1.31'\nnode_subnet: 192.168.6.0/24\nendpoint_fingerprint: sha256:00\n"
                  "upgrade_to: '1.30'\n"),)),
      ]],
    Case("cluster-set-upgrade-to", ("cluster", "set", "{lab}", "upgrade_to=1.32"), ("upgrade_to", "cannot be set",
                                                                                     "cluster upgrade"), (cluster(),)),
    Case("cluster-file-inventory-bad-profile-build", ("build", *KEY, "--base", "{base}", "--output", "{out}/n.img",
                                                      "--cluster", "{lab}", "--node", "pi-worker1"),
         ("wroker-8g",),
         (cluster(), write("lab/inventory.yaml", "nodes:\n- {name: pi-worker1, profile: wroker-8g}\n"))),
]

# Inputs that must be ACCEPTED: the checks above must not over-refuse.
CONTROL_CASES = [
    Case("cluster-add-node-address-cidr-accepted", add_node("pi-worker2", "--profile", "worker-8g", "--address",
                                                            "192.168.6.15/24"), (), (cluster(),), exit_code=0,
         outcome=ACCEPT),
    Case("control-profile-good-values", (*BUILD_MY, "--dry-run"), (),
         (profile(f"extends: worker-8g\ntimezone: Europe/London\nhostname: pi-worker7\n"
                  f"ssh_authorized_keys: ['{VALID_KEY}']\nwifi: {{{WIFI_OK}}}\n"),), exit_code=0, outcome=ACCEPT),
    Case("control-set-good-values", (*BUILD_8G, "--dry-run", "--set", "timezone=Asia/Shanghai", "--set",
                                     "kubernetes_version=1.30", "--set", "cgroup_flags=[quiet]"), (),
         exit_code=0, outcome=ACCEPT),
]

CASES: list[Case] = [*profile_type_cases(), *PROFILE_VALUE_CASES, *PROFILE_FILE_CASES, *CLI_CASES, *CLUSTER_CASES,
                     *CONTROL_CASES]
