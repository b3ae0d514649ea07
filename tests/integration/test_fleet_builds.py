"""An operator's fleet, without the steps that misled (issue 25, item 7):

- a profile image built from a FILE is stamped for the inventory nodes whose base is that file (by content, however
  the inventory spells it), with --node or as the next free node, and never invents a DHCP node instead;
- `build --all --base FILE` keeps each node's own base (the Kali node is built from Kali), says which nodes --base
  filled, builds every node it can, bumps no generation for the one it could not, still builds the control plane
  (last: its card's inventory holds the others' new generations), ends with a table of every node, and exits 1;
- `--profile` that disagrees with the inventory is an error naming both;
- next steps fit the kind of image: seed-iso for x86 nodes, only `pi-image flash` for a profile image, bmaptool with
  the `.bmap` of that exact file for a node's image — `NODE.img` and `NODE.img.zst` each have their own;
- Wi-Fi as fields (`--set wifi.ssid=HomeNet`), its passphrase from a file or a hidden prompt, never argv.

Read back with debugfs/mtools (readback.py), bmaptool and the inventory files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from readback import (
    KUBE_KEY,
    PiImage,
    entries,
    filesystems,
    fsck_all,
    make_cluster,
    random_card,
    succeeded,
    tool,
)

SUBNET = "192.168.6.0/24"


def generations(lab: Path) -> dict[str, int]:
    return {n["name"]: n.get("generation", 0) for n in yaml.safe_load((lab / "inventory.yaml").read_text())["nodes"]}


def one_line_error(proc, *words: str) -> str:
    """The one `pi-image: error:` line of a refused command, checked to name every one of `words`."""
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pi-image: error:"), proc.stderr
    assert all(word in lines[0] for word in words), (words, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def lab(cli: PiImage, tmp_path_factory) -> Path:
    return make_cluster(cli, tmp_path_factory.mktemp("fleet") / "lab", SUBNET, {
        "pi-master1": ["--profile", "master-2g", "--address", "192.168.6.10"],
        "pi-worker1": ["--profile", "worker-8g", "--address", "192.168.6.21"],
        "x86a": ["--profile", "x86-worker"]})


# --- 1. a profile image of a file base ------------------------------------------------------------------------------

def test_a_profile_image_of_a_file_is_stamped_for_the_nodes_of_that_file(cli, base, sample_image, tmp_path):
    copy = tmp_path / "big-ubuntu.img"  # the same bytes under another name: the same base
    tool("cp", "--sparse=always", base, copy)
    lab = make_cluster(cli, tmp_path / "lab", SUBNET, {
        "kali3": ["--profile", "worker-8g", "--base", str(sample_image("kali-raspi"))],
        "pi-worker8": ["--profile", "worker-8g", "--base", str(copy)],
        "pi-worker9": ["--profile", "worker-8g", "--base", str(base), "--address", "192.168.6.29"]})
    image = tmp_path / "big-worker.img"
    succeeded(cli("build", "--cluster", lab, "--profile", "worker-8g", "--base", base, "-o", image,
                  "--kube-key", KUBE_KEY))

    named = json.loads(succeeded(cli("flash", image, tmp_path / "card9.img", "--yes", "--json", "--cluster", lab,
                                     "--node", "pi-worker9")).stdout)
    free = json.loads(succeeded(cli("flash", image, tmp_path / "card8.img", "--yes", "--json", "--cluster",
                                    lab)).stdout)

    assert (named["node"], named["added_to_inventory"]) == ("pi-worker9", False)
    assert (free["node"], free["added_to_inventory"]) == ("pi-worker8", False)  # not kali3, and no new DHCP node
    assert generations(lab) == {"kali3": 0, "pi-worker8": 1, "pi-worker9": 1}
    for node, card in (("pi-worker9", "card9.img"), ("pi-worker8", "card8.img")):
        fsck_all(tmp_path / card, tmp_path)
        assert filesystems(tmp_path / card)["root"].text("/etc/hostname") == f"{node}\n"
    network = yaml.safe_load(filesystems(tmp_path / "card9.img")["boot"].text("/network-config"))
    assert network["ethernets"]["eth0"]["addresses"] == ["192.168.6.29/24"]
    refused = cli("flash", image, tmp_path / "card3.img", "--yes", "--cluster", lab, "--node", "kali3")
    one_line_error(refused, "kali3", "flash an image of that base")


# --- 2. build --all ------------------------------------------------------------------------------------------------

def test_all_keeps_each_nodes_base_and_builds_every_node_it_can(cli, base, sample_image, tmp_path):
    lab = make_cluster(cli, tmp_path / "lab", SUBNET, {
        "pi-master1": ["--profile", "master-2g", "--address", "192.168.6.10"],
        "pi-worker1": ["--profile", "worker-8g", "--address", "192.168.6.21"],
        "kali1": ["--profile", "kali-worker", "--base", str(sample_image("kali-raspi"))],
        "jet1": ["--profile", "jetson-gpu", "--base", str(base)],  # not a Jetson image: this node cannot be built
        "x86a": ["--profile", "x86-worker"]})
    out = tmp_path / "images"

    proc = cli("build", "--cluster", lab, "--all", "--base", base, "-o", out, "--kube-key", KUBE_KEY)

    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    said = proc.stderr.strip().splitlines()
    filled = [line for line in said if f"--base {base} is its base" in line]
    assert [line.split(":")[1].strip() for line in filled] == ["pi-worker1", "pi-master1"]
    assert any(line.startswith("pi-image: error: jet1: profile 'jetson-gpu' is for jetson-sd") for line in said)
    assert said[-1].startswith("pi-image: error: 1 of 4 nodes not built (jet1")
    assert entries(out) == sorted(f"{n}.img{s}" for n in ("pi-master1", "pi-worker1", "kali1") for s in ("", ".json"))
    targets = {n: json.loads((out / f"{n}.img.json").read_text())["target"] for n in ("pi-worker1", "kali1")}
    assert targets == {"pi-worker1": "ubuntu-raspi", "kali1": "kali-raspi"}
    assert generations(lab) == {"pi-master1": 1, "pi-worker1": 1, "kali1": 1, "jet1": 0, "x86a": 0}
    on_master = yaml.safe_load(filesystems(out / "pi-master1.img")["root"].text("/etc/pi-image/cluster/inventory.yaml"))
    assert {n["name"]: n.get("generation", 0) for n in on_master["nodes"]} == \
        {"pi-master1": 0, "pi-worker1": 1, "kali1": 1, "jet1": 0, "x86a": 0}  # built last: it knows the new cards
    lines = proc.stdout.splitlines()
    table = lines[lines.index("Built 3 of 4 images:") + 1:]
    assert table[0].split() == ["NODE", "ROLE", "ADDRESS", "BASE", "IMAGE", "SIZE"]
    assert [row.split()[0] for row in table[1:5]] == ["pi-worker1", "kali1", "pi-master1", "jet1"]
    assert "NOT BUILT" in table[4] and "jetson-sd" in table[4] and f" {base.name} " in table[4]
    assert f"pi-image seed-iso --cluster {lab} --node x86a" in proc.stdout


def test_all_with_a_base_for_nobody_says_it_is_not_used(cli, base, sample_image, tmp_path):
    lab = make_cluster(cli, tmp_path / "lab", SUBNET, {"kali1": ["--profile", "kali-worker", "--base",
                                                                 str(sample_image("kali-raspi"))]})
    proc = succeeded(cli("build", "--cluster", lab, "--all", "--base", base, "--dry-run", "--kube-key", KUBE_KEY))
    assert f"--base {base} is not used: every node names its own base" in proc.stderr
    assert "kali-raspi node 'kali1'" in proc.stdout


def test_all_takes_neither_node_nor_profile(cli, lab, base):
    for extra in (("--node", "pi-worker1"), ("--profile", "worker-8g")):
        proc = cli("build", "--cluster", lab, "--all", "--base", base, "--dry-run", *extra)
        assert proc.returncode == 2 and extra[0] in proc.stderr and "Traceback" not in proc.stderr


# --- 3. --profile against the inventory -----------------------------------------------------------------------------

def test_a_profile_the_inventory_does_not_give_the_node_is_refused_naming_both(cli, lab, base):
    proc = cli("build", "--cluster", lab, "--node", "pi-worker1", "--profile", "worker-4g", "--base", base,
               "--dry-run", "--kube-key", KUBE_KEY)
    one_line_error(proc, "--profile worker-4g", "pi-worker1", "profile worker-8g", "inventory.yaml")
    succeeded(cli("build", "--cluster", lab, "--node", "pi-worker1", "--profile", "worker-8g", "--base", base,
                  "--dry-run", "--kube-key", KUBE_KEY))  # the same profile, said again: fine


def test_an_x86_node_is_told_to_make_a_seed_iso(cli, lab, base):
    proc = cli("build", "--cluster", lab, "--node", "x86a", "--base", base, "--dry-run", "--kube-key", KUBE_KEY)
    one_line_error(proc, "x86-worker", "ubuntu-raspi", f"pi-image seed-iso --cluster {lab} --node x86a")


# --- 4. next steps per kind of image --------------------------------------------------------------------------------

def test_a_profile_image_is_only_ever_told_to_be_written_by_pi_image_flash(cli, lab, base, tmp_path):
    image = tmp_path / "worker-8g.img"
    proc = succeeded(cli("build", "--cluster", lab, "--profile", "worker-8g", "--base", base, "-o", image,
                         "--kube-key", KUBE_KEY))
    steps = proc.stdout.split("\nNext:", 1)[1]

    assert f"pi-image flash {image} /dev/sdX --cluster {lab}" in steps
    assert f"pi-image flash {image} /dev/sdX --cluster {lab} --node NAME" in steps
    assert "sudo" not in steps and "--nobmap" not in steps  # no bmaptool or dd command: a card with no node
    bmap = cli("build", "--cluster", lab, "--profile", "worker-8g", "--base", base, "-o", tmp_path / "b.img",
               "--kube-key", KUBE_KEY, "--bmap")
    one_line_error(bmap, "--bmap", "pi-image flash", "--node NAME")
    assert not (tmp_path / "b.img").exists()


def test_a_raw_and_a_compressed_image_of_a_node_each_have_their_own_bmap(cli, lab, base, tmp_path):
    raw, packed = tmp_path / "pi-worker1.img", tmp_path / "pi-worker1.img.zst"
    before = generations(lab)["pi-worker1"]
    builds = {image: succeeded(cli("build", "--cluster", lab, "--node", "pi-worker1", "--base", base, "-o", image,
                                   "--kube-key", KUBE_KEY, "--bmap")) for image in (packed, raw)}

    assert (tmp_path / "pi-worker1.img.bmap").read_bytes() != (tmp_path / "pi-worker1.img.zst.bmap").read_bytes()
    for image, proc in builds.items():
        assert f"sudo bmaptool copy --bmap {image}.bmap {image} /dev/sdX" in proc.stdout
        assert f"pi-image flash {image} /dev/sdX" in proc.stdout and "--nobmap" not in proc.stdout
    if shutil.which("bmaptool") is None:
        pytest.skip("bmaptool (Debian package bmap-tools) is not installed: ./dev test installs it")
    for generation, image in enumerate((packed, raw), before + 1):  # bmaptool finds IMAGE.bmap by itself
        card = random_card(tmp_path / "card.img", raw.stat().st_size)
        tool("bmaptool", "copy", image, card)  # its checksums hold for that image's own bytes
        fsck_all(card, tmp_path)
        assert json.loads(filesystems(card)["root"].text("/etc/pi-image/node.json"))["generation"] == generation


# --- 5. Wi-Fi -------------------------------------------------------------------------------------------------------

PSK = "correct horse battery 42"


def test_wifi_fields_and_a_passphrase_file_make_the_nodes_wifi(cli, base, tmp_path):
    secret = tmp_path / "psk.txt"
    secret.write_text(PSK + "\nignored\n")
    image = tmp_path / "w.img"
    succeeded(cli("build", "--no-cluster", "-p", "worker-8g", "--base", base, "-o", image, "--kube-key", KUBE_KEY,
                  "--set", "wifi.ssid=HomeNet", "--set", "wifi.country=GB", "--wifi-psk-file", secret))
    fs = filesystems(image)
    netplan = yaml.safe_load(fs["root"].text("/etc/netplan/60-pi-image-wifi.yaml"))
    access_points = next(iter(netplan["network"]["wifis"].values()))["access-points"]

    assert access_points == {"HomeNet": {"password": PSK}}
    assert "cfg80211.ieee80211_regdom=GB" in fs["boot"].text("/cmdline.txt")
    assert PSK not in (tmp_path / "w.img.json").read_text() and image.stat().st_mode & 0o777 == 0o600


def test_a_passphrase_on_the_command_line_is_refused_and_never_repeated(cli, base, tmp_path):
    for assignment in ("wifi.psk=" + PSK, f'wifi={{ssid: HomeNet, psk: "{PSK}", country: GB}}'):
        proc = cli("build", "-p", "worker-8g", "--base", base, "--dry-run", "--set", "wifi.ssid=HomeNet",
                   "--set", assignment)
        line = one_line_error(proc, "shell history", "--wifi-psk-file FILE")
        assert "correct horse" not in proc.stderr + proc.stdout, line
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one_line_error(cli("build", "-p", "worker-8g", "--base", base, "--dry-run", "--wifi-psk-file", empty),
                   "--wifi-psk-file", "empty", "passphrase")
    short = tmp_path / "short.txt"
    short.write_text("abc\n")
    one_line_error(cli("build", "-p", "worker-8g", "--base", base, "--dry-run", "--wifi-psk-file", short),
                   "--wifi-psk-file", "8 to 63")


def test_the_passphrase_prompt_is_hidden_and_asked_twice(cli, base, monkeypatch):
    from builder.cli import main

    monkeypatch.setenv("PI_IMAGE_CACHE", str(cli.cache))
    result = CliRunner().invoke(main, ["build", "-p", "worker-8g", "--base", str(base), "--kube-key", str(KUBE_KEY),
                                       "--no-login", "--dry-run", "--json", "--set", "wifi.ssid=HomeNet",
                                       "--set", "wifi.country=GB", "--wifi-psk"], input=f"{PSK}\n{PSK}\n")

    assert result.exit_code == 0, result.output
    assert PSK not in result.output  # hidden: not echoed
    plan = json.loads(result.stdout)
    wifi = next(op for op in plan["ops"] if op["path"] == "/etc/netplan/60-pi-image-wifi.yaml")
    assert wifi["size"] > len(PSK) and "sha256" not in wifi
