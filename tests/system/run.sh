#!/usr/bin/env bash
# Boot-to-join system test: builds a node image from a real (cached) Debian rootfs in the Ubuntu raspi layout, boots
# it under qemu-system-x86_64 -accel tcg and checks that it joins through the real token endpoint.
#   tests/system/run.sh [pytest args]      e.g. tests/system/run.sh -k power_cut
# Needs root. Installs what it needs with apt-get; uses the project venv (./dev test makes .venv), else
# $PI_IMAGE_VENV. Environment: PI_IMAGE_SYSTEM_CACHE (rootfs cache, default ~/.cache/pi-image/system),
# PI_IMAGE_DEBIAN_MIRROR (default: this machine's apt mirror), PI_IMAGE_SYSTEM_JOBS (guests booted at once, with
# pytest-xdist; default: the number of cores, at most 2), PI_IMAGE_SYSTEM_VCPUS (per guest; default 1 when several
# run at once, else 2).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/system/run.sh: needs root (debootstrap, chroot); try: sudo $0 $*" >&2
  exit 2
fi

PACKAGES=(debootstrap qemu-system-x86 e2fsprogs mtools dosfstools fdisk apt-utils gnupg skopeo docker-registry
          busybox-static socat fakeroot)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "system test: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

VENV=${PI_IMAGE_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  ./dev test --version >/dev/null  # creates the venv with the test extras
fi
JOBS=${PI_IMAGE_SYSTEM_JOBS:-$(( $(nproc) < 2 ? $(nproc) : 2 ))}
PARALLEL=()
if [ "$JOBS" -gt 1 ]; then
  # One single-vCPU guest per core beats one two-vCPU guest at a time: most of a boot is serial.
  "$VENV/bin/python" -c "import xdist" 2>/dev/null || "$VENV/bin/pip" install -q "pytest-xdist>=3.5,<4"
  PARALLEL=(-n "$JOBS")  # conftest.py schedules (a module sharing one guest stays together)
  export PI_IMAGE_SYSTEM_VCPUS=${PI_IMAGE_SYSTEM_VCPUS:-1}
fi
# every story keeps its guests' logs (pyproject keeps only a failing test's tmp_path: the suite's GiBs)
exec "$VENV/bin/python" -m pytest -m system tests/system -p no:cacheprovider -o tmp_path_retention_policy=all \
  "${PARALLEL[@]}" "$@"
