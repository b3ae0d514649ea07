"""The folders draw the architecture: every import between builder's folders runs down the layers (issue 27), and
the device agent imports nothing from the builder. Read from the source with ast, so a new module is checked too."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILDER = REPO / "builder"
# highest first; a folder may import from folders on later lines only (same line: neither imports the other)
LAYERS = [
    ("cli",),
    ("cards",),
    ("build",),
    ("cluster", "bases"),
    ("plan",),
    ("config",),
    ("targets",),
    ("image",),
    ("samples",),
    ("core",),  # errors, run, progress, outputs, cache, builder/__init__
]
RANK = {folder: rank for rank, folders in enumerate(LAYERS) for folder in folders}


def _folder(module: str) -> str:
    """The layer of `builder.x.y...`: its first folder, or core for a top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (BUILDER / parts[1]).is_dir()) else "core"


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """(imported builder module, line) of every import in `path` (relative ones resolved; a name imported from a
    package counts as its submodule when it is one)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                sub_path = REPO / Path(*sub.split("."))
                target = sub if sub_path.with_suffix(".py").exists() or sub_path.is_dir() else base
                found.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
    return [(name, line) for name, line in found if name == "builder" or name.startswith("builder.")]


def _modules(root: Path) -> list[tuple[Path, str]]:
    return [(path, ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"))
            for path in sorted(root.rglob("*.py"))
            if "data" not in path.relative_to(root).parts and path.name != "__main__.py"]  # the program: above all


def test_every_import_between_builder_folders_runs_down_the_layers() -> None:
    against = []
    for path, module in _modules(BUILDER):
        here = _folder(module)
        for imported, line in _imports(path, module):
            there = _folder(imported)
            if there != here and RANK[there] <= RANK[here]:
                against.append(f"{path.relative_to(REPO)}:{line}: {here} imports {imported} ({there})")
    assert not against, "imports against the layers:\n" + "\n".join(against)


def test_every_builder_folder_has_a_layer() -> None:
    folders = {p.name for p in BUILDER.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(RANK), f"give these folders a layer in LAYERS: {sorted(folders - set(RANK))}"


def test_the_device_agent_imports_nothing_from_the_builder() -> None:
    found = [f"{path.relative_to(REPO)}:{line}" for path, module in _modules(REPO / "firstboot")
             for _, line in _imports(path, module)]
    assert not found, found
