"""Every bad input a user can give pi-image, through the real CLI as a subprocess, held to one contract:

- exit 1 with exactly ONE non-empty line on stderr, starting `pi-image: error:` and naming the offending thing
  (the file:line or --set, the key, the value); for click's own usage errors exit 2 with its `Usage: ... Error: ...`;
- no "Traceback" anywhere, and no secret or template internal ("'dict object' has no attribute") echoed back;
- nothing left behind: the case's directory (outputs, *.tmp, OUTPUT.json, the cluster directory, the working
  directory) is exactly what it was, and the base sample's bytes are unchanged.

The table is in bad_inputs_table.py (the profile-type family generated from builder.config.profiles.SCHEMA). Families:
`-k profile-type`, `-k profile-value`, `-k profile-file`, `-k cli-output`, `-k cli-`, `-k cluster-`, `-k control`.
Cases marked `pending=` there test behaviour issue 12/13 asks for and fail until it exists (never skipped).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bad_inputs_table import ACCEPT, CASES, EITHER, VALID_KEY, Case
from readback import EPOCH, KUBE_KEY, REPO, fingerprint

from builder import cluster as clusters

PLACES = ("tmp", "out", "base", "l4t", "key", "sshkey", "profile", "lab")
PLACE_RE = re.compile(r"\{(" + "|".join(PLACES) + r")\}")
BIG = 1 << 20
# Never in any answer: template internals (jinja2's undefined values) mean a bad input reached an overlay.
ALWAYS_FORBIDDEN = ("'dict object' has no attribute", "StrictUndefined", "is not JSON serializable")

assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


def pi_image_env(cache: Path, extra: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO),
            "PI_IMAGE_CACHE": str(cache), "SOURCE_DATE_EPOCH": EPOCH, **dict(extra)}


def pi_image(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


class Workspace:
    """One case's directory and the places its table entry may name (see bad_inputs_table's docstring)."""

    def __init__(self, tmp: Path, sample_image, template_cluster: Path, sshkey: Path):
        self.tmp = tmp
        self.sshkey = sshkey
        self.out = tmp / "out"
        self.out.mkdir()
        self.key = KUBE_KEY
        self.profile = tmp / "my.yaml"
        self.lab = tmp / "lab"
        self.template_cluster = template_cluster
        self._sample_image = sample_image
        self.samples: dict[Path, tuple] = {}  # read-only samples this case used, with their fingerprint before

    def _sample(self, target: str) -> Path:
        path = self._sample_image(target)
        self.samples.setdefault(path, fingerprint(path))
        return path

    @property
    def base(self) -> Path:
        return self._sample("ubuntu-raspi")

    @property
    def l4t(self) -> Path:
        return self._sample("l4t-rootfs")

    def sub(self, text: str) -> str:
        return PLACE_RE.sub(lambda m: str(getattr(self, m.group(1))), text)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root`, hidden ones included, with its kind, mode and content digest."""
    found: dict[str, tuple] = {}
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(current) / name
            st = path.lstat()
            if path.is_symlink():
                body: object = os.readlink(path)
            elif path.is_dir():
                body = "dir"
            elif st.st_size > BIG:
                body = fingerprint(path)
            else:
                body = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(root))] = (st.st_mode, st.st_size, body)
    return found


def exception_type(text: str) -> str:
    """The last `SomeError: ...` line of a traceback."""
    lines = [line for line in text.splitlines() if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line)]
    return lines[-1][:160] if lines else ""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad-inputs-cache")


@pytest.fixture(scope="module")
def sshkey(cache) -> Path:
    path = cache / "admin.pub"
    path.write_text(VALID_KEY + "\n")
    return path


@pytest.fixture(scope="module")
def template_cluster(tmp_path_factory, cache) -> Path:
    """A cluster made by the CLI: 192.168.6.0/24 via 192.168.6.1, node pi-worker1 (dc:a6:32:01:02:03, 192.168.6.21)."""
    root = tmp_path_factory.mktemp("bad-inputs-cluster")
    lab = root / "lab"
    proc = pi_image(["cluster", "init", str(lab), "--api-server", "192.168.6.10:6443", "--endpoint",
                     "192.168.6.10:8443", "--kubernetes-version", "1.31", "--node-subnet", "192.168.6.0/24",
                     "--gateway", "192.168.6.1"],
                    root, pi_image_env(cache), 60)
    assert proc.returncode == 0, proc.stderr
    # The node is written as an operator would by hand, so that `add-node`'s own cases alone judge add-node.
    (lab / "inventory.yaml").write_text("nodes:\n- name: pi-worker1\n  role: worker\n  profile: worker-8g\n"
                                        "  mac: dc:a6:32:01:02:03\n  address: 192.168.6.21\n")
    clusters.write_server_config(clusters.load_cluster(lab))  # tokend.json as add-node would leave it
    proc = pi_image(["status", "--cluster", str(lab)], root, pi_image_env(cache), 60)
    assert proc.returncode == 0 and "pi-worker1" in proc.stdout, proc.stderr
    return lab


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(case: Case, tmp_path, sample_image, template_cluster, sshkey,
                                                  cache):
    w = Workspace(tmp_path, sample_image, template_cluster, sshkey)
    for step in case.setup:
        step(w)
    args = [w.sub(a) for a in case.argv]
    expect = [w.sub(e) for e in case.expect]
    before = snapshot(tmp_path)
    try:
        proc = pi_image(args, tmp_path, pi_image_env(cache, case.env), case.timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case.id}: still running after {case.timeout} s: pi-image {' '.join(args)}")
    verdict = judge(case, proc, expect, before, snapshot(tmp_path), w)
    for path, was in w.samples.items():
        if fingerprint(path) != was:
            verdict.append(f"the read-only sample {path} was written")
    if verdict:
        said = exception_type(proc.stderr) or ((proc.stderr or proc.stdout).strip().splitlines() or [""])[0]
        summary = f"{'; '.join(verdict)} | exit {proc.returncode} | {said[:200]}".replace(str(tmp_path), "{tmp}")
        pytest.fail(f"{summary} | {case.pending or 'no pending note'}\n$ pi-image {' '.join(args)}\n"
                    f"--- stderr ---\n{proc.stderr[-3000:]}\n--- stdout ---\n{proc.stdout[-1500:]}", pytrace=False)


def judge(case: Case, proc: subprocess.CompletedProcess[str], expect: list[str], before: dict, after: dict,
          w: Workspace) -> list[str]:
    """What is wrong with how pi-image answered (empty if it kept the contract)."""
    text = proc.stdout + proc.stderr
    wrong = [f"echoed {bad!r}" for bad in (*case.forbid, *ALWAYS_FORBIDDEN) if bad in text]
    if after != before and not (proc.returncode == 0 and case.outcome in (ACCEPT, EITHER)):
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
        wrong.append(f"left behind: added {added[:3]} removed {removed[:3]} changed {changed[:3]}")
    if "Traceback" in text:
        return ["traceback", *wrong]
    if proc.returncode == 0 and case.outcome in (ACCEPT, EITHER):
        if case.check_output:
            made = [p for p in sorted(w.out.iterdir()) if p.is_file() and not p.name.endswith(".json")
                    and not p.name.startswith(".")]
            wrong += [problem for p in made if (problem := case.check_output(p))]
            if not made:
                wrong.append("exit 0 but no output was made")
        return wrong
    if case.outcome == ACCEPT:
        return wrong + [f"refused a good input (expected exit {case.exit_code})"]
    if proc.returncode == 0:
        return wrong + ["accepted the bad input (exit 0)"]
    if case.exit_code == 2:
        if proc.returncode != 2 or "Usage:" not in proc.stderr or "Error:" not in proc.stderr:
            wrong.append(f"expected click's usage error (exit 2), got exit {proc.returncode}")
        message = "\n".join(line for line in proc.stderr.splitlines() if line.startswith("Error:"))
    else:
        lines = proc.stderr.strip().splitlines()
        if proc.returncode != 1:
            wrong.append(f"exit {proc.returncode}, not 1")
        if len(lines) != 1:
            wrong.append(f"{len(lines)} lines on stderr, not 1")
        if not lines or not lines[-1].startswith("pi-image: error: ") or not lines[-1][17:].strip():
            wrong.append("the last line is not 'pi-image: error: ...'")
        message = lines[-1] if lines else ""
    return wrong + [f"the line does not name {fragment!r}" for fragment in expect if fragment not in message]
