"""Goal 4's first-boot ratios (tests/system/conftest.first_boot_ratios) from a system run's figures, and the stories
they name still exist and boot what the figures say."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

SYSTEM = Path(__file__).resolve().parents[1] / "system"


def system_conftest():
    """tests/system/conftest.py as a module of its own name (another conftest is `conftest` here)."""
    spec = importlib.util.spec_from_file_location("system_conftest", SYSTEM / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Boots of a system run's system-figures.json (2026-12-05, 2-core VM; a few fields of each, other stories left out).
RECORDED = {"boots": [
    {"test": "test_boot_control_plane", "boot": 1, "qemu_seconds": 81.7, "qemu_start_to_init_done": 62.9,
     "qemu_start_to_endpoint_started": 64.9, "node": "pi-master1"},
    {"test": "test_boot_control_plane", "boot": 1, "qemu_seconds": 99.4, "qemu_start_to_joined": 95.2,
     "node": "pi-worker1"},
    {"test": "test_boot_joins", "boot": 1, "qemu_seconds": 105.0, "qemu_start_to_joined": 99.8, "node": "pi-worker1"},
    {"test": "test_boot_joins", "boot": 2, "qemu_seconds": 40.1, "node": "pi-worker1"},
    {"test": "test_boot_offline", "boot": 1, "qemu_seconds": 178.5, "qemu_start_to_init_done": 152.2,
     "qemu_start_to_endpoint_started": 156.0, "node": "pi-master1"},
    {"test": "test_boot_offline", "boot": 1, "qemu_seconds": 176.3, "qemu_start_to_joined": 170.8,
     "node": "pi-worker1"},
    {"test": "test_master_late_the_agent_backs_off_and_joins_once_the_endpoint_is_up", "boot": 1,
     "qemu_seconds": 45.2, "qemu_start_to_joined": 41.2, "node": "pi-worker1"},
    {"test": "test_power_cut_just_after_joining_the_next_boot_does_not_join_again", "boot": 1,
     "qemu_seconds": 43.9, "qemu_start_to_joined": 42.7, "node": "pi-worker1"},
    {"test": "test_power_cut_just_after_joining_the_next_boot_does_not_join_again", "boot": 2,
     "qemu_seconds": 35.9, "node": "pi-worker1"},
]}


def test_the_offline_and_network_first_boots_are_given_over_the_preinstalled_ones():
    first_boot = system_conftest().first_boot_ratios(RECORDED)

    assert first_boot == {
        "offline_worker_joined": 170.8, "offline_master_init_done": 152.2, "offline_master_endpoint_started": 156.0,
        "network_install_joined": 99.8, "preinstalled_joined": 42.7, "preinstalled_master_init_done": 62.9,
        "offline_worker_over_preinstalled": 4.0, "network_install_over_preinstalled": 2.34,
        "offline_master_init_over_preinstalled": 2.42}


def test_a_story_the_run_left_out_is_left_out_of_the_figures():
    without_offline = {"boots": [boot for boot in RECORDED["boots"] if boot["test"] != "test_boot_offline"]}

    first_boot = system_conftest().first_boot_ratios(without_offline)

    assert first_boot == {"network_install_joined": 99.8, "preinstalled_joined": 42.7,
                          "preinstalled_master_init_done": 62.9, "network_install_over_preinstalled": 2.34}
    assert system_conftest().first_boot_ratios({"boots": []}) == {}


def test_the_stories_named_exist_and_the_reference_boots_the_preinstalled_base():
    first_boots = system_conftest().FIRST_BOOTS
    builds, tests = {}, {}
    for path in SYSTEM.glob("test_*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "BUILD" for t in node.targets):
                pairs = zip(node.value.keys, node.value.values, strict=True)
                builds[path.stem] = {key.value: value.value for key, value in pairs
                                     if isinstance(value, ast.Constant)}  # base, offline (nodes name constants)
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                tests[node.name] = path.stem

    module = {name: tests.get(story, story) for name, (story, _node, _milestone) in first_boots.items()}
    assert all((SYSTEM / f"{stem}.py").exists() for stem in module.values()), module
    for name in ("preinstalled_joined", "preinstalled_master_init_done"):
        assert builds[module[name]]["base"] == "preinstalled", name
    assert builds[module["offline_worker_joined"]] == {"base": "stock", "offline": True}
    assert builds.get(module["network_install_joined"], {}).get("base", "stock") == "stock"
