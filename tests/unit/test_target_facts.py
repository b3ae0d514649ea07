"""Facts about one OS live on its target class (issue 27): the GPU runtime's packages, whether a catalog download
can hold it, the groups a user pi-image makes is given; other modules ask the target."""

from __future__ import annotations

from builder.bases.catalog import TARGETS as CATALOG_TARGETS
from builder.config.profiles import SCHEMA
from builder.config.runtimes import runtime_packages, runtime_source
from builder.targets import DEFAULT_TARGET, TARGET_NAMES, TARGETS, target_class
from builder.targets.cmdline import CGROUP_FLAGS, DEFAULT_CGROUP_FLAGS


def test_the_gpu_runtime_is_installed_only_on_the_target_whose_gpu_it_is() -> None:
    gpu = {cls.name: cls.gpu_packages for cls in TARGETS if cls.gpu_packages}
    assert gpu == {"jetson-sd": ("nvidia-container-runtime",), "l4t-rootfs": ("nvidia-container-runtime",)}
    assert runtime_source("ubuntu", "18.04", "jetson-sd").packages == ("containerd", "nvidia-container-runtime")
    assert runtime_source("ubuntu", "18.04", "ubuntu-raspi").packages == ("containerd",)
    assert runtime_packages("containerd", False, "1.31", "ubuntu", "18.04", "l4t-rootfs",
                            default_runtime="nvidia") == ["containerd", "nvidia-container-runtime"]


def test_a_catalog_entry_may_name_every_target_but_a_directory_tree() -> None:
    assert CATALOG_TARGETS == tuple(name for name in TARGET_NAMES if name != "l4t-rootfs")
    assert [cls.name for cls in TARGETS if not cls.in_catalog] == ["l4t-rootfs"]


def test_a_target_is_found_by_name() -> None:
    assert target_class("jetson-sd").__name__ == "JetsonSd"
    assert target_class("raspios").name == "raspios" and target_class("nothing") is None
    assert DEFAULT_TARGET in TARGET_NAMES


def test_the_cgroup_flags_a_profile_appends_by_default_are_those_inspect_looks_for_and_swap_accounting() -> None:
    assert SCHEMA["cgroup_flags"].default == [*CGROUP_FLAGS, "swapaccount=1"] == list(DEFAULT_CGROUP_FLAGS)


def test_offline_targets_give_a_made_user_the_debian_admin_groups() -> None:
    offline = {cls.name: cls.admin_groups for cls in TARGETS if cls.first_boot == "offline"}
    assert set(offline) == {"jetson-sd", "l4t-rootfs", "kali-raspi"}
    assert all("sudo" in groups for groups in offline.values())
