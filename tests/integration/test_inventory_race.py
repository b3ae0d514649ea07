"""Many hands on one inventory at once: `pi-image cluster add-node` and `remove-node` (the real CLI, each its own
process) race builds recording the generation of the card they made, while a watcher re-reads the files all along.
Every change goes through one lock and re-reads the inventory under it, so nothing is lost, no generation ever goes
back (a reverted generation would make a new card be refused and an older card's credential valid again), and a
reader never sees a half-written file.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from join_fakes.harness import REPO

from builder import cluster as clusters
from builder.errors import UserError

ADDED = [f"new{i:02}" for i in range(1, 21)]  # 20 `cluster add-node`
REMOVED = [f"old{i:02}" for i in range(1, 11)]  # 10 `cluster remove-node`, each of a node built twice
BUILT = [f"pi-worker{i:02}" for i in range(1, 21)]  # 20 builds, each recording its card's generation
FORK = multiprocessing.get_context("fork")


def build(directory: Path, name: str, results) -> None:
    """What `pi-image build --cluster DIR --node NAME` does to the inventory: read the node's generation when it
    starts, make the card (here: wait a while), record the next generation once the card is complete."""
    random.seed()  # each fork its own timing
    time.sleep(random.uniform(0, 1.5))  # builds start while the CLI processes come and go
    built = clusters.load_cluster(directory).node(name).generation + 1
    time.sleep(random.uniform(0, 0.05))
    try:
        clusters.record_generation(directory, name, built)
    except UserError as err:
        results.put((name, None, str(err)))
        return
    results.put((name, built, None))


def watch(directory: Path, stop, results) -> None:
    """Re-read inventory.yaml and tokend.json until `stop`: every generation one of them shows must never be lower
    in a later read of the same file (tokend.json is written just after inventory.yaml, so it may lag a moment)."""
    highest: dict[tuple[str, str], int] = {}
    reads, backwards, unreadable = 0, [], []
    while not stop.is_set():
        for path in (directory / "inventory.yaml", directory / "tokend.json"):
            try:
                text = path.read_text()
                data = yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
                seen = (dict(data.get("retired") or {}) | {n["name"]: n.get("generation", 0) for n in data["nodes"]}
                        if path.suffix == ".yaml" else data["nodes"])
            except Exception as err:  # noqa: BLE001 — any failure to read is what this watcher is for
                unreadable.append(f"{path.name}: {err!r}")
                continue
            reads += 1
            for name, generation in seen.items():
                key = (path.name, name)
                if generation < highest.get(key, 0):
                    backwards.append(f"{path.name}: {name} {highest[key]} -> {generation}")
                highest[key] = max(generation, highest.get(key, 0))
    results.put((reads, backwards, unreadable))


def pi_image(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "builder", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_adds_removes_and_builds_racing_lose_nothing_and_never_take_a_generation_back(tmp_path, capsys):
    cluster = clusters.init_cluster(tmp_path / "lab", "192.168.6.10:6443", "192.168.6.10:8443", "1.31",
                                    "192.168.6.0/24")
    directory = cluster.directory
    for name in BUILT + REMOVED:
        clusters.add_node(cluster, name, "worker-8g", None, "worker")
    for name in REMOVED:
        for generation in (1, 2):
            clusters.record_generation(directory, name, generation)
    results, stop = FORK.Queue(), FORK.Event()
    watcher = FORK.Process(target=watch, args=(directory, stop, results))
    watcher.start()
    started = time.monotonic()

    builds = [FORK.Process(target=build, args=(directory, name, results)) for name in BUILT]
    for process in builds:
        process.start()
    commands = [pi_image("cluster", "add-node", directory, name, "--profile", "worker-8g") for name in ADDED]
    commands += [pi_image("cluster", "remove-node", directory, name) for name in REMOVED]
    outcomes = [(command.args[3:7], command.wait(120), command.stderr.read()) for command in commands]
    recorded = dict((name, (built, error)) for name, built, error in (results.get(timeout=120) for _ in builds))
    for process in builds:
        process.join(30)
    elapsed = time.monotonic() - started
    stop.set()
    reads, backwards, unreadable = results.get(timeout=30)
    watcher.join(30)

    final = clusters.load_cluster(directory)
    generations = {node.name: node.generation for node in final.nodes}
    endpoint = json.loads((directory / "tokend.json").read_text())["nodes"]
    assert [outcome for outcome in outcomes if outcome[1] != 0] == []
    assert {name: error for name, (_, error) in recorded.items() if error} == {}
    lost = {"adds lost": [name for name in ADDED if name not in generations],
            "removes lost": [name for name in REMOVED if name in generations],
            "builds lost or taken back": [f"{name}: {generations.get(name)}" for name in BUILT
                                          if generations.get(name) != recorded[name][0]]}
    assert lost == {"adds lost": [], "removes lost": [], "builds lost or taken back": []}
    assert sorted(generations) == sorted(ADDED + BUILT)
    assert {name: generations[name] for name in BUILT + ADDED} == dict.fromkeys(BUILT, 1) | dict.fromkeys(ADDED, 0)
    assert final.retired == dict.fromkeys(REMOVED, 2), "a removed node keeps its generation for a later re-add"
    assert endpoint == generations, "the endpoint's configuration is the inventory's"
    assert backwards == [] and unreadable == [] and reads > 0
    assert (mode(directory / "inventory.yaml"), mode(directory / "tokend.json")) == (0o644, 0o600)
    assert sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp")) == []
    with capsys.disabled():
        print(f"\ninventory race: {len(commands)} CLI processes ({len(ADDED)} add-node, {len(REMOVED)} remove-node) "
              f"and {len(builds)} builds recording a generation, in {elapsed:.1f} s; the watcher read the files "
              f"{reads} times: 0 changes lost, 0 generations back, 0 unreadable")


def test_add_and_remove_bring_the_callers_stale_copy_up_to_date(tmp_path):
    cluster = clusters.init_cluster(tmp_path / "lab", "192.168.6.10:6443", "192.168.6.10:8443", "1.31",
                                    "192.168.6.0/24")
    clusters.add_node(cluster, "pi-worker1", "worker-8g", None, "worker")
    stale = clusters.load_cluster(cluster.directory)
    clusters.record_generation(cluster.directory, "pi-worker1", 1)  # a build finished after `stale` was read

    clusters.add_node(stale, "pi-worker2", "worker-8g", None, "worker")
    clusters.remove_node(stale, "pi-worker2")

    assert [(node.name, node.generation) for node in stale.nodes] == [("pi-worker1", 1)]
    assert clusters.load_cluster(cluster.directory).nodes == stale.nodes
    assert stale.retired == {"pi-worker2": 0}


def test_a_file_base_is_kept_as_its_absolute_path_a_name_or_url_as_given(tmp_path, monkeypatch):
    image = tmp_path / "bases" / "jetson-sd.img"
    image.parent.mkdir()
    image.write_bytes(b"\0" * 512)
    cluster = clusters.init_cluster(tmp_path / "lab", "192.168.6.10:6443", "192.168.6.10:8443", "1.31",
                                    "192.168.6.0/24")
    monkeypatch.chdir(tmp_path)

    relative = clusters.add_node(cluster, "jetson1", "worker-8g", None, "worker", base="bases/jetson-sd.img")
    named = clusters.add_node(cluster, "pi1", "worker-8g", None, "worker", base="ubuntu-24.04")
    url = clusters.add_node(cluster, "pi2", "worker-8g", None, "worker", base="https://example.com/x.img.xz")
    monkeypatch.chdir(REPO)

    assert relative.base == str(image) and Path(relative.base).is_absolute()
    assert (named.base, url.base) == ("ubuntu-24.04", "https://example.com/x.img.xz")
    assert clusters.load_cluster(cluster.directory).node("jetson1").base == str(image)
    with pytest.raises(UserError, match=r"--base bases/jetson-sd.iso: no such file or directory"):
        clusters.add_node(cluster, "pi3", "worker-8g", None, "worker", base="bases/jetson-sd.iso")
