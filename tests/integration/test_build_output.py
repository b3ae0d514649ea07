"""What a user reads after `pi-image build`: one summary per image (what it is, where it joins, how to log in, where
it is), the table of a whole fleet, the next step, progress bars on a terminal only, and `--json` as pure data.
Also `pi-image profiles --keys`, checked against the schema it is generated from.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import threading
from pathlib import Path

import pytest
from readback import KUBE_KEY, PiImage, filesystems, make_cluster, sha256_of, succeeded, tool

from builder.config.profiles import SCHEMA

NODES = {
    "pi-master1": ["--profile", "master-2g", "--address", "192.168.6.10"],
    "pi-worker1": ["--profile", "worker-8g", "--address", "192.168.6.21"],
    "pi-worker2": ["--profile", "worker-8g"],
}
OP_LINE = re.compile(r"^ *\[[^]]+\] (write|mkdir|symlink|remove) ", re.M)  # `[kernel   ] write 194 B  boot:/...`
SUMMARY_ROW = re.compile(r"^  (node|target|cluster|address|wifi|login|Kubernetes|private|files) +(.*)$", re.M)


@pytest.fixture(scope="module")
def lab(cli, tmp_path_factory) -> Path:
    return make_cluster(cli, tmp_path_factory.mktemp("cluster") / "lab", "192.168.6.0/24", NODES)


def build(cli: PiImage, base: Path, output: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return succeeded(cli("build", "--base", base, "--output", output, "--kube-key", KUBE_KEY, *args))


def rows(stdout: str) -> dict[str, str]:
    """The summary's `  name  value` rows (the last image's, for a fleet)."""
    return dict(SUMMARY_ROW.findall(stdout))


def on_terminal(cli: PiImage, *args: str | Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run pi-image with stderr on a pseudo-terminal, as from an interactive shell, and stdout captured; return the
    run and what the terminal showed."""
    controller, terminal = pty.openpty()
    shown: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: every holder of the terminal side has closed it
                return
            if not data:
                return
            shown.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        proc = subprocess.run(cli.argv(*args), stdout=subprocess.PIPE, stderr=terminal, text=True,
                              env=cli.env(), timeout=600)
    finally:
        os.close(terminal)
        reader.join(timeout=30)
        os.close(controller)
    return proc, b"".join(shown).decode(errors="replace")


def test_a_plain_build_ends_with_a_summary_and_how_to_write_the_card(cli, base, tmp_path):
    out = tmp_path / "pi-lone.img"
    run = build(cli, base, out, "--node", "pi-lone", "--profile", "worker-8g")
    summary = rows(run.stdout)

    assert run.stdout.startswith(f"Built {out} (2.0 GiB)\n")
    assert summary["node"] == "pi-lone: worker, profile worker-8g"
    assert summary["target"].startswith("ubuntu-raspi (Ubuntu ")
    assert summary["cluster"].startswith("none: this image joins no cluster — make one with `pi-image cluster init")
    assert summary["address"] == "DHCP"
    assert summary["login"] == "ubuntu: 1 SSH key"
    assert summary["Kubernetes"] == "1.31"
    assert "private" not in summary and out.stat().st_mode & 0o777 == 0o644
    assert summary["files"].endswith("file operations changed something (-v lists them)")
    assert f"sudo bmaptool copy --nobmap {out} /dev/sdX" in run.stdout
    assert f"sudo dd if={out} of=/dev/sdX bs=4M conv=fsync" in run.stdout
    assert not OP_LINE.search(run.stdout) and "root:/etc/" not in run.stdout
    assert run.stderr == ""  # no terminal: no progress bars


def test_verbose_and_dry_run_list_every_file_operation(cli, base, tmp_path):
    out = tmp_path / "pi-lone.img"
    verbose = build(cli, base, out, "--node", "pi-lone", "--profile", "worker-8g", "-v")
    changed = int(rows(verbose.stdout)["files"].split()[0])
    dry = build(cli, base, tmp_path / "dry.img", "--node", "pi-lone", "--profile", "worker-8g", "--dry-run")
    listed = json.loads(build(cli, base, tmp_path / "dry.img", "--node", "pi-lone", "--profile", "worker-8g",
                              "--dry-run", "--json").stdout)["ops"]

    assert len(OP_LINE.findall(verbose.stdout)) == changed
    assert "root:/etc/pi-image/node.json" in verbose.stdout
    assert all(f"{op['fs']}:{op['path']}" in dry.stdout for op in listed)
    assert dry.stdout.endswith("\n# nothing was written: run the same command without --dry-run to build it\n")
    assert not (tmp_path / "dry.img").exists()


def test_a_cluster_node_summary_names_its_cluster_address_and_secrets(cli, base, lab, tmp_path):
    out = tmp_path / "pi-worker1.img"
    run = build(cli, base, out, "--cluster", lab, "--node", "pi-worker1")
    summary = rows(run.stdout)

    assert summary["node"] == "pi-worker1: worker, profile worker-8g"
    assert summary["cluster"] == str(lab)
    assert summary["address"] == "192.168.6.21/24 on eth0, gateway 192.168.6.1, dns 192.168.6.1, 1.1.1.1"
    assert summary["private"].startswith("0600, readable by you only") and out.stat().st_mode & 0o777 == 0o600
    assert f"`pi-image token-server --cluster {lab}`" in run.stdout  # no master in this run: where tokens come from


def test_all_ends_with_a_table_of_every_node_and_its_image(cli, base, lab, tmp_path):
    out = tmp_path / "images"
    run = build(cli, base, out, "--cluster", lab, "--all")
    lines = run.stdout.splitlines()
    table = lines[lines.index("Built 3 images:") + 1:]

    assert [f"Built {out / name}.img (2.0 GiB)" for name in ("pi-worker1", "pi-worker2", "pi-master1")] == \
        [line for line in lines if line.startswith("Built ") and line.endswith(")")]
    assert table[0].split() == ["NODE", "ROLE", "ADDRESS", "BASE", "IMAGE", "SIZE"]
    assert [row.split() for row in table[1:4]] == [
        ["pi-worker1", "worker", "192.168.6.21/24", base.name, str(out / "pi-worker1.img"), "2.0", "GiB"],
        ["pi-worker2", "worker", "DHCP", base.name, str(out / "pi-worker2.img"), "2.0", "GiB"],
        ["pi-master1", "control-plane", "192.168.6.10/24", base.name, str(out / "pi-master1.img"), "2.0", "GiB"]]
    assert "  pi-image flash IMAGE /dev/sdX" in run.stdout
    assert "or: sudo bmaptool copy --nobmap IMAGE /dev/sdX" in run.stdout
    assert f"`pi-image cluster kubeconfig {lab}`" in run.stdout
    assert not OP_LINE.search(run.stdout)


def test_json_is_the_manifest_and_nothing_else(cli, base, lab, tmp_path):
    out = tmp_path / "pi-worker2.img"
    run = build(cli, base, out, "--cluster", lab, "--node", "pi-worker2", "--json")
    plans = json.loads(build(cli, base, tmp_path / "all", "--cluster", lab, "--all", "--dry-run", "--json").stdout)

    assert json.loads(run.stdout) == json.loads(out.with_name(out.name + ".json").read_text())
    assert "Built" not in run.stdout and "Next:" not in run.stdout and run.stderr == ""
    assert sorted(plan["node"] for plan in plans) == sorted(NODES)


def test_compression_shows_its_progress_on_a_terminal_and_nowhere_else(cli, base, tmp_path):
    """gzip of the 2 GiB sample takes seconds on any machine: long enough for the bar (drawn after one second)."""
    shown_out, hidden_out = tmp_path / "shown.img.gz", tmp_path / "hidden.img.zst"
    run, terminal = on_terminal(cli, "build", "--base", base, "--output", shown_out, "--kube-key", KUBE_KEY,
                                "--profile", "worker-8g")
    hidden = build(cli, base, hidden_out, "--profile", "worker-8g")

    assert run.returncode == 0, terminal
    assert "shown.img.gz: compressing  [" in terminal and "100%  2.0 GiB of 2.0 GiB, " in terminal
    assert "/s, in " in terminal
    assert "compressing" not in run.stdout and rows(run.stdout)["node"].startswith("worker-8g: worker")
    assert f"gzip -dc {shown_out} | sudo dd of=/dev/sdX bs=4M conv=fsync" in run.stdout
    assert hidden.stderr == "" and "compressing" not in hidden.stdout
    assert f"zstd -dc {hidden_out} | sudo dd of=/dev/sdX" in hidden.stdout
    tool("gzip", "-t", shown_out)
    raw = tmp_path / "hidden.img"
    tool("zstd", "-q", "-d", hidden_out, "-o", raw)  # streamed through zstd: still the whole, customized image
    assert filesystems(raw)["root"].text("/etc/hostname") == "worker-8g\n"
    assert json.loads(hidden_out.with_name(hidden_out.name + ".json").read_text())["output"]["sha256"] == \
        sha256_of(hidden_out)


def test_profiles_keys_documents_every_schema_key_and_field(cli):
    expected = [key for name, spec in SCHEMA.items() for key in [name, *(f"{name}.{f}" for f in spec.fields or {})]]
    text = succeeded(cli("profiles", "--keys")).stdout
    documented = json.loads(succeeded(cli("profiles", "--keys", "--json")).stdout)
    helped = succeeded(cli("profiles", "--help")).stdout

    assert [row["key"] for row in documented] == expected
    assert all(row["meaning"] and row["type"] for row in documented)
    assert {row["key"]: row["default"] for row in documented if "." not in row["key"]} == \
        {name: spec.default for name, spec in SCHEMA.items()}
    assert [line.split()[0] for line in text.splitlines()[1:] if line and not line.startswith(" ")][:len(expected)] \
        == expected
    assert next(row for row in documented if row["key"] == "wifi.country")["required"] is True
    assert next(row for row in documented if row["key"] == "wifi.psk")["secret"] is True
    assert "--keys" in helped and "pi-image profiles --keys" in helped
