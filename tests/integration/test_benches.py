"""Every bench/ script runs in its smoke mode (`--smoke`: tiny sizes, one run, no goal judged), so that none can rot.

One test per script found in bench/: each must exit 0 and print a line of each of its phases. A new bench fails here
until it has a --smoke mode and its phases' lines are listed in PHASE_LINES.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# A distinctive piece of a line each phase prints, per bench.
PHASE_LINES = {
    "agent_startup.py": ("floor: python3 -c pass", "import firstboot.agent", "firstboot.agent --help",
                         "-X importtime: firstboot.agent"),
    "attack_bench.py": ("token endpoint under attack:", "idle sockets held", "quiet ", "attacked ",
                        "audit log + state grew by", "under attack / quiet:", "goal (>= 90% served"),
    "build_bench.py": ("first build (hashes", "cp --sparse=always", "cp + sync (fsync)", "build --sha256",
                       "CLI start-up", "profiled build (in-process", "chunk digest of the output",
                       "(external tools, all phases)", "--all --sha256", "floor: cp x 2"),
    "download.py": ("xz blocks", "floor: xz -dc -T0", "download (GET, SHA-256, rename)", "unpack (raw_image)",
                    "download + unpack"),
    "edit_bench.py": ("512 MiB image: read+write+commit", "16384 MiB image: read+write+commit",
                      "ratio 16384 MiB / 512 MiB"),
    "fleet_bench.py": ("untimed warm-up build", "profile image + stamping flashes", "  1 |", "  2 |", "time ratio"),
    "flash_bench.py": ("image used bytes (usage_map)", "bmaptool create:", "dd bs=4M conv=fsync", "bmaptool copy",
                       "pi-image flash --no-verify", "pi-image / bmaptool time:", "pi-image written / used bytes:"),
    "join_bench.py": ("floor   connect + GET /v1/challenge", "join    challenge + POST /v1/join",
                      "report  challenge + POST /v1/report", "offered (open loop)", "join vs floor:",
                      "join ceilings:", "goal (join capacity"),
    "unpack_bench.py": ("single-block (", "multi-block (", "xz -T0 -dc > /dev/null", "xz -T0 -dc > file",
                        "pi-image unpack", "pi-image / (xz > file)"),
    "offline_bench.py": ("bundle cold", "bundle warm", "build without --offline", "build --offline (warm)",
                         "ratio --offline / without:"),
}
# Tools a bench needs beyond pi-image's own (./dev test installs them all).
TOOLS = {
    "flash_bench.py": ("bmaptool",),
    "offline_bench.py": ("skopeo", "docker-registry", "apt-ftparchive"),
}


def benches() -> list:
    """Every script in bench/ (not its shared _modules), skipped where a tool it needs is missing."""
    found = []
    for path in sorted((REPO / "bench").glob("*.py")):
        if path.name.startswith("_"):
            continue
        missing = [tool for tool in TOOLS.get(path.name, ()) if not shutil.which(tool)]
        found.append(pytest.param(path, id=path.stem, marks=pytest.mark.skipif(
            bool(missing), reason=f"needs {', '.join(missing)} (./dev test installs it)")))
    return found


@pytest.mark.parametrize("bench", benches())
def test_the_bench_runs_in_smoke_mode(bench: Path, tmp_path: Path):
    assert bench.name in PHASE_LINES, f"list a line of each phase of bench/{bench.name} in PHASE_LINES"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PI_IMAGE_CACHE": str(tmp_path / "cache")}

    proc = subprocess.run([sys.executable, str(bench), "--smoke"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    missing = [line for line in PHASE_LINES[bench.name] if line not in proc.stdout]
    assert not missing, f"bench/{bench.name} --smoke did not print {missing}:\n{proc.stdout}"
