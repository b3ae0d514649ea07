"""/etc/os-release from a hostile image: identifiers outside [a-z0-9._-] count as absent, names are made printable and
capped, so nothing from it reaches a template, a message or a terminal raw (issue 30)."""

from __future__ import annotations

from builder.config.values import kernel_argument
from builder.targets.base import OsRelease


def test_identifiers_that_os_release_5_forbids_count_as_absent() -> None:
    os = OsRelease.parse('ID="ubuntu\x1b[2J"\nVERSION_ID="22.04\nevil"\nID_LIKE="debian ../x \x07"\n'
                        'VERSION_CODENAME=jammy\n')
    assert (os.id, os.version_id, os.id_like) == ("linux", "22.04", ("debian",))


def test_a_pretty_name_is_escaped_and_capped() -> None:
    os = OsRelease.parse('PRETTY_NAME="\x1b]0;owned\x07' + "P" * 10_000 + '"\n')
    assert os.pretty_name.startswith("\\x1b]0;owned\\x07PPP") and os.pretty_name.isprintable()
    assert len(os.pretty_name) < 200 and os.pretty_name.endswith("more characters)")


def test_a_real_os_release_reads_as_before() -> None:
    os = OsRelease.parse('PRETTY_NAME="Ubuntu 24.04.1 LTS"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n')
    assert (os.id, os.version_id, os.pretty_name, os.id_like) == ("ubuntu", "24.04", "Ubuntu 24.04.1 LTS", ("debian",))


def test_a_kernel_argument_holds_printable_ascii_only() -> None:
    assert kernel_argument("cgroup_enable=memory") is None
    assert kernel_argument("quiet\x1b[2J") is not None and kernel_argument("a'b") is not None
