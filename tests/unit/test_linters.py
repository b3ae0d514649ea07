"""The house stays as it is (issue 27): ruff and mypy find nothing, and no test reaches into a private name — run by
`./dev test`, as mkosi's tests run its linters."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ruff_finds_nothing() -> None:
    proc = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "--output-format", "concise", "."], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]


def test_mypy_finds_nothing() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", "/dev/null"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]


def test_no_test_imports_a_private_name_of_the_builder() -> None:
    found = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("builder", "firstboot")):
                found += [f"{path.relative_to(REPO)}:{node.lineno}: {alias.name}" for alias in node.names
                          if alias.name.startswith("_")]
    assert not found, "tests use what users and other modules use:\n" + "\n".join(found)


def test_no_test_module_imports_another() -> None:
    tests = {path.stem for path in (REPO / "tests").rglob("test_*.py")}
    found = [f"{path.relative_to(REPO)}:{node.lineno}: {node.module}"
             for path in sorted((REPO / "tests").rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.ImportFrom) and node.module in tests]
    assert not found, "shared helpers live in conftest.py or a helper module:\n" + "\n".join(found)
