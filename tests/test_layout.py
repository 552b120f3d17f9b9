"""The direction of dependencies between the packages (README "Layout"), read from every
import statement in the source, lazy ones inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("model", "schedules", "rpc", "pipeline")
# What each top-level package may import of the others.
ALLOWED = {"model": set(), "rpc": set(), "schedules": {"rpc"}, "pipeline": {"model", "schedules", "rpc"}}
# pipeline's stages, highest first: a stage imports only stages after it in this list.
STAGES = ("cli", "bench", "evaluate", "tune", "deploy", "compile", "common")
PEERS = {frozenset({"bench", "evaluate"})}  # side by side: neither imports the other


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_top_level_packages_depend_one_way() -> None:
    wrong = []
    for package in TOP:
        for path in sources(package):
            used = {name.split(".")[0] for name in imports(path)} & set(TOP) - {package}
            wrong += [f"{path.relative_to(ROOT)} imports {u}" for u in sorted(used - ALLOWED[package])]
    assert not wrong, wrong


def test_pipeline_stages_import_only_lower_stages() -> None:
    assert {p.name for p in (ROOT / "pipeline").iterdir() if (p / "__init__.py").is_file()} == set(STAGES)
    wrong = []
    for stage in STAGES:
        for path in sources(f"pipeline/{stage}"):
            for name in imports(path):
                parts = name.split(".")
                if parts[0] != "pipeline" or len(parts) < 2 or parts[1] not in STAGES or parts[1] == stage:
                    continue
                other = parts[1]
                if STAGES.index(other) < STAGES.index(stage) or frozenset({stage, other}) in PEERS:
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, wrong
