"""Profiles: inheritance, validation errors that name the file and line, --set parsing."""

from pathlib import Path

import pytest

from builder.config.profiles import list_profiles, load_profile, parse_set
from builder.errors import UserError

SEED_MACHINES = {"worker-8g", "worker-4g", "master-2g", "kali-worker", "jetson-gpu"}


def test_shipped_profiles_cover_the_seed_machines():
    names = {p.name for p in list_profiles()}
    assert SEED_MACHINES <= names
    for p in list_profiles():
        assert p["description"], f"{p.name} needs a one-line description"


def test_extends_chain_resolves_values():
    p = load_profile("kali-worker")
    assert p["memory_gb"] == 4 and p["kubernetes_version"] == "1.31" and p["runtime"] == "containerd"
    assert [s.stem for s in p.sources] == ["kali-worker", "worker-4g", "common"]


def test_machine_profiles_name_no_os_and_jetson_ones_restrict_their_target():
    """The OS comes from the base: a Pi profile pins no OS (only the Raspberry Pi family), base, user or OS overlay;
    only what exists on one target alone (Jetson's nvidia runtime, an L4T rootfs tree) restricts it further."""
    for name in ("worker-8g", "worker-4g", "master-2g", "kali-worker", "common"):
        p = load_profile(name)
        family = None if name == "common" else "raspberry-pi"
        assert (p["target"], p["base"], p["user"], p["overlays"]) == (family, None, None, []), name
        assert "seed" not in p["description"], name
    assert (load_profile("jetson-gpu")["target"], load_profile("jetson-l4t")["target"]) == ("jetson-sd", "l4t-rootfs")


def test_typo_names_file_line_and_suggestion(tmp_path: Path):
    f = tmp_path / "mine.yaml"
    f.write_text("extends: worker-8g\ndescription: x\nruntim: docker\n")
    with pytest.raises(UserError, match=r"mine\.yaml:3: unknown key 'runtim' \(did you mean 'runtime'\?\)"):
        load_profile(str(f))


def test_unknown_profile_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean 'worker-8g'"):
        load_profile("worker-9g")


def test_wrong_type_and_choice_are_refused(tmp_path: Path):
    f = tmp_path / "bad.yaml"
    f.write_text("kubernetes_version: 1.31\n")
    with pytest.raises(UserError, match="bad.yaml:1: 'kubernetes_version' must be a string"):
        load_profile(str(f))
    with pytest.raises(UserError, match="--set: 'runtime' must be one of containerd, docker"):
        load_profile("worker-8g", {"runtime": "podman"})


def test_set_parses_yaml_values_and_keeps_versions_as_strings():
    assert parse_set(("kubernetes_version=1.30", "ssh_authorized_keys=[a, b]")) == {
        "kubernetes_version": "1.30", "ssh_authorized_keys": ["a", "b"]}
    with pytest.raises(UserError, match="unknown key 'hostnme'"):
        load_profile("worker-8g", parse_set(("hostnme=x",)))
