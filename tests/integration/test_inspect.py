"""`pi-image inspect --json` on layout-faithful images of every target, and it never writes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

EXPECTED = {
    # (target, release, variant): (target, os id, version_id, boot file or None, partitions)
    ("ubuntu-raspi", "20.04", "standard"): ("ubuntu-raspi", "ubuntu", "20.04", [("fat32", "system-boot"), ("ext4", "writable")]),
    ("ubuntu-raspi", "22.04", "standard"): ("ubuntu-raspi", "ubuntu", "22.04", [("fat32", "system-boot"), ("ext4", "writable")]),
    ("ubuntu-raspi", "24.04", "standard"): ("ubuntu-raspi", "ubuntu", "24.04", [("fat32", "system-boot"), ("ext4", "writable")]),
    ("ubuntu-raspi", "24.04", "alt"): ("ubuntu-raspi", "ubuntu", "24.04", [("fat32", "system-boot"), ("ext4", "writable")]),
    ("kali-raspi", None, "standard"): ("kali-raspi", "kali", None, [("fat32", "BOOT"), ("ext4", "ROOTFS")]),
    ("raspios", None, "standard"): ("raspios", "debian", "12", [("fat32", "bootfs"), ("ext4", "rootfs")]),
}


def pi_image(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True)


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
                            capture_output=True, text=True, env={**__import__("os").environ, "PI_IMAGE_CACHE": str(env_cache)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["target"] == "kali-raspi"
    cached = list((env_cache / "images").glob("*.img"))
    assert len(cached) == 1 and cached[0].stem == hashlib.sha256(compressed.read_bytes()).hexdigest()
    assert sha256(cached[0]) == sha256(image)


def test_inspect_human_table_names_target_and_partitions(sample_image):
    result = pi_image("inspect", str(sample_image("ubuntu-raspi", "22.04")))
    assert result.returncode == 0
    assert "ubuntu-raspi" in result.stdout and "system-boot" in result.stdout and "writable" in result.stdout
