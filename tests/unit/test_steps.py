"""Build steps planned against the samples' file trees staged in a directory (no image tools, no disk image): what
each step plans from what the image holds as the plan has changed it so far, an overlay's files included.

The context is the one `prepare` makes for the L4T sample (the profile, the node, node.json), bound to the target
under test: a step reads the target's files and the profile, nothing else of the base.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from builder.build import BuildRequest, prepare
from builder.errors import UserError
from builder.image import DirectoryFilesystem
from builder.plan import FileOp, Plan
from builder.plan.steps import BuildContext, make_plan, regional, registry, services, swap, wifi
from builder.plan.steps import accounts as accounts_step
from builder.plan.steps import kube_key as kube_key_step
from builder.plan.users import add_user_lines, read_public_keys, shadow_with_password
from builder.samples import make_sample
from builder.samples.catalog import CATALOG
from builder.samples.tree import stage_tree
from builder.targets import Target
from builder.targets.base import OsRelease
from builder.targets.jetson import L4tRootfs
from builder.targets.kali_raspi import KaliRaspi
from builder.targets.raspios import WIFI_RFKILL, RaspiOS
from builder.targets.ubuntu_raspi import UbuntuRaspi

DATA = Path(__file__).resolve().parents[1] / "data"
KUBE_KEY = DATA / "test-Release.key"
SSH_KEYS = read_public_keys([DATA / "test-admin.pub"])
UNITS = "/etc/systemd/system"
RESOLVED = "systemd-resolved.service"
RESOLVED_UNIT = ("[Unit]\nDescription=Network Name Resolution\n\n[Service]\n"
                 "ExecStart=/usr/lib/systemd/systemd-resolved\n\n"
                 "[Install]\nWantedBy=multi-user.target\nAlias=dbus-org.freedesktop.resolve1.service\n")
EPOCH = 1_700_000_000

Bind = Callable[..., Target]
Context = Callable[..., BuildContext]


def _stage(target: str, release: str, dest: Path) -> tuple[Path, Path | None]:
    """The sample's root (and boot) trees staged under `dest`, as plain directories."""
    sample = CATALOG[(target, release)]
    if sample.layout is None:
        assert sample.tree is not None
        stage_tree(sample.tree, sample.variables, dest / "root")
        return dest / "root", None
    for partition in sample.layout.partitions:
        if partition.fs is not None:
            stage_tree(partition.fs.tree, sample.variables, dest / partition.fs.tree.part)
    return dest / "root", (dest / "boot" if (dest / "boot").is_dir() else None)


@pytest.fixture
def bind(tmp_path: Path) -> Bind:
    """bind(cls, release, without=(paths...)) -> a `cls` target over the sample's staged trees (less `without`)."""

    def make(cls: type[Target], release: str, without: tuple[str, ...] = ()) -> Target:
        root, boot = _stage(cls.name, release, tmp_path / f"{cls.name}-{release}")
        for path in without:
            (root / path.lstrip("/")).unlink()
        fs = DirectoryFilesystem(root, writable=False)
        return cls(medium=fs, root=fs, os=OsRelease.parse(fs.read_text("/etc/os-release") or ""),
                   boot=DirectoryFilesystem(boot, writable=False) if boot else None)

    return make


@pytest.fixture
def context(tmp_path: Path) -> Context:
    """context(target, sets={...}, overlays=[...]) -> what `prepare` makes of the `common` profile, bound to
    `target` with an empty plan."""

    def make(target: Target, sets: dict[str, Any] | None = None, overlays: tuple[Path, ...] = (),
             profile: str = "common") -> BuildContext:
        base = tmp_path / "l4t"
        if not base.exists():
            make_sample("l4t-rootfs", base)
        ctx = prepare(BuildRequest(profile=profile, base=str(base), sets=dict(sets or {}), kube_key=KUBE_KEY,
                                   ssh_keys=SSH_KEYS, dry_run=True, epoch=EPOCH))
        return dataclasses.replace(ctx, target=target, plan=Plan(), overlays=[str(path) for path in overlays])

    return make


def _ops(ctx: BuildContext, step: str) -> list[tuple[str, ...]]:
    """(action, path[, target]) of `step`'s ops."""
    return [(op.action, op.path, *([op.target] if op.target else [])) for op in ctx.plan.ops if op.step == step]


def _op(ctx: BuildContext, path: str) -> FileOp:
    found = ctx.plan.latest("root", path)
    assert found is not None, f"nothing planned at {path}"
    return found


def _overlay(directory: Path, files: dict[str, str], manifest: str = "") -> Path:
    for rel, content in files.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_text(content)
    if manifest:
        (directory / "overlay.yaml").write_text(manifest)
    return directory


# --- services: a unit an overlay adds is enabled (issue 27) ------------------------------------------------------

def test_a_unit_only_an_overlay_adds_is_enabled(bind: Bind, context: Context, tmp_path: Path) -> None:
    """Kali needs systemd-resolved, which a Kali image may lack: an overlay that ships it gets it enabled."""
    target = bind(KaliRaspi, "2024.2", without=(f"/usr/lib/systemd/system/{RESOLVED}",))
    ctx = context(target)
    make_plan(ctx)
    assert _ops(ctx, "services") == []  # not in the image, not in the plan: nothing to enable
    overlay = _overlay(tmp_path / "resolved", {f"etc/systemd/system/{RESOLVED}": RESOLVED_UNIT})
    ctx = context(target, overlays=(overlay,))
    make_plan(ctx)
    assert _ops(ctx, "services") == [
        ("symlink", f"{UNITS}/multi-user.target.wants/{RESOLVED}", f"{UNITS}/{RESOLVED}"),
        ("symlink", f"{UNITS}/dbus-org.freedesktop.resolve1.service", f"{UNITS}/{RESOLVED}")]


def test_the_unit_an_overlay_puts_in_etc_wins_over_the_images(bind: Bind, context: Context, tmp_path: Path) -> None:
    """As systemd reads /etc/systemd/system first, so does the services step: the overlay's [Install] decides."""
    ctx = context(bind(KaliRaspi, "2024.2"))
    services.plan(ctx)
    assert _ops(ctx, "services")[0] == ("symlink", f"{UNITS}/multi-user.target.wants/{RESOLVED}",
                                        f"/usr/lib/systemd/system/{RESOLVED}")
    overlay = _overlay(tmp_path / "early", {f"etc/systemd/system/{RESOLVED}":
                                            RESOLVED_UNIT.replace("multi-user.target", "sysinit.target")})
    ctx = context(bind(KaliRaspi, "2024.2"), overlays=(overlay,))
    make_plan(ctx)
    assert _ops(ctx, "services")[0] == ("symlink", f"{UNITS}/sysinit.target.wants/{RESOLVED}", f"{UNITS}/{RESOLVED}")


# --- swap ---------------------------------------------------------------------------------------------------------

def test_a_swap_unit_in_etc_is_masked_with_a_copy_kept_and_its_wants_link_removed(bind: Bind,
                                                                                   context: Context) -> None:
    ctx = context(bind(L4tRootfs, "r32.6.1"))
    swap.plan(ctx)
    unit = "nvzramconfig.service"
    assert _ops(ctx, "swap")[:3] == [("remove", f"{UNITS}/multi-user.target.wants/{unit}"),
                                     ("write", f"{swap.MASKED_COPIES}/{unit}"),
                                     ("symlink", f"{UNITS}/{unit}", "/dev/null")]
    copy = _op(ctx, f"{swap.MASKED_COPIES}/{unit}")
    assert copy.content == ctx.target.root.read(f"{UNITS}/{unit}") and copy.mode == 0o644


def test_a_vendor_swap_unit_is_masked_without_a_copy_and_fstab_swap_is_commented(bind: Bind, context: Context,
                                                                                 tmp_path: Path) -> None:
    target = bind(RaspiOS, "bookworm")
    ctx = context(target)
    ctx.plan.add(FileOp("write", "root", "/etc/fstab", "an earlier step",
                        content=b"proc /proc proc defaults 0 0\n/swapfile none swap sw 0 0\n"))
    swap.plan(ctx)
    assert ("symlink", f"{UNITS}/dphys-swapfile.service", "/dev/null") in _ops(ctx, "swap")
    assert not any(path.startswith(swap.MASKED_COPIES) for _, path, *_ in _ops(ctx, "swap"))
    fstab = (_op(ctx, "/etc/fstab").content or b"").decode()
    assert "proc /proc proc defaults 0 0\n" in fstab and "\n/swapfile" not in fstab and "#" in fstab


def test_a_swap_units_wants_link_an_overlay_adds_is_removed_too(bind: Bind, context: Context, tmp_path: Path) -> None:
    target = bind(RaspiOS, "bookworm", without=("/usr/lib/systemd/system/dphys-swapfile.service",
                                                f"{UNITS}/multi-user.target.wants/dphys-swapfile.service"))
    ctx = context(target)
    swap.plan(ctx)
    assert [op for op in _ops(ctx, "swap") if "dphys" in op[1]] == []  # the image has none of it
    ctx = context(target)
    ctx.symlink("overlay:mine", f"{UNITS}/timers.target.wants/dphys-swapfile.service", "/opt/dphys.service")
    swap.plan(ctx)
    assert _ops(ctx, "swap")[:2] == [("remove", f"{UNITS}/timers.target.wants/dphys-swapfile.service"),
                                     ("symlink", f"{UNITS}/dphys-swapfile.service", "/dev/null")]


# --- wifi ---------------------------------------------------------------------------------------------------------

def test_wifi_unblocks_every_radio_state_the_image_and_the_plan_hold(bind: Bind, context: Context) -> None:
    target = bind(RaspiOS, "bookworm")
    ctx = context(target)
    wifi.plan(ctx)
    assert ctx.plan.ops == []  # no Wi-Fi in the profile: the radio stays as the OS leaves it
    ctx = context(target, sets={"wifi": {"ssid": "home", "country": "GB"}})
    ctx.write("an earlier step", "root", f"{wifi.RFKILL_DIR}/platform-extra:wlan", "1\n")
    wifi.plan(ctx)
    written = [path for action, path, *_ in _ops(ctx, "wifi") if path.startswith(wifi.RFKILL_DIR)]
    assert written == [*WIFI_RFKILL, f"{wifi.RFKILL_DIR}/platform-extra:wlan"]  # never a :bluetooth state
    assert all(_op(ctx, path).content == b"0\n" for path in written)
    assert b"WirelessEnabled=true" in (_op(ctx, wifi.NM_STATE).content or b"")


def test_wifi_touches_nothing_where_the_os_never_blocks_the_radio(bind: Bind, context: Context) -> None:
    ctx = context(bind(KaliRaspi, "2024.2"), sets={"wifi": {"ssid": "home", "country": "GB"}})
    wifi.plan(ctx)
    assert ctx.plan.ops == [] and wifi.kernel_args(ctx.profile) == ["cfg80211.ieee80211_regdom=GB"]


# --- accounts -----------------------------------------------------------------------------------------------------

def test_jetson_gets_a_new_admin_user_with_a_home_its_key_and_no_oem_wizard(bind: Bind, context: Context) -> None:
    ctx = context(bind(L4tRootfs, "r32.6.1"))
    accounts_step.plan(ctx)
    passwd = (_op(ctx, "/etc/passwd").content or b"").decode()
    assert passwd.endswith("jetson:x:1000:1000:jetson:/home/jetson:/bin/bash\n")
    shadow = _op(ctx, "/etc/shadow")
    assert shadow.mode == 0o640 and shadow.gid == 42  # the image's shadow group
    assert f"jetson:!:{EPOCH // 86400}:" in (shadow.content or b"").decode()
    home, dot_ssh, keys = _op(ctx, "/home/jetson"), _op(ctx, "/home/jetson/.ssh"), \
        _op(ctx, "/home/jetson/.ssh/authorized_keys")
    assert (home.mode, home.uid, dot_ssh.mode, keys.mode, keys.uid) == (0o750, 1000, 0o700, 0o600, 1000)
    assert (keys.content or b"").decode() == "".join(key + "\n" for key in SSH_KEYS)
    assert _op(ctx, f"{UNITS}/default.target").target == "/lib/systemd/system/multi-user.target"


def test_kalis_well_known_password_is_replaced_or_locked(bind: Bind, context: Context) -> None:
    ctx = context(bind(KaliRaspi, "2024.2"))
    accounts_step.plan(ctx)
    kali = next(line for line in (_op(ctx, "/etc/shadow").content or b"").decode().splitlines()
                if line.startswith("kali:"))
    assert kali.startswith("kali:!$6$pi.image.sample$") and kali.split(":")[2] == str(EPOCH // 86400)
    assert ctx.plan.latest("root", "/etc/passwd") is None  # the user exists: passwd is left alone
    ctx = context(bind(KaliRaspi, "2024.2"), sets={"password_hash": "$6$salt$hash"})
    accounts_step.plan(ctx)
    assert "kali:$6$salt$hash:" in (_op(ctx, "/etc/shadow").content or b"").decode()


def test_raspios_bookworm_gets_userconf_and_keys_outside_the_future_home(bind: Bind, context: Context) -> None:
    ctx = context(bind(RaspiOS, "bookworm"))
    accounts_step.plan(ctx)
    assert (ctx.plan.latest("boot", "/userconf.txt") or FileOp("", "", "", "")).content == b"pi:!\n"
    assert ctx.plan.latest("boot", "/ssh") is not None
    assert (_op(ctx, "/etc/ssh/authorized_keys/pi").content or b"").decode() == "".join(k + "\n" for k in SSH_KEYS)
    assert b"/etc/ssh/authorized_keys/%u" in (_op(ctx, "/etc/ssh/sshd_config.d/pi-image.conf").content or b"")


def test_a_cloud_init_target_leaves_accounts_to_the_seed(bind: Bind, context: Context) -> None:
    ctx = context(bind(UbuntuRaspi, "24.04"))
    accounts_step.plan(ctx)
    assert ctx.plan.ops == []


def test_a_new_users_id_is_free_as_a_uid_and_as_a_gid(bind: Bind, context: Context) -> None:
    ctx = context(bind(L4tRootfs, "r32.6.1"))
    ctx.edit("an earlier step", "root", "/etc/group", (ctx.view.read_text("root", "/etc/group") or "")
             + "docker:x:1000:\n")
    ctx.edit("an earlier step", "root", "/etc/passwd", (ctx.view.read_text("root", "/etc/passwd") or "")
             + "svc:x:1001:1001::/nonexistent:/usr/sbin/nologin\n")
    files = add_user_lines(ctx.view, "admin", None, 19000, ctx.target.admin_groups)
    assert files["/etc/passwd"].endswith("admin:x:1002:1002:admin:/home/admin:/bin/bash\n")
    assert files["/etc/group"].endswith("admin:x:1002:\n") and "sudo:x:27:admin" in files["/etc/group"]
    assert files["/etc/gshadow"].endswith("admin:!::\n")


def test_a_locked_password_stays_locked_once(bind: Bind, context: Context) -> None:
    ctx = context(bind(KaliRaspi, "2024.2"))
    ctx.edit("an earlier step", "root", "/etc/shadow", "kali:!!$6$x:1:0:99999:7:::\n")
    assert shadow_with_password(ctx.view, "kali", None, 5) == "kali:!$6$x:5:0:99999:7:::\n"
    assert shadow_with_password(ctx.view, "nobody-here", None, 5) is None


# --- regional, registry mirrors, the apt key ----------------------------------------------------------------------

def test_a_locale_glibc_lacks_is_listed_and_its_unit_enabled_where_no_cloud_init_builds_it(
        bind: Bind, context: Context) -> None:
    ctx = context(bind(KaliRaspi, "2024.2"), sets={"locale": "en_GB.UTF-8"})
    make_plan(ctx)
    assert "\nen_GB.UTF-8 UTF-8\n" in (_op(ctx, "/etc/locale.gen").content or b"").decode()
    assert ("symlink", f"{UNITS}/multi-user.target.wants/{regional.LOCALE_GEN_UNIT}",
            f"{UNITS}/{regional.LOCALE_GEN_UNIT}") in _ops(ctx, "regional")
    ctx = context(bind(UbuntuRaspi, "24.04"), sets={"locale": "en_GB.UTF-8"})
    make_plan(ctx)
    assert not any(regional.LOCALE_GEN_UNIT in path for _, path, *_ in _ops(ctx, "regional"))


def test_with_locale_uncomments_keeps_or_adds_the_line() -> None:
    assert regional.with_locale("# en_GB.UTF-8 UTF-8\n# fr_FR.UTF-8 UTF-8\n", "en_GB.UTF-8") == \
        "en_GB.UTF-8 UTF-8\n# fr_FR.UTF-8 UTF-8\n"
    assert regional.with_locale("en_GB.UTF-8 UTF-8\n", "en_GB.UTF-8") == "en_GB.UTF-8 UTF-8\n"
    assert regional.with_locale(None, "de_DE.UTF-8") == "de_DE.UTF-8 UTF-8\n"
    assert 'XKBLAYOUT="gb"' in regional.keyboard_file("gb")


def test_registry_mirrors_write_hosts_toml_with_the_registry_as_fallback(bind: Bind, context: Context) -> None:
    target = bind(UbuntuRaspi, "24.04")
    ctx = context(target, sets={"registry_mirrors": {"docker.io": "http://mirror.lan:5000/"}})
    registry.plan(ctx)
    hosts = (_op(ctx, f"{registry.CERTS_DIR}/docker.io/hosts.toml").content or b"").decode()
    assert 'server = "https://registry-1.docker.io"' in hosts and '[host."http://mirror.lan:5000"]' in hosts
    ctx = context(target, sets={"registry_mirrors": {"ghcr.io": "http://mirror.lan"}})
    ctx.profile = dataclasses.replace(ctx.profile, values={**ctx.profile.values, "runtime": "docker"})
    with pytest.raises(UserError, match="registry_mirrors configure containerd"):
        registry.plan(ctx)


def test_the_apt_key_is_written_only_when_there_is_one(bind: Bind, context: Context) -> None:
    ctx = context(bind(UbuntuRaspi, "24.04"))
    kube_key_step.plan(ctx)
    assert _ops(ctx, "kube-key") == [("write", kube_key_step.KEYRING)]
    ctx = dataclasses.replace(ctx, kube_keyring=None, plan=Plan())
    kube_key_step.plan(ctx)
    assert ctx.plan.ops == []
