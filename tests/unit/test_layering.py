"""The layers hold: core -> nothing outward (not even the ports); use cases (audit.app) -> core + ports;
adapters -> core + ports; wiring (audit.bootstrap) -> all; faces (audit.cli, handler, receiver) -> use cases +
wiring, never an adapter.

Every import of every module under src/ counts, also those inside functions and under TYPE_CHECKING: a deferred
import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

FACES = ("audit.cli", "audit.__main__", "handler", "receiver")
WIRING = "audit.bootstrap"
PORTS = "audit.ports"
USE_CASES = "audit.app"
ADAPTERS = "audit.adapters"

#: Imports that break a rule, each with its reason. Empty: the list only ever shrinks (a test below drops
#: entries the code no longer needs); the rules themselves are never relaxed.
ALLOWED: dict[str, set[str]] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports; `from audit import bootstrap` counts as audit.bootstrap."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if is_module(f"{node.module}.{a.name}"))
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer(module: str) -> str:
    if any(within(module, face) for face in FACES):
        return "face"
    if module == WIRING:
        return "wiring"
    if module == PORTS:
        return "ports"
    if within(module, USE_CASES):
        return "use case"
    if within(module, ADAPTERS):
        return "adapter"
    return "core"


#: What each layer must not import.
FORBIDDEN = {
    "core": (PORTS, USE_CASES, ADAPTERS, "audit.cli", WIRING),
    "ports": (USE_CASES, ADAPTERS, "audit.cli", WIRING),
    "use case": (ADAPTERS, "audit.cli", WIRING),
    "adapter": (USE_CASES, "audit.cli", WIRING),
    "face": (ADAPTERS,),
}

MODULES = sorted(SRC.rglob("*.py"))


def violations(path: Path) -> list[str]:
    module = module_name(path)
    forbidden = FORBIDDEN.get(layer(module), ())
    allowed = ALLOWED.get(module, set())
    return sorted(
        imported
        for imported in imported_modules(path)
        if imported not in allowed and any(within(imported, package) for package in forbidden)
    )


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_no_module_imports_against_its_layer(path: Path) -> None:
    assert violations(path) == [], f"{module_name(path)} is a {layer(module_name(path))} module"


def test_the_allow_list_names_only_real_exceptions() -> None:
    """An entry the code no longer needs goes, so the list only ever shrinks."""
    by_name = {module_name(path): path for path in MODULES}
    for module, imports in ALLOWED.items():
        assert module in by_name, f"{module} no longer exists: drop it from ALLOWED"
        stale = imports - imported_modules(by_name[module])
        assert not stale, f"{module} no longer imports {sorted(stale)}: drop them from ALLOWED"


def test_the_rules_catch_a_face_importing_an_adapter(tmp_path: Path) -> None:
    source = tmp_path / "face.py"
    source.write_text("def f():\n    from audit.adapters.sns_alerts import PrintAlerts\n    return PrintAlerts\n")
    assert imported_modules(source) >= {"audit.adapters.sns_alerts"}
    assert layer("audit.cli.run") == "face" and layer("handler") == "face"
    assert layer("audit.app.audit") == "use case" and layer("audit.drift") == "core"
    assert layer("audit.bootstrap") == "wiring" and layer("audit.adapters.registry.client") == "adapter"
