"""Where a node's first boot spent its time, read from its powered-off image (measurement output, asserts nothing).

The agent's log (/var/lib/pi-image/firstboot.log, millisecond timestamps) gives the phases of local setup; dpkg's log
(/var/log/dpkg.log, one line per package status change, to the second) shows what the package install did inside.
Both are kept beside the serial logs (the image itself is removed when its story passes) and summed up per phase.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

AGENT_LOG = "/var/lib/pi-image/firstboot.log"
DPKG_LOG = "/var/log/dpkg.log"
# The agent's log lines that open each phase (regular expressions), in order: the first line after the previous
# phase's that matches starts it; a phase the boot did not have is left out.
PHASES = (("install packages", r"from the card's bundle \(no network\)"),
          ("release binaries, runtime check", r"bundle's packages are installed|: installed "),
          ("start the runtime", "starting containerd"),
          ("import images", "answers on"),
          ("hold, enable, versions", r"image\(s\) of the bundle are in containerd"),
          ("ask for a token / init", "local setup done"),
          ("kubeadm", "running kubeadm"),
          ("done", "joined the cluster|kubeadm init done"))
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def keep(lab, node: str, into: Path) -> dict:
    """Copy the node's agent and dpkg logs into `into`; the seconds of each phase (PHASES) and of each package dpkg
    unpacked and configured."""
    into.mkdir(parents=True, exist_ok=True)
    agent = lab.guest_file(AGENT_LOG, node) or ""
    dpkg = lab.guest_file(DPKG_LOG, node) or ""
    (into / f"{node}-firstboot.log").write_text(agent)
    (into / f"{node}-dpkg.log").write_text(dpkg)
    first = next((_seconds(line) for line in agent.splitlines() if _STAMP.match(line)), 0)
    return {"phases": phases(agent), "dpkg": dpkg_steps(dpkg, since=first - 1), "logs": str(into)}


def phases(agent_log: str) -> dict:
    lines = [(_seconds(line), line) for line in agent_log.splitlines() if _STAMP.match(line)]
    starts, after = [], 0
    for name, pattern in PHASES:
        found = next((index for index in range(after, len(lines)) if re.search(pattern, lines[index][1])), None)
        if found is not None:
            starts.append((name, lines[found][0]))
            after = found + 1
    ends = [start for _, start in starts[1:]]
    return {name: round(end - start, 2) for (name, start), end in zip(starts, ends, strict=False)}


def dpkg_steps(dpkg_log: str, since: float) -> dict:
    """dpkg.log's lines from `since` on (the image's build wrote the earlier ones): {"first to last": s, "slowest":
    [["unpack containerd:amd64", s], ...]}, each line's time until the next one given to what it started."""
    times = []
    for line in dpkg_log.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            moment = datetime.strptime(" ".join(fields[:2]), "%Y-%m-%d %H:%M:%S").timestamp()
            if moment >= since:
                times.append((moment, fields[2:]))
    if not times:
        return {}
    spent: dict = {}
    for (moment, fields), (following, _) in zip(times, times[1:], strict=False):
        step = _STEPS.get(fields[1] if fields[0] == "status" else fields[0], fields[0])
        name = f"{step} {fields[2] if fields[0] == 'status' else fields[1]}"
        spent[name] = spent.get(name, 0) + following - moment
    slowest = sorted(([name, round(seconds)] for name, seconds in spent.items()), key=lambda item: -item[1])
    return {"first to last": round(times[-1][0] - times[0][0], 1), "slowest": slowest[:8]}


_STEPS = {"install": "unpack", "upgrade": "unpack", "half-installed": "unpack", "unpacked": "unpacked",
          "configure": "configure", "half-configured": "configure", "installed": "installed", "trigproc": "trigger",
          "triggers-pending": "unpack", "startup": "startup"}


def _seconds(line: str) -> float:
    match = _STAMP.match(line)
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(match.group(2)) / 1000
