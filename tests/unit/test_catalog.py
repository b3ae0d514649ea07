"""The base-image catalog: the shipped file itself, a user's additions and overrides, and every bad entry refused
with its file, line, entry and key."""

from __future__ import annotations

import subprocess
import tempfile
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from builder.bases.catalog import (
    SHIPPED_CATALOG,
    SHIPPED_KEYRINGS,
    TARGETS,
    default_base,
    load_catalog,
    resolve_base,
    sums_lookup,
)
from builder.errors import UserError
from builder.image import DirectoryFilesystem
from builder.targets import TARGET_GROUPS, detect, x86
from builder.targets.ubuntu_raspi import DPKG_STATUS

UBUNTU_CDIMAGE_KEY = "843938DF228D22F7B3742BC0D94AA3F0EFE21092"
HEX64 = "ab" * 32
SUMS = "https://example.org/SHA256SUMS"


@pytest.fixture(autouse=True)
def no_user_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's own catalog ($PI_IMAGE_CATALOG; XDG_CONFIG_HOME is a temp dir already)."""
    monkeypatch.delenv("PI_IMAGE_CATALOG", raising=False)


@pytest.fixture
def user_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write `text` as the user's catalog ($PI_IMAGE_CATALOG) and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "catalog.yaml"
        path.write_text(text)
        monkeypatch.setenv("PI_IMAGE_CATALOG", str(path))
        return path

    return write


def _error(text: str, user_catalog) -> str:
    path = user_catalog(text)
    with pytest.raises(UserError) as caught:
        load_catalog()
    message = str(caught.value)
    assert message.startswith(f"{path}:"), message
    return message


def test_every_shipped_base_has_a_hash_source_an_https_url_and_a_known_target() -> None:
    catalog = load_catalog()
    assert {"ubuntu-22.04", "ubuntu-24.04", "raspios-bookworm-lite", "raspios-trixie-lite", "kali-raspberry-pi",
            "jetson-nano-jp461"} <= set(catalog)
    assert {entry.target for entry in catalog.values()} <= set(TARGETS)
    assert {"ubuntu-raspi", "raspios", "kali-raspi", "jetson-sd"} <= {entry.target for entry in catalog.values()}
    for entry in catalog.values():
        assert entry.sha256 or entry.sums_url or entry.md5, entry.name
        for url in (entry.url, entry.sums_url, entry.sums_signature_url):
            assert url is None or url.startswith("https://"), (entry.name, url)
        assert entry.description and entry.source == str(SHIPPED_CATALOG)
        if entry.sums_signature_url:
            assert entry.keyring and entry.keyring.parent == SHIPPED_KEYRINGS


def test_every_hash_source_is_explained_in_a_comment_beside_it() -> None:
    lines = SHIPPED_CATALOG.read_text().splitlines()
    names = list(yaml.safe_load(SHIPPED_CATALOG.read_text())["bases"])
    starts = [next(i for i, line in enumerate(lines) if line == f"  {name}:") for name in names] + [len(lines)]
    for name, (start, end) in zip(names, pairwise(starts), strict=True):
        assert any(line.strip().startswith("# hash:") for line in lines[start:end]), f"{name}: no '# hash:' comment"


def test_shipped_keyrings_parse_and_ubuntu_holds_the_cd_image_signing_key() -> None:
    keyrings = sorted(SHIPPED_KEYRINGS.glob("*.gpg"))
    assert keyrings
    with tempfile.TemporaryDirectory(prefix="pi-image-gpg-") as home:
        for keyring in keyrings:
            shown = subprocess.run(["gpg", "--homedir", home, "--batch", "--with-colons", "--show-keys",
                                    str(keyring)], capture_output=True, text=True, check=True).stdout
            fingerprints = [line.split(":")[9] for line in shown.splitlines() if line.startswith("fpr:")]
            assert fingerprints, keyring
            if keyring.name == "ubuntu-cdimage.gpg":
                assert fingerprints == [UBUNTU_CDIMAGE_KEY]
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], check=False)
    used = {entry.keyring.name for entry in load_catalog().values() if entry.keyring}
    assert used == {k.name for k in keyrings}, "a shipped keyring that no entry uses (or the reverse)"


def test_a_user_catalog_adds_names_and_overrides_only_the_keys_it_sets(user_catalog) -> None:
    user_catalog(f"""bases:
  ubuntu-24.04:
    url: https://mirror.example/ubuntu/ubuntu-24.04.5-preinstalled-server-arm64+raspi.img.xz
  my-pi-os:
    description: our own image
    target: raspios
    url: http://127.0.0.1:8080/mine.img.xz
    sha256: {HEX64.upper()}
""")
    catalog = load_catalog()
    ubuntu = catalog["ubuntu-24.04"]
    assert ubuntu.url.startswith("https://mirror.example/")
    assert ubuntu.sums_url == "https://cdimage.ubuntu.com/releases/24.04/release/SHA256SUMS"  # kept from shipped
    assert ubuntu.keyring and ubuntu.keyring.name == "ubuntu-cdimage.gpg"
    assert catalog["my-pi-os"].sha256 == HEX64 and catalog["my-pi-os"].verification() == "SHA-256 pinned in the catalog"
    assert catalog["raspios-trixie-lite"].source == str(SHIPPED_CATALOG)


@pytest.mark.parametrize("entry, expected", [
    ("description: x\n    target: raspios\n    url: https://a.example/x.img.xz\n    sha265: " + HEX64,
     ":6: mine: unknown key 'sha265' (did you mean 'sha256'?)"),
    ("description: x\n    target: raspios\n    url: https://a.example/x.img.xz",
     ": mine: sha256: no hash source"),
    ("description: x\n    target: raspbian\n    url: https://a.example/x.img.xz\n    sha256: " + HEX64,
     ":4: mine: target: 'raspbian' is not one of "),
    ("description: x\n    target: raspios\n    url: http://mirror.example/x.img.xz\n    sha256: " + HEX64,
     ": mine: url: 'http://mirror.example/x.img.xz': pi-image downloads over https only"),
    ("description: x\n    target: raspios\n    url: https://a.example/x.img.xz\n    sha256: abc",
     ": mine: sha256: 'abc' is not 64 hex digits"),
    ("description: x\n    target: raspios\n    url: https://a.example/x.img.xz\n    size: -3\n    sha256: " + HEX64,
     ": mine: size: -3 is not a number of bytes"),
    ("description: x\n    target: raspios\n    url: https://a.example/x.img.xz\n"
     "    sums_url: https://a.example/SHA256SUMS\n    sums_signature_url: https://a.example/SHA256SUMS.gpg",
     ": mine: keyring: sums_signature_url and keyring go together"),
    ("description: x\n    target: raspios\n    url: https://a.example/x.img.xz\n"
     "    sums_url: https://a.example/SHA256SUMS\n    sums_signature_url: https://a.example/SHA256SUMS.gpg\n"
     "    keyring: vendor.gpg", ": mine: keyring: no keyring 'vendor.gpg'"),
    ("target: raspios\n    url: https://a.example/x.img.xz\n    sha256: " + HEX64,
     ": mine: description: missing"),
])
def test_a_bad_user_entry_names_the_file_the_entry_and_the_key(user_catalog, entry: str, expected: str) -> None:
    assert expected in _error(f"bases:\n  mine:\n    {entry}\n", user_catalog)


def test_a_user_catalog_that_is_not_a_catalog_is_refused(user_catalog) -> None:
    assert "a catalog is one mapping `bases:`" in _error("- just a list\n", user_catalog)
    assert "invalid YAML" in _error("bases: {mine: [\n", user_catalog)
    assert "'Mine Base' is not a base name" in _error("bases:\n  Mine Base: {}\n", user_catalog)


@pytest.mark.parametrize("key, kind", [("2404", "a number"), ("24.04", "a number"), ("yes", "true/false"),
                                       ("~", "null"), ("2024-05-01", "a date")])
def test_a_name_yaml_reads_as_something_else_is_one_line_with_its_line(user_catalog, key: str, kind: str) -> None:
    message = _error(f"bases:\n  ubuntu-22.04:\n    default: true\n  {key}:\n    url: https://a.example/x.img.xz\n",
                     user_catalog)
    assert message.endswith(f":4: {key} is not a base name: YAML reads it as {kind}; quote it (\"{key}\":) or use "
                            "lower-case letters, digits, '.', '-', '+'"), message


def test_a_name_given_twice_is_refused_with_both_lines(user_catalog) -> None:
    text = "bases:\n  mine:\n    default: true\n  mine:\n    default: false\n"
    assert _error(text, user_catalog).endswith(":4: mine is defined twice (first on line 2): keep one")


def test_a_quoted_number_is_a_name_and_its_fields_come_from_its_own_entry(user_catalog) -> None:
    user_catalog(f"""bases:
  "2404":
    description: a mirror's 24.04
    target: ubuntu-raspi
    url: https://mirror.example/2404.img.xz
    sha256: {HEX64}
""")
    assert load_catalog()["2404"].url == "https://mirror.example/2404.img.xz"


def test_the_default_base_is_the_shipped_one_until_the_user_catalog_marks_another(user_catalog) -> None:
    assert default_base(("ubuntu-raspi",)) == "ubuntu-24.04"
    assert default_base(TARGET_GROUPS["raspberry-pi"]) == "ubuntu-24.04"
    assert default_base(("jetson-sd",)) is None
    user_catalog("bases:\n  ubuntu-22.04: {default: true}\n")
    assert default_base(("ubuntu-raspi",)) == "ubuntu-22.04"
    assert default_base(TARGET_GROUPS["raspberry-pi"]) == "ubuntu-22.04"
    # overriding the shipped default's url keeps its `default`, but the entry the user marks still wins
    user_catalog("bases:\n  ubuntu-24.04: {url: 'https://mirror.example/u.img.xz'}\n"
                 "  raspios-bookworm-lite: {default: true}\n")
    assert default_base(TARGET_GROUPS["raspberry-pi"]) == "raspios-bookworm-lite"
    assert default_base(("ubuntu-raspi",)) == "ubuntu-24.04"
    user_catalog("bases:\n  ubuntu-24.04: {default: false}\n")
    assert default_base(("ubuntu-raspi",)) is None


def test_a_user_keyring_is_found_beside_the_user_catalog(user_catalog, tmp_path: Path) -> None:
    (tmp_path / "vendor.gpg").write_bytes((SHIPPED_KEYRINGS / "ubuntu-cdimage.gpg").read_bytes())
    user_catalog("""bases:
  vendor-os:
    description: x
    target: kali-raspi
    url: https://vendor.example/os.img.xz
    sums_url: https://vendor.example/SHA256SUMS
    sums_signature_url: https://vendor.example/SHA256SUMS.gpg
    keyring: vendor.gpg
""")
    entry = load_catalog()["vendor-os"]
    assert entry.keyring == tmp_path / "vendor.gpg"
    assert entry.verification() == "signed SHA256SUMS (vendor.gpg)"


def test_an_unknown_base_suggests_close_names_and_the_bases_command() -> None:
    with pytest.raises(UserError, match=r"did you mean ubuntu-24\.04 .*`pi-image bases`"):
        resolve_base("ubuntu-24.4")


def test_an_existing_file_or_directory_is_its_own_base(tmp_path: Path) -> None:
    image = tmp_path / "ubuntu-24.04"  # a file wins over the catalog name it shadows
    image.write_bytes(b"x")
    assert resolve_base(str(image)) == image
    assert resolve_base(str(tmp_path)) == tmp_path


def test_an_uncached_base_with_download_off_names_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"base ubuntu-24\.04 is not downloaded yet and --dry-run never downloads: "
                                        r"run `pi-image fetch ubuntu-24\.04` first"):
        resolve_base("ubuntu-24.04", cache_dir=tmp_path, download=False)
    with pytest.raises(UserError, match="not downloaded yet"):  # the file name of a catalog image is an alias
        resolve_base("jetson-nano-jp461-sd-card-image.zip", cache_dir=tmp_path, download=False)


@pytest.mark.parametrize("url, message", [
    ("ftp://example.org/x.img.xz", "over https only"),
    ("http://example.org/x.img.xz#sha256=" + HEX64, "over https only"),
    ("https://example.org/x.img.xz#md5=abc", "the only fragment pi-image reads is #sha256="),
    ("https://example.org/x.iso#sha256=" + HEX64, "'x.iso' is none of those"),
])
def test_a_base_url_pi_image_will_not_download_is_refused_before_any_request(url: str, message: str,
                                                                            tmp_path: Path) -> None:
    with pytest.raises(UserError, match=message):
        resolve_base(url, cache_dir=tmp_path)


def test_sums_files_in_every_vendor_format_are_read() -> None:
    text = (f"{HEX64}  ubuntu.img.xz\n{'cd' * 32} *kali.img.xz\n{'EF' * 32}  ./pi.img.xz\n"
            f"not a line\n{'01' * 32}  other.img.xz\n").encode()
    assert sums_lookup(text, "ubuntu.img.xz", SUMS) == HEX64
    assert sums_lookup(text, "kali.img.xz", SUMS) == "cd" * 32
    assert sums_lookup(text, "pi.img.xz", SUMS) == "ef" * 32
    assert sums_lookup(text, "missing.img.xz", SUMS) is None


def test_a_sums_file_that_gives_a_file_two_hashes_is_refused_and_one_that_repeats_itself_is_not() -> None:
    text = f"{HEX64}  ubuntu.img.xz\n{'cd' * 32}  other.img.xz\n{HEX64.upper()} *./ubuntu.img.xz\n".encode()
    assert sums_lookup(text, "ubuntu.img.xz", SUMS) == HEX64
    with pytest.raises(UserError) as caught:
        sums_lookup(text + f"{'01' * 32}  ubuntu.img.xz\n".encode(), "ubuntu.img.xz", SUMS)
    assert str(caught.value).startswith(f"{SUMS} lists ubuntu.img.xz twice with different SHA-256s ({HEX64} and "
                                        f"{'01' * 32}): refusing both, nothing was downloaded; ")
    assert "\n" not in str(caught.value)


# The catalog's targets: x86 Ubuntu is told apart by dpkg's architecture, read only where it can matter.

X86_STATUS = ("Package: base-files\nEssential: yes\nArchitecture: arm64\nDescription: listed before dpkg\n"
              " Architecture: i386 (a continuation line, not a field)\n\n"
              "Package: dpkg\nEssential: yes\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.22.6\n\n"
              "Package: zlib1g\nArchitecture: arm64\n")


def _tree(root: Path, os_id: str, status: str, *marks: str) -> DirectoryFilesystem:
    for path, text in {"etc/os-release": f"ID={os_id}\nPRETTY_NAME=\"{os_id} test\"\n", DPKG_STATUS[1:]: status,
                       **{mark: "" for mark in marks}}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return DirectoryFilesystem(root, writable=False)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths every DirectoryFilesystem reads from now on."""
    seen: list[str] = []
    original = DirectoryFilesystem._read_resolved

    def recording(self: DirectoryFilesystem, path: str) -> bytes:
        seen.append(path)
        return original(self, path)

    monkeypatch.setattr(DirectoryFilesystem, "_read_resolved", recording)
    return seen


def test_x86_ubuntu_is_the_architecture_of_dpkgs_own_entry(tmp_path: Path, reads: list[str]) -> None:
    assert detect(_tree(tmp_path / "x86", "ubuntu", X86_STATUS)).name == "ubuntu-x86"
    assert reads.count(DPKG_STATUS) == 1
    assert x86.dpkg_architecture(_tree(tmp_path / "arm", "ubuntu", X86_STATUS.replace("amd64", "arm64"))) == "arm64"
    assert x86.dpkg_architecture(_tree(tmp_path / "none", "ubuntu", "Package: dpkg\n\nArchitecture: amd64\n")) is None


@pytest.mark.parametrize("os_id, marks, refused", [
    ("ubuntu", ("etc/nv_tegra_release",), None),  # an L4T rootfs: Ubuntu with no boot partition, but Tegra
    ("debian", (), "which pi-image does not support"),
])
def test_detecting_a_medium_that_cannot_be_x86_ubuntu_never_reads_dpkgs_status(tmp_path: Path, reads: list[str],
                                                                               os_id: str, marks: tuple[str, ...],
                                                                               refused: str | None) -> None:
    tree = _tree(tmp_path, os_id, X86_STATUS, *marks)
    if refused:
        with pytest.raises(UserError, match=refused):
            detect(tree)
    else:
        assert detect(tree).name == "l4t-rootfs"
    assert DPKG_STATUS not in reads


def test_a_dpkg_status_too_big_to_be_real_is_not_read(tmp_path: Path, reads: list[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    tree = _tree(tmp_path, "ubuntu", X86_STATUS)
    monkeypatch.setattr(x86, "MAX_DPKG_STATUS_BYTES", len(X86_STATUS) - 1)
    assert x86.dpkg_architecture(tree) is None
    assert DPKG_STATUS not in reads
