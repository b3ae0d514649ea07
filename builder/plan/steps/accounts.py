"""The admin login a headless first boot needs: user, SSH key, and no on-screen wizard waiting for a keyboard.

The user is the profile's, else the target's default; how it is made is the target's (`Target.first_boot`):
- cloud-init (Ubuntu, Raspberry Pi OS trixie+): the seed creates it (overlays/cloud-init-seed); nothing here.
- userconf (Raspberry Pi OS bookworm): the first-boot `userconf` service creates it from `userconf.txt` on the boot
  partition; the key goes to /etc/ssh/authorized_keys/USER, which an sshd drop-in adds to AuthorizedKeysFile; an
  empty `ssh` file there enables sshd.
- offline (Kali, Jetson): pi-image edits the image's accounts. Kali's `kali` user gets the key in
  ~/.ssh/authorized_keys, and its well-known password `kali` is replaced by the profile's hash, or locked
  (`passwd -l` style). On Jetson (L4T) no user exists and oem-config would wait on a screen, so the user is added
  to passwd/shadow/group with a home (last password change = the build day, so no forced change at first login),
  and the default target is moved off nv-oem-config.target (as NVIDIA's l4t_create_default_user.sh).
"""

from __future__ import annotations

from ..users import accounts, add_user_lines, groups, shadow_with_password
from .context import BuildContext

STEP = "accounts"
OEM_TARGET = "nv-oem-config.target"
DEFAULT_TARGET = "/etc/systemd/system/default.target"


def plan(ctx: BuildContext) -> None:
    """Make sure the admin user exists (or will), holds the profile's SSH keys, and nothing waits for a screen."""
    if ctx.target.first_boot == "cloud-init":
        return
    user = ctx.profile["user"] or ctx.target.default_user
    keys = "".join(k.strip() + "\n" for k in ctx.profile["ssh_authorized_keys"])
    if ctx.target.first_boot == "userconf":
        _userconf(ctx, user, keys)
        return
    day = max(1, ctx.epoch // 86400)  # never 0: that forces a password change key-only SSH cannot complete
    shadow_gid = groups(ctx.view).get("shadow", 0)
    if user not in accounts(ctx.view):
        added = add_user_lines(ctx.view, user, ctx.profile["password_hash"], day, ctx.target.admin_groups)
        for path, text in added.items():
            if "shadow" in path:
                ctx.write(STEP, "root", path, text, mode=0o640, gid=shadow_gid)
            else:
                ctx.edit(STEP, "root", path, text)
    else:  # an existing user (Kali's kali): our password, or none — never the image's well-known one
        shadow = shadow_with_password(ctx.view, user, ctx.profile["password_hash"], day)
        if shadow is not None:
            ctx.write(STEP, "root", "/etc/shadow", shadow, mode=0o640, gid=shadow_gid)
    account = accounts(ctx.view)[user]
    ctx.mkdir(STEP, account.home, 0o750, account.uid, account.gid)
    if keys:
        ctx.mkdir(STEP, f"{account.home}/.ssh", 0o700, account.uid, account.gid)
        ctx.write(STEP, "root", f"{account.home}/.ssh/authorized_keys", keys, 0o600, account.uid, account.gid)
    default = ctx.view.lstat("root", DEFAULT_TARGET)
    if default is not None and default.is_symlink and ctx.view.readlink("root", DEFAULT_TARGET).endswith(OEM_TARGET):
        ctx.symlink(STEP, DEFAULT_TARGET, "/lib/systemd/system/multi-user.target")


def _userconf(ctx: BuildContext, user: str, keys: str) -> None:
    ctx.write(STEP, "boot", "/userconf.txt", f"{user}:{ctx.profile['password_hash'] or '!'}\n")
    ctx.write(STEP, "boot", "/ssh", "")
    if keys:
        ctx.write(STEP, "root", f"/etc/ssh/authorized_keys/{user}", keys)
        ctx.write(STEP, "root", "/etc/ssh/sshd_config.d/pi-image.conf",
                  "# pi-image: keys for users created at first boot live outside their (future) home\n"
                  "AuthorizedKeysFile .ssh/authorized_keys .ssh/authorized_keys2 /etc/ssh/authorized_keys/%u\n")
