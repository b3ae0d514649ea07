"""Regional settings where every OS reads them: time zone, locale, keyboard layout.

- /etc/timezone and the /etc/localtime link (tzdata's and systemd's),
- /etc/default/locale: LANG (read through pam_env at every login on Debian and Ubuntu),
- /etc/default/keyboard: the XKB layout (console-setup applies it to the console at boot; X and Wayland read it).

On cloud-init targets the seed says the same (overlays/cloud-init-seed: `timezone`, `locale`, and `keyboard` where the
image's own cloud-init config sets another), so first boot does not undo them, and cloud-init builds the locale.
Elsewhere a locale glibc does not carry built in is listed where `locale-gen` reads it and built at first boot by
the overlays/locale-gen unit: the image is made offline, where nothing can run locale-gen.
"""

from __future__ import annotations

import re

from ...config import values
from ..systemd import UNIT_DIR, install_links
from .context import BuildContext

STEP = "regional"
LOCALE_GEN_OVERLAY = "locale-gen"
LOCALE_GEN_UNIT = "pi-image-locale-gen.service"


def builds_locale_at_first_boot(ctx: BuildContext) -> bool:
    """True if the profile's locale must be generated on the node and no cloud-init does it."""
    return ctx.profile["locale"] not in values.BUILT_IN_LOCALES and ctx.target.first_boot != "cloud-init"


def plan(ctx: BuildContext) -> None:
    """Time zone, locale and keyboard files; where needed, the locale listed for locale-gen and its unit enabled."""
    zone, locale = ctx.profile["timezone"], ctx.profile["locale"]
    ctx.write(STEP, "root", "/etc/timezone", zone + "\n")
    ctx.symlink(STEP, "/etc/localtime", f"/usr/share/zoneinfo/{zone}")
    ctx.write(STEP, "root", "/etc/default/locale", f"LANG={locale}\n")
    ctx.write(STEP, "root", "/etc/default/keyboard", keyboard_file(ctx.profile["keyboard"]))
    if not builds_locale_at_first_boot(ctx):
        return
    listed = ctx.target.locale_list
    ctx.edit(STEP, "root", listed, with_locale(ctx.view.read_text("root", listed), locale))
    unit = f"{UNIT_DIR}/{LOCALE_GEN_UNIT}"  # rendered by the layers step
    for link, target in install_links(ctx.view.read_text("root", unit) or "", LOCALE_GEN_UNIT, unit):
        ctx.symlink(STEP, link, target)


def keyboard_file(layout: str) -> str:
    """keyboard(5) for `layout` on a standard 105-key board, as Raspberry Pi Imager writes it."""
    return (f"# KEYBOARD CONFIGURATION FILE, written by pi-image (see keyboard(5))\n\nXKBMODEL=\"pc105\"\n"
            f"XKBLAYOUT=\"{layout}\"\nXKBVARIANT=\"\"\nXKBOPTIONS=\"\"\n\nBACKSPACE=\"guess\"\n")


def with_locale(text: str | None, locale: str) -> str:
    """A locale.gen(5) list with `locale` enabled: its commented line uncommented, else the line added."""
    line = f"{locale} {values.locale_charmap(locale)}"
    lines = (text or "").splitlines()
    if line in (entry.strip() for entry in lines):
        return "\n".join(lines) + "\n"
    commented = re.compile(r"#\s*" + re.escape(line) + r"\s*")
    for index, entry in enumerate(lines):
        if commented.fullmatch(entry):
            lines[index] = line
            return "\n".join(lines) + "\n"
    return "\n".join(lines + [line]) + "\n"
