"""User-facing errors: one line that says what went wrong, where, and how to fix it.

Anything raised as `UserError` is printed by the CLI as a single line with a non-zero exit and no traceback.
Anything else is a bug in pi-image and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment (bad image, typo in a profile, full disk...)."""

    exit_code = 1


class ToolError(UserError):
    """An external tool (debugfs, mtools, xz...) failed; the message carries its stderr."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM in a step that knows what it leaves behind: the message says what was kept and what to do
    with it, and the CLI prints `pi-image: interrupted: MESSAGE` (exit 130).

    A KeyboardInterrupt, not a UserError: code that carries on after a UserError (a fleet builds its other nodes)
    must stop on an interruption all the same."""


SHOWN_CHARS = 120  # what a message or a report shows of one value read from an image


def printable(value: str, limit: int = SHOWN_CHARS) -> str:
    """`value`, read from an image, made safe to print: each character that is not printable (a control byte, an
    escape sequence's ESC, an invisible or bidirectional mark) written as its Python escape (\\x1b, \\u202e), and at
    most `limit` characters shown, then "… (N more characters)"."""
    shown: list[str] = []
    used = 0
    for index, char in enumerate(value):
        piece = char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        if used + len(piece) > limit:
            return "".join(shown) + f"… ({len(value) - index} more characters)"
        shown.append(piece)
        used += len(piece)
    return "".join(shown)
