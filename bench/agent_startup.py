"""The first-boot agent's start-up: what importing it and `--help` cost over a bare interpreter, and which imports
weigh most.

    python bench/agent_startup.py [--python python3] [--runs 20] [--smoke]

Phases, in one run, the three commands interleaved (each run of each in turn, so all see the same machine):
  floor    python3 -c pass                              (the interpreter and its site module)
  import   python3 -c "import firstboot.agent"          (every module the agent imports at start)
  help     python3 -m firstboot.agent --help            (import, argument parser, exit)
  imports  python3 -X importtime -c "import firstboot.agent", once: the agent's own modules, and the heaviest
           modules that one of them imports (cumulative: what dropping that import would save, unless another
           module imports it too). Python >= 3.7: 3.6 has no -X importtime (the line says so).

Run from the checkout (its firstboot/ is what the image carries). The device runs the same commands on a slower CPU:
the ratios carry over, the milliseconds do not.
--smoke: 3 runs: the suite runs it so that the script cannot rot.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import REPO, add_smoke_arg

COMMANDS = {
    "floor: python3 -c pass": ["-c", "pass"],
    "import firstboot.agent": ["-c", "import firstboot.agent"],
    "firstboot.agent --help": ["-m", "firstboot.agent", "--help"],
}
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)$")
HEAVIEST = 8


def seconds(python: str, args: list[str]) -> float:
    """Wall seconds of `python ARGS` run in the checkout (it must succeed)."""
    started = time.perf_counter()
    proc = subprocess.run([python, *args], cwd=REPO, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{python} {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return elapsed


def import_times(stderr: str) -> list[tuple[str, str, int]]:
    """(importer, module, cumulative µs) of each module -X importtime reports under a firstboot module: the agent's
    own modules (importer "") and what each of them imports directly."""
    found: list[tuple[str, str, int]] = []
    stack: list[tuple[int, str]] = []  # (depth, module) of the modules enclosing the current line
    for line in reversed(stderr.splitlines()):  # importtime prints a module after everything it imported
        match = IMPORT_LINE.match(line)
        if not match:
            continue
        depth, module = len(match.group(3)) // 2, match.group(4)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        importer = stack[-1][1] if stack else ""
        if module.startswith("firstboot") or importer.startswith("firstboot"):
            found.append(("" if module.startswith("firstboot") else importer, module, int(match.group(2))))
        stack.append((depth, module))
    return found


def heaviest_imports(python: str) -> list[str]:
    """Lines naming the agent's import total and its heaviest imports of non-firstboot modules."""
    proc = subprocess.run([python, "-X", "importtime", "-c", "import firstboot.agent"], cwd=REPO,
                          capture_output=True, text=True, check=False)
    found = import_times(proc.stderr)
    if proc.returncode != 0 or not found:
        return [f"  {python} has no -X importtime (Python >= 3.7 has): no breakdown"]
    total = next(us for importer, module, us in found if module == "firstboot.agent")
    lines = [f"  -X importtime: firstboot.agent {total / 1000:.1f} ms cumulative; heaviest modules the agent's own "
             "modules import (cumulative, ms):"]
    outside = sorted((entry for entry in found if entry[0]), key=lambda entry: -entry[2])
    lines += [f"    {module:24} {us / 1000:6.1f}  imported by {importer}" for importer, module, us in
              outside[:HEAVIEST]]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the interpreter measured (the device's: python3)")
    parser.add_argument("--runs", type=int, default=20)
    add_smoke_arg(parser)
    args = parser.parse_args()
    runs = 3 if args.smoke else args.runs
    times: dict[str, list[float]] = {label: [] for label in COMMANDS}
    for _ in range(runs):
        for label, command in COMMANDS.items():
            times[label].append(seconds(args.python, command))
    version = subprocess.run([args.python, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    print(f"agent start-up, {version}, interleaved runs:")
    floor_label = next(iter(COMMANDS))
    floor = statistics.median(times[floor_label])
    for label, values in times.items():
        median = statistics.median(values)
        over = f"  = {median / floor:.2f}x the floor, +{1000 * (median - floor):.0f} ms" if label != floor_label else ""
        print(f"  {label:24} median {1000 * median:6.1f} ms  (min {1000 * min(values):.1f}, max "
              f"{1000 * max(values):.1f}, n={len(values)}){over}")
    print("\n".join(heaviest_imports(args.python)))


if __name__ == "__main__":
    main()
