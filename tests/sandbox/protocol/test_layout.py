"""The protocol package's shape: small modules that import each other in one direction only."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "sandbox" / "protocol"


def _imports(path: Path) -> set[str]:
    """The `sandbox.*` modules `path` imports, at any level (function-local imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sandbox."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sandbox.")}
    return found


def test_no_import_cycle_in_the_protocol_package() -> None:
    """base <- plan <- catalog/release <- ... <- messages: the import graph of the package is a DAG."""
    graph = {f"sandbox.protocol.{p.stem}": {m for m in _imports(p) if m.startswith("sandbox.protocol.")}
             for p in PACKAGE.glob("*.py")}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle in sandbox.protocol: {exc.args[1]}") from exc
    assert order.index("sandbox.protocol.base") < order.index("sandbox.protocol.messages")


def test_the_wire_layer_does_not_import_the_messages() -> None:
    """Frames and records know nothing of the registry: only `messages` assembles the closed set."""
    for name in ("base", "plan", "catalog", "release", "models", "verification", "owner", "wire"):
        assert "sandbox.protocol.messages" not in _imports(PACKAGE / f"{name}.py"), name


def test_modules_are_small() -> None:
    """No protocol module exceeds 600 lines."""
    for path in PACKAGE.glob("*.py"):
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 600, path.name
