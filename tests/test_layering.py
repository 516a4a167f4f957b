"""STYLE.md rule 1: protocol cores never import asyncio, socket, time or random."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sipswarm"
FORBIDDEN = {"asyncio", "socket", "time", "random", "uvloop", "threading", "selectors"}
CORE_DIRS = ["sip", "media"]


def _core_files() -> list[Path]:
    return sorted(p for d in CORE_DIRS for p in (SRC / d).rglob("*.py"))


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_files_exist() -> None:
    assert _core_files(), "the sans-I/O cores must contain modules"


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_core_is_sans_io(path: Path) -> None:
    bad = _imported_roots(path) & FORBIDDEN
    assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}; cores take `now` instead"
