"""User-facing errors: one line that says what went wrong, where, and how to fix it.

Anything raised as `UserError` is printed by the CLI as a single line with a non-zero exit and no traceback.
Anything else is a bug in pi-image and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment (bad image, typo in a profile, full disk...)."""

    exit_code = 1


class ToolError(UserError):
    """An external tool (debugfs, mtools, xz...) failed; the message carries its stderr."""
