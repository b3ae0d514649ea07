"""The device code under the oldest device Python (Jetson Nano's L4T R32 = Ubuntu 18.04 = Python 3.6)."""

import subprocess

import pytest
from join_fakes.harness import PYTHON36, REPO


def test_agent_and_endpoint_import_under_a_real_python_36_when_one_is_installed():
    if PYTHON36 is None:
        pytest.skip("no Python 3.6 interpreter here (set FIRSTBOOT_PYTHON=/path/to/python3.6 to run the agent and "
                    "endpoint under it); tests/unit vermin check still proves 3.6 syntax and library use")
    proc = subprocess.run([PYTHON36, "-c", "import firstboot.agent, firstboot.endpoint.tokend"], cwd=str(REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert proc.returncode == 0, proc.stdout
