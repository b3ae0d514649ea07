"""`pi-image inspect --json` on layout-faithful images of every target, and it never writes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from readback import Card, tool

from builder.build.inspect import CMDLINE_SHOWN_CHARS, SHOWN_CHARS, SHOWN_ITEMS

UBUNTU_PARTITIONS = [("fat32", "system-boot"), ("ext4", "writable")]
EXPECTED = {
    # (target, release, variant): (target, os id, version_id, partitions)
    ("ubuntu-raspi", "20.04", "standard"): ("ubuntu-raspi", "ubuntu", "20.04", UBUNTU_PARTITIONS),
    ("ubuntu-raspi", "22.04", "standard"): ("ubuntu-raspi", "ubuntu", "22.04", UBUNTU_PARTITIONS),
    ("ubuntu-raspi", "24.04", "standard"): ("ubuntu-raspi", "ubuntu", "24.04", UBUNTU_PARTITIONS),
    ("ubuntu-raspi", "24.04", "alt"): ("ubuntu-raspi", "ubuntu", "24.04", UBUNTU_PARTITIONS),
    ("kali-raspi", None, "standard"): ("kali-raspi", "kali", None, [("fat32", "BOOT"), ("ext4", "ROOTFS")]),
    ("raspios", None, "standard"): ("raspios", "debian", "12", [("fat32", "bootfs"), ("ext4", "rootfs")]),
}


def pi_image(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, check=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("key", list(EXPECTED), ids=lambda k: "-".join(x for x in k if x))
def test_inspect_recognizes_each_pi_image(sample_image, key):
    target, os_id, version, parts = EXPECTED[key]
    image = sample_image(key[0], key[1], key[2])
    before = sha256(image)
    result = pi_image("inspect", "--json", str(image))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["target"] == target
    assert report["os"]["id"] == os_id
    if version:
        assert report["os"]["version_id"] == version
    assert [(p["fs"], p["label"]) for p in report["partitions"]] == parts
    assert report["boot_cmdline"].split()[0]  # the real one-line cmdline.txt was read
    assert report["k8s"] == {"cgroup_flags": False, "runtime": None, "systemd_cgroup": False, "sysctl": False,
                             "modules": False, "kube_repo": None, "swap_disabled": key[0] != "raspios"}
    assert report["firstboot"] == {"installed": False, "node": None, "role": None, "kubernetes_version": None,
                                   "cluster": None, "endpoint": None, "initializes_cluster": False, "network": None,
                                   "token_endpoint": False, "stamp_at_flash": False, "joins": False,
                                   "kubernetes_release": None, "offline": None}
    assert sha256(image) == before, "inspect must never write"


def test_inspect_partitions_match_sfdisk(sample_image):
    image = sample_image("ubuntu-raspi", "22.04")
    report = json.loads(pi_image("inspect", "--json", str(image)).stdout)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert [(p["start"], p["size"]) for p in report["partitions"]] == \
           [(p["start"] * 512, p["size"] * 512) for p in table["partitions"]]


def test_inspect_jetson_sd_reads_extlinux_and_docker(sample_image):
    report = json.loads(pi_image("inspect", "--json", str(sample_image("jetson-sd"))).stdout)
    assert report["target"] == "jetson-sd"
    assert report["os"]["version_id"] == "18.04"
    app = [p for p in report["partitions"] if p["name"] == "APP"]
    assert app and app[0]["number"] == 1 and app[0]["fs"] == "ext4"
    assert app[0]["start"] > min(p["start"] for p in report["partitions"]), "APP is not first on the disk"
    assert report["boot_cmdline"].startswith("${cbootargs}")
    assert report["k8s"]["runtime"] == "docker" and report["k8s"]["systemd_cgroup"] is False
    assert report["k8s"]["swap_disabled"] is False  # nvzramconfig is enabled


def test_inspect_l4t_rootfs_directory(sample_image):
    report = json.loads(pi_image("inspect", "--json", str(sample_image("l4t-rootfs"))).stdout)
    assert report["target"] == "l4t-rootfs"
    assert report["partitions"] == []
    assert "root=/dev/mmcblk0p1" in report["boot_cmdline"]


def test_inspect_reads_a_compressed_image_through_the_cache(sample_image, tmp_path, monkeypatch):
    image = sample_image("kali-raspi")
    compressed = tmp_path / "kali.img.zst"
    subprocess.run(["zstd", "-q", "-o", str(compressed), str(image)], check=True)
    env_cache = tmp_path / "cache"
    result = subprocess.run([sys.executable, "-m", "builder", "inspect", "--json", str(compressed)],
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "PI_IMAGE_CACHE": str(env_cache)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["target"] == "kali-raspi"
    cached = list((env_cache / "images").glob("*.img"))
    assert len(cached) == 1 and cached[0].stem == hashlib.sha256(compressed.read_bytes()).hexdigest()
    assert sha256(cached[0]) == sha256(image)


def test_inspect_human_table_names_target_and_partitions(sample_image):
    result = pi_image("inspect", str(sample_image("ubuntu-raspi", "22.04")))
    assert result.returncode == 0
    assert "ubuntu-raspi" in result.stdout and "system-boot" in result.stdout and "writable" in result.stdout


# --- a hostile image: nothing from it reaches the terminal raw, nor at length -----------------------------------

# a terminal title, clear screen, NUL, DEL, CSI (a C1 control), a bidi override, and how inspect shows them
ESCAPES = "\x1b]0;owned\x07\x1b[2J\x00\x7f\x9b\u202e"
ESCAPED = r"\x1b]0;owned\x07\x1b[2J\x00\x7f\x9b\u202e"
LONG = 100_000


def hostile_tree(tree: Path) -> None:
    """An L4T rootfs whose every file inspect reads says something hostile: escape sequences, NULs, 100 KB values,
    JSON of the wrong shape or too deep (where inspect once met a KeyError, AttributeError or RecursionError)."""
    def put(path: str, text: str) -> None:
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text(text)

    put("etc/os-release", f'ID=ubuntu\nVERSION_ID="18.04{ESCAPES}"\nPRETTY_NAME="{ESCAPES}{"P" * LONG}"\n')
    put("boot/extlinux/extlinux.conf", "DEFAULT primary\nLABEL primary\n  LINUX /boot/Image\n"
        f"  APPEND ${{cbootargs}} root=/dev/mmcblk0p1 {ESCAPES} {'c' * 50_000}\n")
    put("etc/pi-image/node.json", json.dumps({
        "node": f"evil{ESCAPES}", "role": "r" * LONG, "kubernetes_version": ["1.31", {"x": ESCAPES}],
        "cluster": "not a mapping", "api_server": f"{ESCAPES}10.0.0.1:6443", "endpoint": ESCAPES}))
    put("etc/pi-image/build.json", json.dumps({
        "network": {"address": f"{ESCAPES}10.0.0.2/24", "dns": [ESCAPES] * 1000},  # no gateway, no interface
        "kubernetes_release": f"1.31.{ESCAPES}"}))
    put("var/lib/pi-image/bundle/bundle.json", json.dumps({
        "kubernetes": ESCAPES, "platform": "p" * LONG, "packages": 7,
        "images": [{"size": "huge"}, {"size": [1]}, "not a mapping", {"size": 5}, {"size": True}]}))
    put("etc/docker/daemon.json", "[" * LONG + "]" * LONG)  # a list, and nested deeper than Python's stack


def assert_safe_to_print(text: str) -> None:
    """Only printable characters and newlines, and no line longer than the longest a value may be shown."""
    bad = next((c for c in text if not (c.isprintable() or c == "\n")), None)
    assert bad is None, f"{bad!r} printed raw"
    longest = max(len(line) for line in text.splitlines())
    assert longest <= CMDLINE_SHOWN_CHARS + 100, longest


def test_inspect_of_a_hostile_tree_prints_no_raw_control_byte_and_caps_each_value(sample_copy):
    tree = sample_copy("l4t-rootfs")
    hostile_tree(tree)
    human = pi_image("inspect", str(tree))
    assert human.returncode == 0 and not human.stderr, human.stderr[-3000:]
    assert_safe_to_print(human.stdout)
    pretty = ESCAPED + "P" * (SHOWN_CHARS - len(ESCAPED)) + f"… ({LONG - SHOWN_CHARS + len(ESCAPED)} more characters)"
    assert f"{tree}: l4t-rootfs — {pretty}\n" in human.stdout
    assert len(human.stdout) < 10_000
    raw = pi_image("inspect", "--json", str(tree))
    assert raw.returncode == 0 and raw.stdout.isascii(), raw.stderr[-3000:]
    assert_safe_to_print(raw.stdout)
    report = json.loads(raw.stdout)
    assert report["os"]["pretty_name"].startswith(ESCAPED) and len(report["os"]["pretty_name"]) < 200
    assert report["boot_cmdline"].endswith(" more characters)") and "\\x1b" in report["boot_cmdline"]
    assert report["boot_cmdline_problem"].startswith("it holds the control character '\\x1b' at byte ")
    fb = report["firstboot"]
    assert fb["node"] == "evil" + ESCAPED and fb["cluster"] == ESCAPED + "10.0.0.1:6443"
    assert fb["network"]["gateway"] is None and len(fb["network"]["dns"]) == SHOWN_ITEMS
    assert fb["offline"]["packages"] == 0 and fb["offline"]["images"] == 5 and fb["offline"]["size"] == 5
    assert report["k8s"]["systemd_cgroup"] is False


def test_inspect_of_a_hostile_card_escapes_its_cmdline_txt_and_labels(sample_copy):
    image = sample_copy("ubuntu-raspi", "22.04")
    card = Card(image)
    source = image.parent / "cmdline.txt"
    source.write_bytes(f"root=LABEL=writable {ESCAPES} {'c' * 20_000}\n".encode())
    tool("mcopy", "-o", "-i", card.boot.spec, source, "::/cmdline.txt")
    root = next(p for p in card.table["partitions"] if p["type"] == "83")
    # raw bytes: ESC, BEL and one that is not UTF-8
    subprocess.run([b"tune2fs", b"-L", b"\x1b[2J\x07\xff", f"{image}?offset={root['start'] * 512}".encode()],
                   capture_output=True, check=True)
    human = pi_image("inspect", str(image))
    assert human.returncode == 0, human.stderr[-3000:]
    assert_safe_to_print(human.stdout)
    assert "\\x1b[2J\\x07\ufffd" in human.stdout and "more characters)" in human.stdout
    report = json.loads(pi_image("inspect", "--json", str(image)).stdout)
    assert report["boot_cmdline_problem"].startswith("its line is 20")  # over the firmware's limit, then the ESC
