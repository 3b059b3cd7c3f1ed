"""The architecture as docs/architecture.md states it, checked against the code: the import rules between the
packages of gateway/ and sandbox/ (its tables are read from the page), the trust boundary in imports, and no
import cycle anywhere in gateway/ or sandbox/ (function-level and type-checking imports included)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.settings import ROOT

PAGE = ROOT / "docs" / "architecture.md"
TREES = ("gateway", "sandbox", "pgw_client")


@dataclass(frozen=True)
class Import:
    """One import statement's target, resolved to a module of the tree (or left as written outside it)."""

    importer: str
    target: str
    line: int


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for tree in TREES:
        for path in (ROOT / tree).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str:
    """The module of the tree `name` names (a module, or a name inside one), or `name` itself outside it."""
    probe = name
    while probe:
        if probe in MODULES:
            return probe
        probe = probe.rpartition(".")[0]
    return name


def _imports(module: str) -> Iterator[Import]:
    """Every import in `module`: top-level, inside functions and under `if TYPE_CHECKING`."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, _resolve(alias.name), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            targets = {_resolve(f"{base}.{alias.name}") for alias in node.names}
            for target in targets:
                yield Import(module, target, node.lineno)


GRAPH: dict[str, list[Import]] = {m: [i for i in _imports(m) if i.target != m] for m in MODULES}


# -- the page's tables -------------------------------------------------------------------------------------------


def _table(name: str) -> list[list[str]]:
    """The rows of the table between `<!-- name -->` and `<!-- /name -->` on the page, as cells (no header)."""
    text = PAGE.read_text()
    match = re.search(rf"<!-- {name} -->\n(.*?)<!-- /{name} -->", text, re.S)
    assert match, f"docs/architecture.md has no <!-- {name} --> table"
    rows = [line for line in match.group(1).splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def _names(cell: str) -> list[str]:
    return re.findall(r"`([A-Za-z_][\w.]*)`", cell)


RULES: dict[str, set[str]] = {_names(row[0])[0]: set(_names(row[1])) for row in _table("import-rules")}
BOUNDARY: set[str] = {name for row in _table("boundary") for name in _names(row[0])}
EXCEPTIONS: set[tuple[str, str]] = {(_names(row[0])[0], _names(row[1])[0]) for row in _table("exceptions")}
KNOWN_CYCLES: set[frozenset[str]] = {frozenset(_names(row[0])) for row in _table("cycles")}


def _package(module: str) -> str | None:
    """The row of the rules table a module belongs to: the longest package name that is it or contains it."""
    rows = [p for p in RULES if module == p or module.startswith(p + ".")]
    return max(rows, key=len) if rows else None


def _within(module: str, names: set[str]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


# -- the tests ---------------------------------------------------------------------------------------------------


def test_every_module_has_a_rule() -> None:
    """Every module of gateway/ and sandbox/ belongs to a row of the page's rules (a new package needs one),
    and every row names a package that exists."""
    missing = sorted(m for m, imports in GRAPH.items()
                     if _package(m) is None and (imports or MODULES[m].name != "__init__.py"))
    assert not missing, f"no row in docs/architecture.md's import rules for {missing}"
    unknown = sorted(p for p in RULES if p not in MODULES and p != "gateway.console")
    assert not unknown, f"docs/architecture.md has rules for packages that do not exist: {unknown}"


def _allowed(module: str, target: str) -> bool | None:
    """Whether `module` may import `target` by the page's rules (None: not the rules' concern, e.g. the standard
    library, third-party packages, the generated stubs, or a package importing itself)."""
    own, tree = _package(module), target.split(".")[0]
    if own is None or target in TREES:
        return None
    if tree in TREES:
        if module.split(".")[0] != tree:  # across the boundary
            if tree == "sandbox":  # only the gateway crosses into the sandbox, and only to the boundary
                return module.split(".")[0] == "gateway" and _within(target, BOUNDARY)
            return tree == "pgw_client" and _within(target, RULES[own])
        other = _package(target)
        return None if other == own else other is not None and other in RULES[own]
    if tree in ("examples", "tests"):
        return _within(target, RULES[own])
    return None


def _violations() -> list[tuple[str, str, int]]:
    return sorted((module, imp.target, imp.line) for module, imports in GRAPH.items() for imp in imports
                  if _allowed(module, imp.target) is False and (module, imp.target) not in EXCEPTIONS)


def test_imports_follow_the_rules() -> None:
    """A package imports only itself and what its row allows; the gateway imports only the sandbox's boundary
    packages; the sandbox never imports the gateway; neither imports examples/ or tests/ unless its row says so."""
    bad = _violations()
    assert not bad, "imports that break docs/architecture.md's rules (module -> imported, line):\n" + "\n".join(
        f"  {m} -> {t} (line {line})" for m, t, line in bad)


def test_every_listed_exception_still_exists() -> None:
    """An exception the page lists is an import that breaks a rule today; once it is gone, so is its row."""
    present = {(i.importer, i.target) for imports in GRAPH.values() for i in imports}
    stale = sorted(EXCEPTIONS - present)
    assert not stale, f"remove these rows from docs/architecture.md's exceptions: {stale}"


def _cycles() -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    graph = {m: sorted({i.target for i in imports if i.target in MODULES}) for m, imports in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(graph[node]):
                work.append((node, i + 1))
                nxt = graph[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def test_no_import_cycles() -> None:
    """No two modules of gateway/ or sandbox/ import each other, directly or through others (imports inside
    functions and under TYPE_CHECKING count: they hide a cycle, they do not remove it)."""
    cycles = [sorted(c) for c in _cycles() if c not in KNOWN_CYCLES]
    assert not cycles, f"import cycles: {cycles}"
    stale = sorted(sorted(c) for c in KNOWN_CYCLES - set(_cycles()))
    assert not stale, f"remove these rows from docs/architecture.md's cycles: {stale}"


@pytest.mark.parametrize("importer, imported", [("gateway.rpc.server", "gateway.cli.main"),
                                                ("gateway.products.query.service", "gateway.rpc.interceptor"),
                                                ("gateway.storage.state", "gateway.budgets.ledger"),
                                                ("sandbox.engine.engine", "gateway.errors"),
                                                ("gateway.products.query.service", "sandbox.engine.engine"),
                                                ("sandbox.plans.bounds", "sandbox.engine.guard"),
                                                ("pgw_client.client", "gateway.errors"),
                                                ("pgw_client.client", "sandbox.protocol.messages"),
                                                ("gateway.rpc.server", "pgw_client.client")])
def test_the_rules_refuse_what_they_forbid(importer: str, imported: str) -> None:
    """The checker itself: an import upwards, out of the sandbox, past the boundary, from the client library into
    the gateway or the sandbox, or of the client library by a package whose row does not name it is a violation."""
    assert _allowed(importer, imported) is False
