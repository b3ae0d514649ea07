"""An operator with x86 machines beside the boards: the cluster is made with the real CLI, each x86 node gets a
seed ISO, read back with pycdlib and with tools that are not pi-image (isoinfo, xorriso, blkid — what cloud-init
itself asks for the CIDATA label), its user-data validated by cloud-init's own schema validator and, for the
installer, by Subiquity's published autoinstall schema.

`make_seed` is the one place that asks for a seed: `pi-image seed-iso` once the CLI has the command.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import stat
from pathlib import Path

import pycdlib
import pytest
import yaml
from readback import KUBE_KEY, TEST_SSH_KEY, PiImage, succeeded, tool

from builder.build.seed_iso import (
    MAX_USER_DATA,
    SeedIsoRequest,
    SeedIsoResult,
    seed_iso,
)
from builder.errors import UserError
from builder.samples.catalog import ubuntu_x86_disk
from builder.samples.disk import build_image

NAMES = ["meta-data", "network-config", "user-data"]
ISO_NAMES = ["META_DAT.;1", "NETWORK_.;1", "USER_DAT.;1"]
# From canonical/subiquity autoinstall-schema.json: the sections a seed writes (`network` by its first form). Checked
# with Debian's python3-jsonschema, which cloud-init depends on (the installer validates with jsonschema too).
AUTOINSTALL_SCHEMA = {
    "type": "object", "required": ["version"],
    "properties": {
        "version": {"type": "integer", "minimum": 1, "maximum": 1},
        "identity": {"type": "object", "required": ["username", "hostname", "password"], "additionalProperties": False,
                     "properties": {k: {"type": "string"} for k in ("realname", "username", "hostname", "password")}},
        "ssh": {"type": "object", "properties": {"install-server": {"type": "boolean"}, "allow-pw": {"type": "boolean"},
                                                 "authorized-keys": {"type": "array", "items": {"type": "string"}}}},
        "storage": {"type": "object"},
        "user-data": {"type": "object"},
        "network": {"type": "object", "required": ["version"],
                    "properties": {"version": {"type": "integer", "minimum": 2, "maximum": 2},
                                   "ethernets": {"type": "object"}}},
    },
}


@pytest.fixture(scope="module")
def lab(cli: PiImage, tmp_path_factory) -> Path:
    """A cluster made with the CLI: a Pi master, an x86 worker with a fixed address and its MAC, one on DHCP."""
    directory = tmp_path_factory.mktemp("cluster") / "lab"
    succeeded(cli("cluster", "init", directory, "--api-server", "192.168.6.10:6443", "--endpoint", "192.168.6.10:8443",
                  "--kubernetes-version", "1.31", "--node-subnet", "192.168.6.0/24", "--gateway", "192.168.6.1",
                  "--dns", "192.168.6.1"))
    for name, *args in (("pi-master1", "--profile", "master-2g", "--address", "192.168.6.10"),
                        ("x86-worker1", "--profile", "x86-worker", "--role", "worker", "--address", "192.168.6.31",
                         "--mac", "52:54:00:12:34:56"),
                        ("x86-worker2", "--profile", "x86-worker")):
        succeeded(cli("cluster", "add-node", directory, name, *args))
    return directory


def make_seed(lab: Path, node: str, output: Path, **options) -> SeedIsoResult:
    options.setdefault("ssh_keys", [TEST_SSH_KEY.read_text().strip()])
    return seed_iso(SeedIsoRequest(profile=options.pop("profile", None), cluster=lab, node=node, output=output,
                                   kube_key=KUBE_KEY, **options))


def generation(lab: Path, node: str) -> int:
    return next(n for n in yaml.safe_load((lab / "inventory.yaml").read_text())["nodes"] if n["name"] == node) \
        .get("generation", 0)


def pycdlib_files(iso_path: Path) -> tuple[bytes, dict[str, bytes], list[str]]:
    """(volume identifier, {Rock Ridge name: content}, Joliet names) as pycdlib reads them."""
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        files = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_file():
                name, out = child.rock_ridge.name().decode(), io.BytesIO()
                iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
                files[name] = out.getvalue()
        joliet = sorted(c.file_identifier().decode("utf-16_be") for c in iso.list_children(joliet_path="/")
                        if c.is_file())
        return iso.pvd.volume_identifier.rstrip(b" "), files, joliet
    finally:
        iso.close()


def xorriso_files(iso_path: Path, scratch: Path) -> dict[str, tuple[bytes, int]]:
    """{name: (content, mode)} as xorriso extracts the Rock Ridge tree."""
    scratch.mkdir()
    tool("xorriso", "-abort_on", "FAILURE", "-osirrox", "on", "-indev", iso_path, "-extract", "/", scratch / "x")
    return {p.name: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in sorted((scratch / "x").iterdir())}


def isoinfo_names(iso_path: Path, *flags: str) -> list[str]:
    out = tool("isoinfo", *flags, "-l", "-i", iso_path).stdout.decode()
    return sorted(line.split()[-1] for line in out.splitlines() if line.startswith("-"))


def test_seed_reads_back_the_same_with_pycdlib_xorriso_isoinfo_and_blkid(lab, tmp_path):
    output = tmp_path / "x86-worker1.iso"
    result = make_seed(lab, "x86-worker1", output)
    label, files, joliet = pycdlib_files(output)
    extracted = xorriso_files(output, tmp_path / "xorriso")
    info = tool("isoinfo", "-d", "-i", output).stdout.decode()
    blkid = tool("blkid", "-p", "-o", "export", output).stdout.decode().splitlines()

    assert (result.node, result.role, result.output, result.size) == ("x86-worker1", "worker", output,
                                                                      output.stat().st_size)
    assert stat.S_IMODE(output.stat().st_mode) == 0o600  # it holds the node's credential
    assert label == b"CIDATA" and "Volume id: CIDATA" in info and "LABEL=CIDATA" in blkid and "TYPE=iso9660" in blkid
    assert "Joliet with UCS level 3 found" in info and "Rock Ridge signatures version 1 found" in info
    assert sorted(files) == sorted(extracted) == joliet == isoinfo_names(output, "-J") == isoinfo_names(output, "-R") \
        == NAMES
    assert isoinfo_names(output) == ISO_NAMES
    assert {name: content for name, (content, _) in extracted.items()} == files
    assert all(mode == 0o444 for _, mode in extracted.values())
    for name in NAMES:
        assert tool("isoinfo", "-J", "-x", f"/{name}", "-i", output).stdout == files[name]
    assert len(files["user-data"]) == result.user_data_bytes


def test_the_seed_is_the_nodes_newest_card(lab, tmp_path):
    """Like an image, a seed carries the node's next generation and its credential; the inventory records it."""
    before = generation(lab, "x86-worker1")
    _, files, _ = pycdlib_files(make_seed(lab, "x86-worker1", tmp_path / "seed.iso").output)
    config = yaml.safe_load(files["user-data"])
    node = next(f for f in config["write_files"] if f["path"] == "/etc/pi-image/node.json")
    key = bytes.fromhex((lab / "secrets" / "enrollment.key").read_text().strip())

    assert generation(lab, "x86-worker1") == before + 1
    assert f'"generation": {before + 1}' in node["content"] and node["permissions"] == "0600"
    assert hmac.new(key, f"x86-worker1:{before + 1}".encode(), hashlib.sha256).hexdigest() in node["content"]


def test_cloud_init_accepts_the_user_data_and_network_config(lab, tmp_path):
    _, files, _ = pycdlib_files(make_seed(lab, "x86-worker1", tmp_path / "seed.iso").output)
    (tmp_path / "user-data").write_bytes(files["user-data"])
    network = yaml.safe_load(files["network-config"])["ethernets"]["cluster"]

    check = tool("cloud-init", "schema", "--config-file", tmp_path / "user-data", check=False)
    assert check.returncode == 0 and b"Valid cloud-config" in check.stdout, check.stdout + check.stderr
    assert network["match"] == {"macaddress": "52:54:00:12:34:56"}
    assert network["addresses"] == ["192.168.6.31/24"]
    assert network["routes"] == [{"to": "0.0.0.0/0", "via": "192.168.6.1"}]


def test_a_dhcp_node_gets_no_network_config(lab, tmp_path):
    _, files, _ = pycdlib_files(make_seed(lab, "x86-worker2", tmp_path / "seed.iso").output)

    assert sorted(files) == ["meta-data", "user-data"]
    assert yaml.safe_load(files["meta-data"])["local-hostname"] == "x86-worker2"


def test_the_autoinstall_seed_passes_cloud_init_and_the_installers_schema(lab, tmp_path):
    result = make_seed(lab, "x86-worker1", tmp_path / "auto.iso", autoinstall=True, password_hash="$6$abc$def")
    _, files, _ = pycdlib_files(result.output)
    (tmp_path / "user-data").write_bytes(files["user-data"])
    autoinstall = yaml.safe_load(files["user-data"])["autoinstall"]
    (tmp_path / "installed").write_text("#cloud-config\n" + yaml.safe_dump(autoinstall["user-data"]))

    for document in ("user-data", "installed"):
        check = tool("cloud-init", "schema", "--config-file", tmp_path / document, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
    (tmp_path / "autoinstall.json").write_text(json.dumps(autoinstall))  # files: an argument holds 128 KiB at most
    (tmp_path / "schema.json").write_text(json.dumps(AUTOINSTALL_SCHEMA))
    tool("/usr/bin/python3", "-c", "import json, sys, jsonschema; jsonschema.validate(*(json.load(open(path)) "
         "for path in sys.argv[1:]))", tmp_path / "autoinstall.json", tmp_path / "schema.json")
    assert autoinstall["identity"]["username"] == "ubuntu" and autoinstall["storage"]["swap"] == {"size": 0}
    assert "network-config" in files and autoinstall["network"] == yaml.safe_load(files["network-config"])


@pytest.mark.parametrize("node, options, message", [
    ("x86-worker9", {}, r"no node named 'x86-worker9' \(known: pi-master1, x86-worker1, x86-worker2\)"),
    ("x86-worker1", {"profile": "worker-8g"}, r"profile 'worker-8g' is for raspberry-pi, not an x86 machine"),
    ("pi-master1", {}, r"profile 'master-2g' is for raspberry-pi, not an x86 machine"),
    ("x86-worker1", {"ssh_keys": []}, r"no SSH key and no password, so nobody could log in"),
])
def test_bad_inputs_are_refused_in_one_line_and_leave_nothing(lab, tmp_path, node, options, message):
    before = generation(lab, "x86-worker1")

    with pytest.raises(UserError, match=message) as refused:
        make_seed(lab, node, tmp_path / "seed.iso", **options)
    assert "\n" not in str(refused.value)
    assert os.listdir(tmp_path) == [] and generation(lab, "x86-worker1") == before


def test_user_data_over_what_a_seed_may_hold_is_refused(lab, tmp_path):
    payload = tmp_path / "payload"
    (payload / "opt").mkdir(parents=True)
    (payload / "opt" / "cri-dockerd.tgz").write_bytes(os.urandom(MAX_USER_DATA))

    with pytest.raises(UserError, match=r"over what a seed may hold"):
        make_seed(lab, "x86-worker2", tmp_path / "seed.iso", overlays=[str(payload)])
    assert not (tmp_path / "seed.iso").exists()


def test_an_existing_output_needs_force(lab, tmp_path):
    output = tmp_path / "seed.iso"
    output.write_bytes(b"mine")

    with pytest.raises(UserError, match=r"seed.iso exists: pass --force"):
        make_seed(lab, "x86-worker2", output)
    assert output.read_bytes() == b"mine"
    make_seed(lab, "x86-worker2", output, force=True)
    assert output.read_bytes()[0x8001:0x8006] == b"CD001"  # the primary volume descriptor
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]  # no temporary left beside it


def test_build_and_inspect_send_an_x86_disk_to_seed_iso(cli, tmp_path):
    """The amd64 cloud image's layout (GPT, BIOS boot, ESP, ext4 root; no Pi boot partition) is not a card."""
    disk = build_image(ubuntu_x86_disk("24.04"), tmp_path / "noble-server-cloudimg-amd64.img")
    for argv in (("build", "--profile", "x86-worker", "--base", disk, "--output", tmp_path / "out.img"),
                 ("inspect", disk)):
        run = cli(*argv)
        assert run.returncode != 0
        assert "is an x86 Ubuntu install image/disk" in run.stderr and \
            "use `pi-image seed-iso --profile x86-worker --cluster DIR --node NAME`" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
    assert not (tmp_path / "out.img").exists()


def test_profiles_list_the_x86_worker(cli):
    listing = succeeded(cli("profiles")).stdout

    assert "x86-worker" in listing


def test_the_command_writes_the_seed_and_says_how_to_boot_with_it(cli, lab, tmp_path):
    iso = tmp_path / "x86-worker2.iso"
    proc = succeeded(cli("seed-iso", "--cluster", lab, "--node", "x86-worker2", "-o", iso, "--kube-key", KUBE_KEY,
                         "--ssh-key", TEST_SSH_KEY))
    assert proc.stdout.startswith(f"Wrote {iso} (") and "0600" in proc.stdout and "Next: attach it" in proc.stdout
    assert stat.S_IMODE(iso.stat().st_mode) == 0o600
    assert b"CIDATA" in tool("isoinfo", "-d", "-i", iso).stdout
    report = json.loads(succeeded(cli("seed-iso", "--cluster", lab, "--node", "x86-worker2", "-o", iso, "--force",
                                      "--kube-key", KUBE_KEY, "--ssh-key", TEST_SSH_KEY, "--json",
                                      "--autoinstall")).stdout)
    assert report["node"] == "x86-worker2" and "/etc/pi-image/node.json" in report["files"]
    missing = cli("seed-iso", "--node", "x86-worker2", "--kube-key", KUBE_KEY)
    assert missing.returncode == 1 and "--cluster" in missing.stderr
