"""The recorder side keeps its layers: use cases import core and ports only; its CLI modules import no adapter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import audit

PACKAGE = Path(audit.__file__).parent
RECORDER_CLI = ("record", "watch", "trust", "backfill", "report", "init", "packages")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (deferred imports inside functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def outward(modules: set[str], *layers: str) -> list[str]:
    return sorted(m for m in modules if any(m == layer or m.startswith(f"{layer}.") for layer in layers))


@pytest.mark.parametrize("path", sorted((PACKAGE / "app").glob("*.py")), ids=lambda p: p.name)
def test_a_use_case_imports_no_adapter_no_wiring_and_no_face(path: Path) -> None:
    modules = imported_modules(path)
    assert outward(modules, "audit.adapters", "audit.bootstrap", "audit.cli", "audit.service", "handler") == []


@pytest.mark.parametrize("name", RECORDER_CLI)
def test_a_recorder_command_imports_no_adapter(name: str) -> None:
    assert outward(imported_modules(PACKAGE / "cli" / f"{name}.py"), "audit.adapters") == []


def test_the_trust_file_formats_know_no_port_and_no_store() -> None:
    modules = imported_modules(PACKAGE / "trust_formats.py")
    assert outward(modules, "audit.ports", "audit.adapters", "audit.app") == []
