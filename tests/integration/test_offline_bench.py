"""bench/offline_bench.py runs (in its smoke mode: tiny, one run, no boot), so it cannot rot."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "offline_bench.py"


@pytest.mark.skipif(not all(shutil.which(t) for t in ("skopeo", "docker-registry", "apt-ftparchive")),
                    reason="needs skopeo, docker-registry and apt-utils (./dev test installs them)")
def test_the_offline_bench_runs_in_smoke_mode():
    proc = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=600)

    assert proc.returncode == 0, proc.stderr
    assert "bundle cold" in proc.stdout and "bundle warm" in proc.stdout
    assert "ratio --offline / without:" in proc.stdout
