"""Shell wrappers that put a stand-in on PATH under a tool's name (shared by the harness and the apt-get stand-in).

Tools whose only job is to be recorded get a pure-sh wrapper (no Python start-up: the suite stays fast); the others
run fake_tool.py with the Python that has PyYAML.
"""

import os
import sys

FAKE_TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_tool.py")
# dpkg too: the host's own must never run from a test (`dpkg --configure -a` as root would change this machine).
RECORD_ONLY = ("kubelet", "modprobe", "swapoff", "systemctl", "apt-mark", "dpkg", "journalctl")
TOOLS = ("kubeadm", "kubectl", "ip", "apt-get", "dpkg-query", "ctr", "containerd") + RECORD_ONLY

# The calls of a record-only tool that a stand-in plays after all (fake_tool.py records those itself).
PLAYED_CALLS = {"systemctl": "restart kubelet"}  # the kubelet's new version, after an upgrade

_RECORDING_SCRIPT = """#!/bin/sh
{played}args=""
for arg in "$@"; do args="$args${{args:+, }}\\"$arg\\""; done
printf '{{"tool": "{tool}", "args": [%s]}}\\n' "$args" >> "$FAKE_STATE/calls.jsonl"
"""


def write_wrapper(bin_dir, tool, python=sys.executable):
    """<bin_dir>/<tool>: a stand-in that records its call (and, for the interesting tools, plays the part)."""
    path = os.path.join(bin_dir, tool)
    with open(path, "w") as handle:
        if tool in RECORD_ONLY:
            played = 'case "$*" in "{}") exec "{}" "{}" {} "$@";; esac\n'.format(
                PLAYED_CALLS[tool], python, FAKE_TOOL, tool) if tool in PLAYED_CALLS else ""
            handle.write(_RECORDING_SCRIPT.format(tool=tool, played=played))
        else:
            handle.write('#!/bin/sh\nexec "{}" "{}" {} "$@"\n'.format(python, FAKE_TOOL, tool))
    os.chmod(path, 0o755)
    return path
