"""The plan and its view, over a plain directory (no image tools): the view answers from the plan's latest op on a
path, else from the image; links resolve through both; a file a step edits is never read through a link; and what
the view says before `apply` is what the filesystem says after it."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from builder.errors import UserError
from builder.image import DirectoryFilesystem, FileStat
from builder.plan import FileOp, Plan, PlanView, apply
from builder.plan.systemd import enable_links, unit_enabled, unit_file, unit_masked, wants_links
from builder.targets.base import OsRelease
from builder.targets.kali_raspi import KaliRaspi

UNITS = "/etc/systemd/system"
UNIT_TEXT = "[Unit]\nDescription=x\n\n[Service]\nExecStart=/bin/true\n\n[Install]\nWantedBy=multi-user.target\n"


def _tree(root: Path, files: dict[str, str | bytes], links: dict[str, str] | None = None) -> Path:
    """A directory holding `files` (path -> content) and `links` (path -> target)."""
    for path, content in files.items():
        host = root / path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(content.encode() if isinstance(content, str) else content)
    for path, target in (links or {}).items():
        host = root / path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.symlink_to(target)
    return root


def _view(root: Path, plan: Plan | None = None, writable: bool = False) -> PlanView:
    """A view of the directory `root` (as the root filesystem, and `root/boot` as the boot one) under `plan`."""
    (root / "boot").mkdir(exist_ok=True)
    fs = DirectoryFilesystem(root, writable)
    target = KaliRaspi(medium=fs, root=fs, os=OsRelease.parse(""), boot=DirectoryFilesystem(root / "boot", writable))
    return PlanView(target, plan or Plan())


def _write(path: str, text: str, mode: int | None = None, uid: int = 0, gid: int = 0) -> FileOp:
    return FileOp("write", "root", path, "test", content=text.encode(), mode=mode, uid=uid, gid=gid)


def _link(path: str, target: str) -> FileOp:
    return FileOp("symlink", "root", path, "test", target=target)


# --- Plan ---------------------------------------------------------------------------------------------------------

def test_add_normalizes_paths_and_latest_is_the_last_op_on_a_path() -> None:
    plan = Plan()
    plan.add(_write("etc//hostname", "a\n"))
    plan.add(_write("/etc/./hostname", "b\n"))
    plan.add(_write("/etc/hosts", "c\n"))
    assert [op.path for op in plan.ops] == ["/etc/hostname", "/etc/hostname", "/etc/hosts"]
    latest = plan.latest("root", "/etc/hostname/")
    assert latest is not None and latest.content == b"b\n"
    assert plan.latest("boot", "/etc/hostname") is None and plan.latest("root", "/etc/shadow") is None
    plan.add(FileOp("remove", "root", "/etc/hostname", "later"))
    latest = plan.latest("root", "/etc/hostname")
    assert latest is not None and latest.action == "remove"  # the index follows ops added after a lookup


def test_a_plan_refuses_dot_dot_and_unknown_filesystems() -> None:
    plan = Plan()
    with pytest.raises(UserError, match=r"'\.\.'"):
        plan.add(_write("/etc/../shadow", "x"))
    with pytest.raises(ValueError, match="unknown filesystem"):
        plan.add(FileOp("write", "efi", "/x", "test", content=b""))
    assert plan.ops == []


def test_a_plan_made_from_ops_is_looked_up_like_one_built_by_add() -> None:
    ops = [_write("/etc/a", "1"), _write("/etc/a", "2")]
    plan = Plan(list(ops))
    latest = plan.latest("root", "/etc/a")
    assert latest is ops[1] and plan.creates_below("root", "/etc") and not plan.creates_below("root", "/var")


def test_describe_keeps_private_content_and_secrets_out_of_the_hashes() -> None:
    public, private = _write("/etc/a", "hello", mode=0o644), _write("/etc/b", "hello", mode=0o600)
    secret = _write("/etc/c", "psk=hunter2", mode=0o644)
    described = Plan([public, private, secret]).describe(secrets=("hunter2",))
    assert "sha256" in described[0] and "sha256" not in described[1] and "sha256" not in described[2]
    assert described[1] == {"step": "test", "action": "write", "fs": "root", "path": "/etc/b", "size": 5,
                            "mode": "0600", "owner": "0:0"}
    assert public.line().startswith("[test") and "write 5 B" in public.line() and "0644 0:0" in public.line()


# --- PlanView: reads --------------------------------------------------------------------------------------------

def test_the_view_reads_the_plans_latest_content_else_the_images(tmp_path: Path) -> None:
    plan = Plan()
    view = _view(_tree(tmp_path, {"/etc/hosts": "image\n", "/etc/fstab": "fstab\n"}), plan)
    plan.add(_write("/etc/hosts", "planned\n"))
    plan.add(FileOp("remove", "root", "/etc/fstab", "test"))
    assert view.read_text("root", "/etc/hosts") == "planned\n"
    assert view.read_text("root", "/etc/fstab") is None and view.read_bytes("root", "/etc/missing") is None
    plan.add(_write("/etc/fstab", "again\n"))
    assert view.read_bytes("root", "/etc/fstab") == b"again\n"


def test_a_final_link_in_the_image_is_refused_unless_followed(tmp_path: Path) -> None:
    view = _view(_tree(tmp_path, {"/etc/shadow": "secret\n"}, {"/etc/hosts": "/etc/shadow"}))
    with pytest.raises(UserError, match="/etc/hosts is a symlink"):
        view.read_text("root", "/etc/hosts")
    assert view.read_text("root", "/etc/hosts", follow=True) == "secret\n"


def test_a_final_link_the_plan_makes_is_refused_unless_followed_and_followed_into_the_plan(tmp_path: Path) -> None:
    plan = Plan()
    view = _view(_tree(tmp_path, {"/etc/hosts": "image\n"}), plan)
    plan.add(_link("/etc/hosts", "hosts.d/mine"))
    plan.add(_write("/etc/hosts.d/mine", "planned\n"))
    with pytest.raises(UserError, match=r"/etc/hosts is a symlink \(to 'hosts.d/mine'\) after the build's test step"):
        view.read_text("root", "/etc/hosts")
    assert view.read_text("root", "/etc/hosts", follow=True) == "planned\n"


def test_a_link_that_climbs_out_of_the_root_is_refused_in_one_line(tmp_path: Path) -> None:
    plan = Plan()
    view = _view(_tree(tmp_path, {}, {"/etc/escape": "../../../../outside"}), plan)
    plan.add(_link("/etc/planned", "../../x"))
    for path in ("/etc/escape", "/etc/planned"):
        with pytest.raises(UserError, match="points outside the filesystem root") as err:
            view.read_text("root", path, follow=True)
        assert "\n" not in str(err.value)


def test_a_nul_byte_and_a_directory_are_refused(tmp_path: Path) -> None:
    plan = Plan()
    view = _view(_tree(tmp_path, {"/etc/hosts": b"a\0b"}), plan)
    with pytest.raises(UserError, match="NUL byte"):
        view.read_text("root", "/etc/hosts")
    plan.add(FileOp("mkdir", "root", "/etc/hosts.d", "test", mode=0o755))
    plan.add(_write("/etc/made/file", "x"))
    with pytest.raises(UserError, match="/etc/hosts.d is not a regular file after the build's test step"):
        view.read_text("root", "/etc/hosts.d")
    with pytest.raises(UserError, match="/etc/made is a directory the build makes"):
        view.read_text("root", "/etc/made")
    (tmp_path / "etc/dir").mkdir()
    with pytest.raises(UserError, match="/etc/dir is not a regular file"):  # the image's own: the filesystem says
        view.read_text("root", "/etc/dir")


def test_file_meta_is_the_planned_mode_and_owner_else_the_images(tmp_path: Path) -> None:
    plan = Plan()
    root = _tree(tmp_path, {"/etc/fstab": "x\n"}, {"/etc/link": "fstab"})
    (root / "etc/fstab").chmod(0o640)
    view = _view(root, plan)
    there = view.file_meta("root", "/etc/fstab")
    assert there is not None and there[0] == 0o640
    assert view.file_meta("root", "/etc/link") is None and view.file_meta("root", "/etc/missing") is None
    plan.add(_write("/etc/fstab", "y\n", mode=0o600, uid=0, gid=42))
    plan.add(_write("/etc/new", "z\n"))
    assert view.file_meta("root", "/etc/fstab") == (0o600, 0, 42)
    assert view.file_meta("root", "/etc/new") == (0o644, 0, 0)


# --- PlanView: stat, links, directories --------------------------------------------------------------------------

def test_lstat_stat_and_readlink_answer_from_the_plan(tmp_path: Path) -> None:
    plan = Plan()
    view = _view(_tree(tmp_path, {"/usr/lib/unit.service": UNIT_TEXT}), plan)
    plan.add(_link("/etc/unit.service", "/usr/lib/unit.service"))
    link, followed = view.lstat("root", "/etc/unit.service"), view.stat("root", "/etc/unit.service")
    assert link is not None and link.is_symlink and followed is not None and followed.is_file
    assert view.readlink("root", "/etc/unit.service") == "/usr/lib/unit.service"
    assert view.exists("root", "/etc/unit.service")
    plan.add(_link("/etc/dangling", "/nowhere"))
    assert view.exists("root", "/etc/dangling") and view.stat("root", "/etc/dangling") is None
    with pytest.raises(UserError, match="not a symlink"):
        view.readlink("root", "/usr/lib/unit.service")
    plan.add(FileOp("remove", "root", "/usr/lib/unit.service", "test"))
    assert view.lstat("root", "/usr/lib/unit.service") is None and view.stat("root", "/etc/unit.service") is None


def test_a_link_the_plan_makes_in_the_middle_of_a_path_is_followed(tmp_path: Path) -> None:
    plan = Plan()
    view = _view(_tree(tmp_path, {"/opt/real/conf": "image\n"}), plan)
    plan.add(_link("/etc/alt", "../opt/real"))
    assert view.read_text("root", "/etc/alt/conf") == "image\n"
    plan.add(_write("/opt/real/conf", "planned\n"))
    assert view.read_text("root", "/etc/alt/conf") == "planned\n"
    assert view.listdir("root", "/etc/alt") == ["conf"]


def test_listdir_adds_planned_names_and_directories_and_drops_removed_ones(tmp_path: Path) -> None:
    plan = Plan()
    view = _view(_tree(tmp_path, {f"{UNITS}/a.service": "", f"{UNITS}/b.service": ""}), plan)
    plan.add(FileOp("remove", "root", f"{UNITS}/a.service", "test"))
    plan.add(_link(f"{UNITS}/multi-user.target.wants/c.service", f"{UNITS}/c.service"))
    plan.add(FileOp("remove", "root", f"{UNITS}/gone.target.wants/x.service", "test"))  # creates nothing
    assert view.listdir("root", UNITS) == ["b.service", "multi-user.target.wants"]
    made = view.stat("root", f"{UNITS}/multi-user.target.wants")
    assert made is not None and made.is_dir and view.lstat("root", f"{UNITS}/gone.target.wants") is None
    assert view.listdir("root", f"{UNITS}/b.service") == [] and view.listdir("root", "/missing") == []


def test_a_mkdir_over_a_link_keeps_the_link(tmp_path: Path) -> None:
    plan = Plan()
    view = _view(_tree(tmp_path, {"/data/x": ""}, {"/srv": "data"}), plan)
    plan.add(FileOp("mkdir", "root", "/srv", "test", mode=0o700))
    plan.add(FileOp("mkdir", "root", "/new", "test", mode=0o700))
    srv, new = view.lstat("root", "/srv"), view.lstat("root", "/new")
    assert srv is not None and srv.is_symlink and view.listdir("root", "/srv") == ["x"]
    assert new is not None and new.is_dir and new.permissions == 0o700


def test_what_the_view_says_before_apply_is_what_the_filesystem_says_after(tmp_path: Path) -> None:
    root = _tree(tmp_path, {f"{UNITS}/old.service": UNIT_TEXT, "/etc/hosts": "h\n", "/opt/data/f": "f\n"},
                 {"/etc/link": "hosts", f"{UNITS}/multi-user.target.wants/old.service": f"{UNITS}/old.service"})
    plan = Plan()
    for op in [_write("/etc/hosts", "new\n", mode=0o600), _write("/etc/new/deep/file", "d\n"),
               _link("/etc/link", "new/deep/file"), FileOp("remove", "root", f"{UNITS}/old.service", "test"),
               _link(f"{UNITS}/old.service", "/dev/null"), FileOp("mkdir", "root", "/etc/made", "test", mode=0o750),
               _link("/etc/opt", "../opt/data"), _write("/opt/data/g", "g\n"),
               FileOp("remove", "root", f"{UNITS}/multi-user.target.wants/old.service", "test")]:
        plan.add(op)
    view = _view(root, plan)
    paths = ["/", "/etc", "/etc/hosts", "/etc/new", "/etc/new/deep", "/etc/new/deep/file", "/etc/link", UNITS,
             f"{UNITS}/old.service", f"{UNITS}/multi-user.target.wants", "/etc/made", "/etc/opt", "/etc/opt/g",
             "/opt/data", "/missing"]
    predicted = {path: _observe(view.tree("root"), path) for path in paths}
    fs = DirectoryFilesystem(root, writable=True)
    apply(plan, _view(root, writable=True).target)
    assert {path: _observe(fs, path) for path in paths} == predicted


def _observe(tree: Any, path: str) -> tuple[Any, ...]:
    """What `tree` (a Filesystem or a TreeView) says about `path`: its kind and permissions, followed or not, its
    link, its names."""
    def kind(st: FileStat | None) -> tuple[int, int | None] | None:
        return None if st is None else (stat.S_IFMT(st.mode), st.permissions if not st.is_symlink else None)

    lstat = tree.lstat(path)
    return (kind(lstat), kind(tree.stat(path)), tree.readlink(path) if lstat and lstat.is_symlink else None,
            tree.listdir(path))


# --- systemd unit state, through the view -----------------------------------------------------------------------

def test_unit_state_reads_the_same_from_the_image_and_from_the_view(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"/usr/lib/systemd/system/a.service": UNIT_TEXT},
                 {f"{UNITS}/multi-user.target.wants/a.service": "/usr/lib/systemd/system/a.service"})
    plan = Plan()
    view = _view(root, plan)
    image, planned = view.filesystem("root"), view.tree("root")
    for tree in (image, planned):
        assert unit_file(tree, "a.service") == "/usr/lib/systemd/system/a.service"
        assert unit_enabled(tree, "a.service") and not unit_masked(tree, "a.service")
    plan.add(_link(f"{UNITS}/a.service", "/dev/null"))
    assert unit_masked(planned, "a.service") and not unit_enabled(planned, "a.service")
    assert unit_enabled(image, "a.service")  # the image itself is never changed by a plan


def test_a_unit_the_plan_adds_is_found_and_its_links_come_from_its_install_section(tmp_path: Path) -> None:
    plan = Plan()
    view = _view(_tree(tmp_path, {}), plan)
    assert unit_file(view.tree("root"), "b.service") is None
    with pytest.raises(UserError, match="b.service is not installed"):
        enable_links(view, "b.service")
    plan.add(_write(f"{UNITS}/b.service", UNIT_TEXT + "Alias=bee.service\n"))
    assert enable_links(view, "b.service") == [(f"{UNITS}/multi-user.target.wants/b.service", f"{UNITS}/b.service"),
                                               (f"{UNITS}/bee.service", f"{UNITS}/b.service")]
    plan.add(_link(f"{UNITS}/multi-user.target.wants/b.service", f"{UNITS}/b.service"))
    assert wants_links(view.tree("root"), "b.service") == [f"{UNITS}/multi-user.target.wants/b.service"]
    assert unit_enabled(view.tree("root"), "b.service")


def test_a_linked_unit_is_read_through_its_link(tmp_path: Path) -> None:
    """`systemctl link` leaves /etc/systemd/system/UNIT -> elsewhere: the unit's text is read there."""
    view = _view(_tree(tmp_path, {"/opt/units/c.service": UNIT_TEXT}, {f"{UNITS}/c.service": "/opt/units/c.service"}))
    assert enable_links(view, "c.service") == [(f"{UNITS}/multi-user.target.wants/c.service", f"{UNITS}/c.service")]
