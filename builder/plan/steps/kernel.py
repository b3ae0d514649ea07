"""Kernel command line: the cgroup flags Kubernetes needs, and the Wi-Fi regulatory domain (idempotently).

The base's command-line file is checked before the edit (a vendor's file that is too long or holds control bytes is
refused: restore it) and after (the arguments we add must fit in what the boot chain passes on); see
builder.targets.cmdline.
"""

from __future__ import annotations

import posixpath

from ...errors import UserError
from ...image import DirectoryFilesystem
from ...targets.cmdline import CmdlineError
from . import wifi
from .context import BuildContext

STEP = "kernel"


def plan(ctx: BuildContext) -> None:
    """Append the profile's `cgroup_flags` (and its Wi-Fi country) where the target's boot loader reads them;
    nothing where the target's kernel needs none (x86 Ubuntu boots cgroup v2 with the memory controller on)."""
    location = ctx.target.cmdline_location
    if location is None:
        return
    fs, path = location
    text = ctx.view.read_text(fs, path) or ""
    where, name = _where(ctx, fs, path), posixpath.basename(path)
    _refuse_unfit(ctx, text, where, f"restore the vendor's {name}, or start from an unmodified base image")
    edited = ctx.target.with_kernel_args(text, ctx.profile["cgroup_flags"] + wifi.kernel_args(ctx.profile))
    _refuse_unfit(ctx, edited, f"{where} with the arguments pi-image adds (the profile's cgroup_flags and Wi-Fi "
                  "country)", f"drop arguments the board does not need from the vendor's {name}, or set fewer "
                  "cgroup_flags")
    ctx.edit(STEP, fs, path, edited)  # in place: an extlinux.conf keeps its mode and owner


def _refuse_unfit(ctx: BuildContext, text: str, what: str, fix: str) -> None:
    """One line naming `what`, the problem and `fix` if `text` is a command-line file the boot loader cannot take."""
    try:
        ctx.target.check_cmdline(text)
    except CmdlineError as problem:
        raise UserError(f"{what}: {problem}: {fix}") from None


def _where(ctx: BuildContext, fs: str, path: str) -> str:
    """How an error names the file: the base, the partition it is on (for a disk image), its path."""
    partition = "" if isinstance(ctx.target.medium, DirectoryFilesystem) else \
        f", {ctx.target.filesystem(fs).description}"
    return f"{ctx.base or 'the base'}{partition}: {path}"
