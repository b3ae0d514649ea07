"""Overlays as data (no image tools): a manifest is validated in one line, templates render in a sandbox with only
the build's values, files get their manifest's modes and owners, JSON merges into what the image (or an earlier
overlay) holds, and a symlink that climbs out of the image is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from builder.errors import UserError
from builder.image import DirectoryFilesystem
from builder.plan import FileOp, Plan, PlanView
from builder.plan.overlays import load_overlay, render_overlay, resolve_overlays
from builder.targets.base import OsRelease
from builder.targets.kali_raspi import KaliRaspi

USERS = {"root": 0, "kali": 1000}
GROUPS = {"root": 0, "adm": 4, "kali": 1000}


def _overlay(directory: Path, files: dict[str, str], manifest: Any = None, links: dict[str, str] | None = None) -> Path:
    """An overlay directory: `files` (relative path -> text), `links` (relative path -> target), and overlay.yaml."""
    directory.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_text(text)
    for rel, target in (links or {}).items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).symlink_to(target)
    if manifest is not None:
        (directory / "overlay.yaml").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return directory


def _render(tmp_path: Path, overlay: Path, context: dict[str, Any] | None = None, plan: Plan | None = None,
            image: dict[str, str] | None = None) -> Plan:
    """Render `overlay` against an image root holding `image` (path -> text) and return the plan."""
    root = tmp_path / "image"
    for path, text in (image or {}).items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(text)
    (root / "boot").mkdir(parents=True, exist_ok=True)
    fs = DirectoryFilesystem(root, writable=False)
    target = KaliRaspi(medium=fs, root=fs, os=OsRelease.parse(""), boot=DirectoryFilesystem(root / "boot", False))
    plan = plan or Plan()
    render_overlay(load_overlay(overlay), dict(context or {}), plan, PlanView(target, plan), USERS, GROUPS)
    return plan


def _by_path(plan: Plan) -> dict[str, FileOp]:
    return {op.path: op for op in plan.ops}


# --- the manifest -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("manifest", "message"), [
    ("files: [unclosed\n", r"overlay.yaml:\d+: not valid YAML"),
    ("- a list\n", "must be a mapping"),
    ("colour: blue\n", r"unknown key\(s\) colour"),
    ("files: [a, b]\n", "'files' must map paths"),
    ("files: {../etc/shadow: {}}\n", "must be a relative path inside the overlay"),
    ("files: {/etc/shadow: {}}\n", "must be a relative path inside the overlay"),
    ("files: {etc/x: 0644}\n", "must map to {mode, owner, merge}"),
    ("files: {etc/x: {perms: '0644'}}\n", r"'etc/x': unknown key\(s\) perms"),
    ("files: {etc/x: {merge: yaml}}\n", "merge must be 'json', not 'yaml'"),
    ("filesystem: efi\n", "filesystem must be 'root' or 'boot'"),
    ("when: [a, b]\n", "'when' names one setting"),
])
def test_a_bad_manifest_is_refused_in_one_line(tmp_path: Path, manifest: str, message: str) -> None:
    overlay = _overlay(tmp_path / "bad", {}, manifest)
    with pytest.raises(UserError, match=message) as err:
        load_overlay(overlay)
    assert "\n" not in str(err.value) and str(overlay / "overlay.yaml") in str(err.value)


def test_a_manifest_is_optional_and_read_as_given(tmp_path: Path) -> None:
    plain = load_overlay(_overlay(tmp_path / "plain", {"etc/a": "a"}))
    assert (plain.name, plain.filesystem, plain.files, plain.when) == ("plain", "root", {}, None)
    full = load_overlay(_overlay(tmp_path / "full", {}, "description: d\nfilesystem: boot\nwhen: proxy\n"
                                                     "files: {etc/a: null, etc/b: {mode: '0600'}}\n"))
    assert (full.filesystem, full.when, full.files) == ("boot", "proxy", {"etc/a": {}, "etc/b": {"mode": "0600"}})


def test_overlays_resolve_in_order_and_a_shipped_name_is_not_replaced_by_accident(tmp_path: Path) -> None:
    mine = _overlay(tmp_path / "mine", {"etc/a": "a"})
    found = resolve_overlays(["k8s-kernel", "proxy"], [str(mine)])
    assert [overlay.name for overlay in found] == ["k8s-kernel", "proxy", "mine"]
    shadowing = _overlay(tmp_path / "elsewhere" / "proxy", {"etc/b": "b"})
    with pytest.raises(UserError, match="has the name of the shipped overlay 'proxy'"):
        resolve_overlays(["proxy"], [str(shadowing)])
    replaced = resolve_overlays(["proxy"], [str(shadowing)], replace=True)
    assert [overlay.path for overlay in replaced] == [shadowing]
    with pytest.raises(UserError, match=r"unknown overlay 'nope'.*known: .*k8s-kernel"):
        resolve_overlays(["nope"], [])
    with pytest.raises(UserError, match="not a directory"):
        resolve_overlays([], [str(tmp_path / "missing")])


# --- rendering ----------------------------------------------------------------------------------------------------

def test_templates_render_with_the_builds_values_and_files_get_their_modes_and_owners(tmp_path: Path) -> None:
    overlay = _overlay(tmp_path / "o", {"etc/motd.j2": "hello {{ node }}\n", "etc/plain": "{{ not rendered }}\n",
                                        "home/kali/.profile": "x\n", "etc/secret": "s\n", "srv/data/keep": ""},
                       {"files": {"etc/secret": {"mode": "0600", "owner": "root:adm"},
                                  "home/kali/.profile": {"owner": "kali"}, "srv/data": {"mode": "0700"}}})
    ops = _by_path(_render(tmp_path, overlay, {"node": "pi-1"}))
    assert ops["/etc/motd"].content == b"hello pi-1\n" and ops["/etc/plain"].content == b"{{ not rendered }}\n"
    assert (ops["/etc/motd"].mode, ops["/etc/motd"].uid, ops["/etc/motd"].gid) == (0o644, 0, 0)
    assert (ops["/etc/secret"].mode, ops["/etc/secret"].uid, ops["/etc/secret"].gid) == (0o600, 0, 4)
    assert (ops["/home/kali/.profile"].uid, ops["/home/kali/.profile"].gid) == (1000, 1000)
    assert ops["/srv/data"].action == "mkdir" and ops["/srv/data"].mode == 0o700
    assert "/etc" not in ops and "/home/kali" not in ops  # unlisted directories are made as needed, not planned
    assert all(op.step == "overlay:o" for op in ops.values())


@pytest.mark.parametrize(("template", "message"), [
    ("{{ missing }}", "'missing' is undefined"),
    ("{% if %}", r"motd\.j2:1: template error"),
    ("{{ ''.__class__.__mro__ }}", "refused by the template sandbox: access to attribute '__class__'"),
    ("{{ cycler.__init__.__globals__ }}", "refused by the template sandbox: access to attribute '__init__'"),
])
def test_a_template_that_reaches_beyond_the_builds_values_is_refused(tmp_path: Path, template: str,
                                                                     message: str) -> None:
    overlay = _overlay(tmp_path / "o", {"etc/motd.j2": template})
    with pytest.raises(UserError, match=message) as err:
        _render(tmp_path, overlay, {"node": "pi-1"})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("spec", "message"), [
    ({"owner": "nobody"}, "no user or group 'nobody' in the image"),
    ({"owner": "root:wheel"}, "no user or group 'wheel' in the image"),
    ({"mode": "rw-r--r--"}, "mode must be octal"),
    ({"mode": "17777"}, "mode must be octal"),
])
def test_an_owner_the_image_lacks_or_a_bad_mode_is_refused(tmp_path: Path, spec: dict[str, str], message: str) -> None:
    overlay = _overlay(tmp_path / "o", {"etc/x": "x"}, {"files": {"etc/x": spec}})
    with pytest.raises(UserError, match=message):
        _render(tmp_path, overlay)


def test_numeric_owners_need_no_names(tmp_path: Path) -> None:
    overlay = _overlay(tmp_path / "o", {"etc/x": "x"}, {"files": {"etc/x": {"owner": "123:456", "mode": "0640"}}})
    op = _by_path(_render(tmp_path, overlay))["/etc/x"]
    assert (op.uid, op.gid, op.mode) == (123, 456, 0o640)


def test_json_merges_into_the_images_file_and_into_what_an_earlier_overlay_planned(tmp_path: Path) -> None:
    spec = {"files": {"etc/docker/daemon.json.j2": {"merge": "json"}}}
    overlay = _overlay(tmp_path / "o", {"etc/docker/daemon.json.j2": '{"exec-opts": ["{{ driver }}"],'
                                                                      ' "runtimes": {"ours": {"path": "/x"}}}'}, spec)
    image = {"/etc/docker/daemon.json": '{"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}, "a": 1}'}
    merged = json.loads(_by_path(_render(tmp_path, overlay, {"driver": "native.cgroupdriver=systemd"},
                                         image=image))["/etc/docker/daemon.json"].content or b"")
    assert merged == {"a": 1, "exec-opts": ["native.cgroupdriver=systemd"],
                      "runtimes": {"nvidia": {"path": "nvidia-container-runtime"}, "ours": {"path": "/x"}}}
    plan = Plan()
    plan.add(FileOp("write", "root", "/etc/docker/daemon.json", "overlay:earlier", content=b'{"b": 2}'))
    merged = json.loads(_by_path(_render(tmp_path, overlay, {"driver": "d"}, plan=plan))["/etc/docker/daemon.json"]
                        .content or b"")
    assert merged == {"b": 2, "exec-opts": ["d"], "runtimes": {"ours": {"path": "/x"}}}


def test_json_that_is_not_json_is_refused(tmp_path: Path) -> None:
    spec = {"files": {"etc/d.json": {"merge": "json"}}}
    with pytest.raises(UserError, match="rendered JSON is invalid"):
        _render(tmp_path, _overlay(tmp_path / "o", {"etc/d.json": "{not json"}, spec))
    with pytest.raises(UserError, match="the image's d.json is not valid JSON"):
        _render(tmp_path, _overlay(tmp_path / "p", {"etc/d.json": "{}"}, spec), image={"/etc/d.json": "{broken"})


def test_symlinks_are_kept_and_one_that_climbs_out_of_the_image_is_refused(tmp_path: Path) -> None:
    overlay = _overlay(tmp_path / "o", {}, links={"etc/absolute": "/usr/share/x", "etc/deep/relative": "../other",
                                                  "etc/to-dir": "../usr"})
    ops = _by_path(_render(tmp_path, overlay))
    assert {path: (op.action, op.target) for path, op in ops.items()} == {
        "/etc/absolute": ("symlink", "/usr/share/x"), "/etc/deep/relative": ("symlink", "../other"),
        "/etc/to-dir": ("symlink", "../usr")}
    climbing = _overlay(tmp_path / "c", {}, links={"etc/escape": "../../../etc/shadow"})
    with pytest.raises(UserError, match="climbs out of the image root"):
        _render(tmp_path, climbing)


def test_a_boot_overlay_plans_on_the_boot_filesystem(tmp_path: Path) -> None:
    overlay = _overlay(tmp_path / "seed", {"meta-data.j2": "instance-id: {{ node }}\n"}, "filesystem: boot\n")
    plan = _render(tmp_path, overlay, {"node": "n1"})
    assert [(op.fs, op.path, op.content) for op in plan.ops] == [("boot", "/meta-data", b"instance-id: n1\n")]
