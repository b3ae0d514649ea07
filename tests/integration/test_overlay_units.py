"""A unit that only an --overlay puts in the image is enabled by the build (issue 27: steps read the image through
the plan's view, so what an overlay adds counts).

Kali's kubelet needs systemd-resolved, and a Kali image may lack it (a package of its own since Debian 12): the
Kali sample with its unit file removed builds with nothing to enable; the same base with an overlay that ships the
unit gets its `systemctl enable` links planned.
"""

from __future__ import annotations

from pathlib import Path

from readback import KUBE_KEY, TEST_SSH_KEY

from builder.build import BuildRequest, prepare
from builder.image import open_medium
from builder.plan.users import read_public_keys
from builder.targets import detect

RESOLVED = "systemd-resolved.service"
UNITS = "/etc/systemd/system"
UNIT_TEXT = ("[Unit]\nDescription=Network Name Resolution\n\n[Service]\nType=notify\n"
             "ExecStart=/usr/lib/systemd/systemd-resolved\n\n"
             "[Install]\nWantedBy=multi-user.target\nAlias=dbus-org.freedesktop.resolve1.service\n")


def _services_ops(base: Path, overlays: list[str]) -> list[tuple[str, str, str | None]]:
    ctx = prepare(BuildRequest(profile="kali-worker", base=str(base), overlays=overlays, kube_key=KUBE_KEY,
                               ssh_keys=read_public_keys([TEST_SSH_KEY]), dry_run=True))
    return [(op.action, op.path, op.target) for op in ctx.plan.ops if op.step == "services"]


def test_a_unit_an_overlay_adds_is_enabled(sample_copy, tmp_path: Path) -> None:
    base = sample_copy("kali-raspi")
    medium = open_medium(base, writable=True)
    detect(medium).root.remove(f"/usr/lib/systemd/system/{RESOLVED}")
    medium.commit()
    assert _services_ops(base, []) == []  # the image lacks it: nothing to enable, and the build goes on

    overlay = tmp_path / "resolved"
    (overlay / "etc/systemd/system").mkdir(parents=True)
    (overlay / f"etc/systemd/system/{RESOLVED}").write_text(UNIT_TEXT)
    assert _services_ops(base, [str(overlay)]) == [
        ("symlink", f"{UNITS}/multi-user.target.wants/{RESOLVED}", f"{UNITS}/{RESOLVED}"),
        ("symlink", f"{UNITS}/dbus-org.freedesktop.resolve1.service", f"{UNITS}/{RESOLVED}"),
    ]
