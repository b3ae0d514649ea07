"""`pip install .` without -e: the wheel holds every file the packages read, and the installed `pi-image` works
from any directory with the profiles, overlays, samples and device agent it ships.

The wheel is built offline with this venv's setuptools and installed without dependencies into a fresh venv, which
then borrows this venv's dependencies (click, jinja2, ...) through a .pth line: fast, and no index is asked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from readback import EPOCH, KUBE_KEY, REPO, succeeded

PACKAGES = ("builder", "firstboot")


def package_files() -> set[str]:
    """Every file of the packages in the checkout, as a wheel names it."""
    return {path.relative_to(REPO).as_posix() for package in PACKAGES for path in (REPO / package).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts}


@pytest.fixture(scope="module")
def wheel_build(tmp_path_factory) -> tuple[Path, str]:
    """(the wheel, pip's output). Built from a copy of the sources: a build in the checkout leaves build/ there, and
    stale files in it would end up in later wheels."""
    top = tmp_path_factory.mktemp("wheel")
    source = top / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    proc = succeeded(subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                     "--no-index", "--disable-pip-version-check", "-w", str(top / "dist"),
                                     str(source)], capture_output=True, text=True))
    [wheel] = (top / "dist").glob("*.whl")
    return wheel, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def installed(wheel_build, tmp_path_factory) -> Path:
    """The bin/ of a fresh venv where the wheel is the only pi-image."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    succeeded(subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True,
                             text=True))
    python = venv / "bin" / "python"
    succeeded(subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", "--disable-pip-version-check", "-q", str(wheel_build[0])],
                             capture_output=True, text=True))
    # Only now (pip must not see this venv's editable pi-image): this venv's site-packages for the dependencies.
    # Its own .pth files are not run, so the editable install's finder stays out.
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    dependencies = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    Path(site, "test-venv-dependencies.pth").write_text("".join(f"{d}\n" for d in sorted(dependencies)))
    where = run_installed(venv / "bin", "python", "-c", "import builder, firstboot; print(builder.__file__); "
                          "print(firstboot.__file__)", cwd=venv)
    assert all(Path(line).is_relative_to(venv) for line in where.stdout.split()), where.stdout
    return venv / "bin"


def run_installed(bin_dir: Path, command: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`command` from the installed venv, run in `cwd` (outside the checkout), with nothing pointing at the checkout."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PI_IMAGE_CACHE=str(cwd / "cache"), SOURCE_DATE_EPOCH=EPOCH)
    return succeeded(subprocess.run([str(bin_dir / command), *map(str, args)], cwd=cwd, env=env,
                                    capture_output=True, text=True, timeout=300))


def test_the_wheel_holds_every_file_of_the_packages_and_nothing_else(wheel_build):
    with zipfile.ZipFile(wheel_build[0]) as archive:
        shipped = {name for name in archive.namelist() if ".dist-info/" not in name}

    assert shipped == package_files()
    assert {"builder/data/profiles/worker-8g.yaml", "builder/data/overlays/k8s-kernel/overlay.yaml",
            "firstboot/units/pi-image-firstboot.service"} <= shipped


def test_building_the_wheel_prints_no_warning(wheel_build):
    output = wheel_build[1]
    assert not [line for line in output.splitlines() if "warn" in line.lower() or "deprecat" in line.lower()], output


def test_installed_pi_image_lists_the_shipped_profiles_from_any_directory(installed, tmp_path):
    listing = run_installed(installed, "pi-image", "profiles", cwd=tmp_path).stdout

    assert [line.split()[0] for line in listing.splitlines()] == \
        sorted(path.stem for path in (REPO / "builder" / "data" / "profiles").glob("*.yaml"))


def test_installed_pi_image_plans_the_same_build_as_the_checkout(installed, cli, tmp_path):
    base = tmp_path / "demo-base.img"
    run_installed(installed, "pi-image", "demo-image", base, cwd=tmp_path)
    build = ("build", "--profile", "worker-8g", "--base", base, "--kube-key", KUBE_KEY, "--dry-run", "--json")
    words = cli.argv(*build)[3:]  # what the tests' `python -m builder` gets, e.g. with the test SSH key added

    from_wheel = json.loads(run_installed(installed, "pi-image", *words, cwd=tmp_path).stdout)
    from_checkout = json.loads(succeeded(cli(*build)).stdout)

    assert any(op["step"].startswith("overlay:") for op in from_wheel["ops"]), "the shipped overlays were found"
    assert any(op["step"] == "firstboot" for op in from_wheel["ops"]), "and the device agent"
    assert from_wheel == from_checkout
