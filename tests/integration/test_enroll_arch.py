"""The seed's own case: an installed Arch Linux laptop (zcloud) becomes a worker with `pi-image enroll`. Its plan is
made against the Arch reference tree, installs Kubernetes from the upstream release (the profile arch-worker), and is
refused on a machine of another family; applied to a sandbox Arch-like system it writes the kubelet's unit from the
release and no apt repository, and `--undo` puts the tree back as it was."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from http_fixture import FileServer
from readback import PiImage, succeeded

from firstboot import enroll as device

ARCH_OS_RELEASE = 'NAME="Arch Linux"\nPRETTY_NAME="Arch Linux"\nID=arch\nBUILD_ID=rolling\n'
DEBIAN_OS_RELEASE = 'NAME="Debian GNU/Linux"\nID=debian\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
RELEASE, CRICTL, CNI = "1.31.4", "v1.31.1", "v1.5.1"
SYSTEMCTL = "#!/bin/sh\n[ \"$1\" = is-active ] && { echo inactive; exit 3; }\nexit 0\n"


@pytest.fixture(scope="module")
def release_location():
    """stable-1.31.txt and every amd64 asset's .sha256, at the upstream paths."""
    paths = [f"release/v{RELEASE}/bin/linux/amd64/{tool}" for tool in ("kubeadm", "kubelet", "kubectl")]
    paths += [f"cri-tools/{CRICTL}/crictl-{CRICTL}-linux-amd64.tar.gz",
              f"plugins/{CNI}/cni-plugins-linux-amd64-{CNI}.tgz"]
    files = {"release/stable-1.31.txt": f"v{RELEASE}\n".encode()}
    files.update({path + ".sha256": hashlib.sha256(path.encode()).hexdigest().encode() for path in paths})
    server = FileServer(files)
    yield server
    server.close()


@pytest.fixture(scope="module")
def script(cli: PiImage, release_location, tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("arch-enroll")
    lab = where / "lab"
    succeeded(cli("cluster", "init", lab, "--api-server", "192.168.6.10:6443", "--endpoint", "192.168.6.10:8443",
                  "--kubernetes-version", "1.31", "--node-subnet", "192.168.6.0/24", "--gateway", "192.168.6.1"))
    succeeded(cli("cluster", "add-node", lab, "zcloud", "--profile", "arch-worker"))
    output = where / "enroll-zcloud.sh"
    server = release_location
    succeeded(cli("enroll", "--cluster", lab, "--node", "zcloud", "-o", output,
                  "--set", f"kube_release_url={server.url('release')}",
                  "--set", f"crictl_url={server.url('cri-tools')}",
                  "--set", f"cni_plugins_url={server.url('plugins')}"))
    return output


def machine(tmp_path: Path, os_release: str) -> Path:
    root = tmp_path / "machine"
    for directory in ("etc/systemd/system", "run/systemd/system", "proc", "usr/lib", "var/lib"):
        (root / directory).mkdir(parents=True)
    (root / "etc/os-release").write_text(os_release)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/fstab").write_text("UUID=1234 / ext4 defaults 0 1\n")
    (root / "etc/pacman.conf").write_text("[options]\nArchitecture = auto\n")
    (root / "proc/swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n")
    return root


def run(script: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    bin_dir = root.parent / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text(SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return subprocess.run(["sh", str(script), "--root", str(root), *args], capture_output=True, text=True, env=env,
                          timeout=60)


def tree(root: Path) -> dict[str, bytes | str | None]:
    return {str(path.relative_to(root)): (os.readlink(path) if path.is_symlink() else None if path.is_dir()
                                          else path.read_bytes()) for path in sorted(root.rglob("*"))}


def test_the_arch_plan_installs_the_release_and_no_apt_repository(script):
    payload = device.read_payload(str(script))
    paths = {op["path"] for op in payload["ops"]}
    config = json.loads(next(device.content(op) for op in payload["ops"] if op["path"] == "/etc/pi-image/node.json"))

    assert config["package_manager"] == "pacman" and config["kube_install"] == "release"
    assert config["kubernetes_release"] == RELEASE and set(config["release"]["sha256"]) >= {"kubeadm", "kubelet"}
    assert {"/etc/systemd/system/kubelet.service", "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf"} <= paths
    assert not [path for path in paths if path.startswith("/etc/apt/")], "an Arch machine gets no apt repository"
    assert script.stat().st_size < 200 << 10


def test_an_arch_machine_is_enrolled_and_undone_byte_for_byte(script, tmp_path):
    root = machine(tmp_path, ARCH_OS_RELEASE)
    before = tree(root)

    applied = run(script, root)
    assert applied.returncode == 0, applied.stderr
    assert (root / "etc/systemd/system/kubelet.service").read_text().count("/usr/local/bin/kubelet") == 1
    assert json.loads((root / "etc/pi-image/node.json").read_text())["node"] == "zcloud"

    undone = run(script, root, "--undo")
    assert undone.returncode == 0, undone.stderr
    assert tree(root) == before


def test_a_debian_machine_is_refused_by_an_arch_plan_in_one_line(script, tmp_path):
    root = machine(tmp_path, DEBIAN_OS_RELEASE)
    before = tree(root)

    refused = run(script, root)

    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "debian" in refused.stderr.lower() and "arch" in refused.stderr.lower(), refused.stderr
    assert tree(root) == before
