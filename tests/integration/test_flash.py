"""`pi-image flash`: a card written over old random bytes fscks clean and holds the image's files; a zeroed one is
byte-exact; verification reads the card back; an interrupted flash leaves no table; a profile image gets a node's
identity stamped at flash time, the same files a per-node build of that node has. Read back with sfdisk, debugfs,
mtools, e2fsck and fsck.vfat; bmaptool writes the .bmap a build made.
"""

from __future__ import annotations

import filecmp
import json
import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from readback import (
    KUBE_KEY,
    Card,
    PiImage,
    filesystems,
    fsck_all,
    make_cluster,
    random_card,
    same_bytes,
    succeeded,
    tool,
)

from builder.cards.writer import chunks, compare
from builder.errors import UserError
from builder.image.usage import usage_map

NODES = {"pi-master1": ["--profile", "master-2g", "--address", "192.168.6.10"],
         "pi-worker1": ["--profile", "worker-8g", "--address", "192.168.6.21"]}


@pytest.fixture(scope="module")
def lab(cli: PiImage, tmp_path_factory) -> Path:
    return make_cluster(cli, tmp_path_factory.mktemp("flash-cluster") / "lab", "192.168.6.0/24", NODES)


@pytest.fixture(scope="module")
def profile_image(cli: PiImage, lab: Path, base: Path, tmp_path_factory) -> Path:
    """The cluster's worker-8g image: no node yet."""
    image = tmp_path_factory.mktemp("profile-image") / "worker-8g.img"
    succeeded(cli("build", "--cluster", lab, "--profile", "worker-8g", "--base", base, "-o", image,
                  "--kube-key", KUBE_KEY))
    return image


def flash(cli: PiImage, image: Path, card: Path, *args: str | Path, env=None) -> dict:
    proc = succeeded(cli("flash", image, card, "--yes", "--json", *args, env=env))
    return json.loads(proc.stdout)


def dump(image: Path, where: Path) -> dict[str, Path]:
    """Every file of the image's root and boot filesystems, extracted with debugfs and mtools."""
    trees = {}
    for name, reader in filesystems(image).items():
        dest = where / name
        dest.mkdir(parents=True)
        if name == "root":
            tool("debugfs", "-R", f"rdump / {dest}", reader.spec)
        else:
            tool("mcopy", "-s", "-n", "-i", reader.spec, "::/", str(dest))
        trees[name] = dest
    return trees


def differences(a: Path, b: Path, ignore: set[str] = frozenset()) -> list[str]:
    """Relative paths whose content differs between two extracted trees (or exist in one only)."""
    found: list[str] = []

    def walk(cmp: filecmp.dircmp, prefix: str) -> None:
        found.extend(prefix + n for n in cmp.left_only + cmp.right_only + cmp.funny_files)
        _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
        found.extend(prefix + n for n in mismatch + errors)
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(filecmp.dircmp(a, b), "/")
    return sorted(path for path in found if path not in ignore)


def layout(image: Path) -> tuple:
    """The partition table as sfdisk reads it, without the file's own name."""
    table = Card(image).table
    return (table["label"], table.get("id"),
            [(p["start"], p["size"], p["type"], p.get("bootable")) for p in table["partitions"]])


def test_a_used_card_gets_only_what_the_filesystems_use_and_fscks_clean(cli, base, tmp_path):
    image = tmp_path / "node.img"
    succeeded(cli("build", "--profile", "worker-8g", "--base", base, "-o", image, "--kube-key", KUBE_KEY))
    card = random_card(tmp_path / "card.img", image.stat().st_size)

    report = flash(cli, image, card)

    assert layout(card) == layout(image)  # sfdisk reads the same partition table
    fsck_all(card, tmp_path)
    trees_image, trees_card = dump(image, tmp_path / "image"), dump(card, tmp_path / "card")
    for name in trees_image:
        assert differences(trees_image[name], trees_card[name]) == [], name
    assert report["written_bytes"] == report["verified_bytes"] == usage_map(image).mapped_bytes()
    assert report["written_bytes"] < image.stat().st_size // 4  # a 2 GiB sample holds a few MiB
    assert "written" not in report["previous"] and report["previous"]  # it said what the card held


def test_a_zeroed_file_becomes_the_image_byte_for_byte(cli, base, tmp_path):
    image = tmp_path / "node.img"
    succeeded(cli("build", "--profile", "worker-8g", "--base", base, "-o", image, "--kube-key", KUBE_KEY))
    card = tmp_path / "new-disk.img"  # does not exist yet: created, sparse

    flash(cli, image, card)

    assert same_bytes(image, card)
    assert card.stat().st_mode & 0o777 == 0o600


def test_verification_names_the_first_byte_that_differs(sample_image, tmp_path):
    image = sample_image("ubuntu-raspi")
    card = tmp_path / "card.img"
    shutil.copyfile(image, card)
    usage = usage_map(image)
    bad = usage.ranges[-1][0] + 12345
    with open(card, "r+b") as f:
        f.seek(bad)
        byte = f.read(1)
        f.seek(bad)
        f.write(bytes([byte[0] ^ 0xFF]))
    with open(image, "rb") as source, open(card, "rb") as written, \
            pytest.raises(UserError, match=f"differs from the image at byte {bad} "):
        compare(source.fileno(), written.fileno(), card, list(chunks(usage.ranges)))


def assert_no_table_left(cli: PiImage, card: Path) -> None:
    """The card's first MiB is blank, sfdisk finds no table, and `pi-image inspect` says what happened."""
    with open(card, "rb") as f:
        assert f.read(1 << 20) == bytes(1 << 20)
    inspected = cli("inspect", card)
    assert inspected.returncode == 1 and "interrupted" in inspected.stderr, inspected.stderr
    assert tool("sfdisk", "--json", card, check=False).returncode != 0


def test_a_failed_write_leaves_no_partition_table_and_says_so(cli, base, tmp_path):
    card = tmp_path / "card.img"  # a card that holds an OS now, a little larger than the image
    tool("cp", "--sparse=always", base, card)
    os.truncate(card, base.stat().st_size + (64 << 20))
    limit = base.stat().st_size + (1 << 20)  # writes past the image's end fail (EFBIG)

    proc = subprocess.run(cli.argv("flash", base, card, "--yes"), capture_output=True, text=True, env=cli.env(),
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))

    assert proc.returncode == 1
    assert "holds no partition table now" in proc.stderr and "run the same command again" in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert_no_table_left(cli, card)


def test_a_flash_killed_mid_write_leaves_no_partition_table(cli, sample_copy, tmp_path):
    image = sample_copy("ubuntu-raspi")  # with 384 MiB of data in its root: writing it takes a while
    big = tmp_path / "big.bin"
    random_card(big, 384 << 20)
    root = filesystems(image)["root"]
    tool("debugfs", "-w", "-R", f"write {big} /big.bin", root.spec)
    card = tmp_path / "card.img"
    tool("cp", "--sparse=always", image, card)  # the card holds that OS now

    proc = cli.popen("flash", image, card, "--yes", "--no-verify")
    descriptor = os.open(card, os.O_RDONLY)
    try:
        while os.pread(descriptor, 512, 0) != bytes(512) and proc.poll() is None:
            pass  # until the flash has blanked the table region
    finally:
        os.close(descriptor)
    proc.kill()  # SIGKILL: no chance to clean up or say anything
    proc.wait()

    assert proc.returncode == -signal.SIGKILL
    assert_no_table_left(cli, card)


def test_refusals_touch_nothing(cli, base, profile_image, tmp_path):
    card = random_card(tmp_path / "card.img", 4 << 20)
    before = card.read_bytes()
    cases = [
        (["flash", base, tmp_path], "directory"),
        (["flash", base, base, "--yes"], "the image itself"),
        (["flash", card, tmp_path / "x.img", "--yes"], "partition table"),
        (["flash", base, card, "--yes", "--node", "pi-worker1"], "without a cluster"),
        (["flash", base, card], "--yes"),  # no terminal to ask
        (["flash", profile_image, card, "--yes"], "--cluster"),
    ]
    for args, words in cases:
        proc = cli(*args)
        assert proc.returncode != 0 and words in proc.stderr, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert card.read_bytes() == before


def test_stamping_gives_the_files_of_a_per_node_build(cli, lab, base, profile_image, tmp_path):
    built = tmp_path / "pi-worker1.img"
    succeeded(cli("build", "--cluster", lab, "--node", "pi-worker1", "--base", base, "-o", built,
                  "--kube-key", KUBE_KEY))
    card = random_card(tmp_path / "card.img", profile_image.stat().st_size)

    report = flash(cli, profile_image, card, "--cluster", lab, "--node", "pi-worker1")

    assert report["node"] == "pi-worker1" and report["generation"] == 2
    fsck_all(card, tmp_path)
    a, b = dump(built, tmp_path / "built"), dump(card, tmp_path / "card")
    assert differences(a["boot"], b["boot"]) == []
    # the card is the node's newer generation (a fresh credential); its build record names how it was made
    assert differences(a["root"], b["root"]) == ["/etc/pi-image/node.json"]  # build.json too is the same
    ours, theirs = (json.loads((t["root"] / "etc/pi-image/node.json").read_text()) for t in (a, b))
    assert {k: v for k, v in ours.items() if k not in ("credential", "generation")} == \
        {k: v for k, v in theirs.items() if k not in ("credential", "generation")}
    assert theirs["generation"] == 2 and theirs["credential"] != ours["credential"]
    inventory = yaml.safe_load((lab / "inventory.yaml").read_text())["nodes"]
    assert next(n for n in inventory if n["name"] == "pi-worker1")["generation"] == 2


def test_a_profile_image_becomes_the_next_free_node(cli, lab, profile_image, tmp_path):
    cards = [tmp_path / f"card{i}.img" for i in range(2)]
    names = [flash(cli, profile_image, card, "--cluster", lab)["node"] for card in cards]
    inventory = {n["name"]: n for n in yaml.safe_load((lab / "inventory.yaml").read_text())["nodes"]}

    assert len(set(names)) == 2 and all(name.startswith("pi-worker") for name in names)
    for name, card in zip(names, cards, strict=True):
        root = filesystems(card)["root"]
        assert root.text("/etc/hostname") == f"{name}\n"
        config = json.loads(root.text("/etc/pi-image/node.json"))
        assert config["node"] == name and "credential" in config and not config.get("unstamped")
        assert inventory[name]["profile"] == "worker-8g" and inventory[name]["generation"] >= 1
        assert f"{name}" in yaml.safe_load(filesystems(card)["boot"].text("/meta-data"))["instance-id"]


def test_a_profile_image_is_said_to_need_stamping_and_its_agent_stops(cli, profile_image, tmp_path):
    inspected = json.loads(succeeded(cli("inspect", "--json", profile_image)).stdout)
    assert inspected["firstboot"]["stamp_at_flash"] is True
    config = tmp_path / "node.json"
    config.write_text(filesystems(profile_image)["root"].text("/etc/pi-image/node.json"))
    assert "credential" not in json.loads(config.read_text())
    agent = subprocess.run([cli.argv()[0], "-m", "firstboot.agent", "--root", tmp_path / "root", "--config", config],
                           capture_output=True, text=True, env=cli.env())
    assert agent.returncode == 1
    assert "pi-image flash" in (tmp_path / "root/var/lib/pi-image/firstboot.log").read_text()


def test_bmaptool_writes_the_bmap_a_build_made(cli, base, tmp_path):
    if shutil.which("bmaptool") is None:
        pytest.skip("bmaptool (Debian package bmap-tools) is not installed: ./dev test installs it")
    image = tmp_path / "node.img"
    succeeded(cli("build", "--profile", "worker-8g", "--base", base, "-o", image, "--kube-key", KUBE_KEY, "--bmap"))
    assert (tmp_path / "node.img.bmap").is_file()
    card = random_card(tmp_path / "card.img", image.stat().st_size)
    tool("bmaptool", "copy", "--bmap", tmp_path / "node.img.bmap", image, card)
    fsck_all(card, tmp_path)
    assert filesystems(card)["root"].text("/etc/hostname") == "worker-8g\n"


def test_a_node_image_is_written_as_built_even_with_a_default_cluster(cli, lab, base, tmp_path):
    image = tmp_path / "lone.img"
    succeeded(cli("build", "--no-cluster", "--profile", "worker-8g", "--base", base, "-o", image,
                  "--kube-key", KUBE_KEY))
    card = random_card(tmp_path / "card.img", 4 << 20)
    os.chmod(card, 0o644)
    report = flash(cli, image, card, env={"PI_IMAGE_CLUSTER": str(lab)})
    assert report["node"] == "worker-8g" and report["generation"] is None
    assert card.stat().st_mode & 0o777 == 0o600  # a card file is private whatever it was


def test_declining_writes_nothing_and_adds_no_node(lab, profile_image, tmp_path):
    from builder.cards.flash import FlashRequest
    from builder.cards.flash import flash as run_flash

    card = random_card(tmp_path / "card.img", 4 << 20)
    before, inventory = card.read_bytes(), (lab / "inventory.yaml").read_text()
    asked = []
    with pytest.raises(UserError, match="nothing was written"):
        run_flash(FlashRequest(profile_image, card, lab, confirm=lambda question: asked.append(question) and False))
    assert card.read_bytes() == before and (lab / "inventory.yaml").read_text() == inventory
    assert "as the next free worker-8g node" in asked[0] and "everything on it is replaced" in asked[0]


def test_a_nodes_own_image_cannot_become_another_node(cli, lab, base, tmp_path):
    image = tmp_path / "pi-worker1.img"
    succeeded(cli("build", "--cluster", lab, "--node", "pi-worker1", "--base", base, "-o", image,
                  "--kube-key", KUBE_KEY))
    succeeded(cli("cluster", "add-node", lab, "pi-worker9", "--profile", "worker-8g"))
    proc = cli("flash", image, tmp_path / "card.img", "--yes", "--cluster", lab, "--node", "pi-worker9")
    assert proc.returncode == 1 and "own image" in proc.stderr and not (tmp_path / "card.img").exists()


def test_the_next_free_node_is_one_of_the_images_base(cli, lab, profile_image, tmp_path):
    succeeded(cli("cluster", "add-node", lab, "kali9", "--profile", "worker-8g", "--base", "kali-raspberry-pi"))
    name = flash(cli, profile_image, tmp_path / "card.img", "--cluster", lab)["node"]
    assert name != "kali9"
