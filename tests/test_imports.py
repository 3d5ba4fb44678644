"""imgflow's modules import one another without a circle, so each one can be read, imported and
tested starting from the modules it names, and none works only because another was loaded first;
tests and bench share the harness (imgflow.harness) and import nothing of each other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from imgflow.harness.paths import ROOT

SOURCES = [ROOT / member / "src" for member in ("core", "api", "worker", "operator", "harness", "cli")]


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def executed(tree: ast.AST) -> list[ast.AST]:
    nodes: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))
    return nodes


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The imgflow modules ``path`` imports when it runs (a function's deferred import included,
    an annotation's ``if TYPE_CHECKING:`` import not: that one never executes);
    ``from package import submodule`` names the submodule."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in executed(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module in known} - {name}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path, src): path for src in SOURCES for path in src.rglob("*.py")}
    return {name: imports_of(path, name, set(files)) for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import path back to its start for each module that lies on a circle."""
    found: list[list[str]] = []
    for start in sorted(graph):
        paths = [[start]]
        seen = {start}
        while paths:
            path = paths.pop()
            for follower in sorted(graph[path[-1]]):
                if follower == start:
                    found.append([*path, start])
                    paths.clear()
                    break
                if follower not in seen:
                    seen.add(follower)
                    paths.append([*path, follower])
    return found


def test_no_module_imports_itself_through_others() -> None:
    graph = import_graph()
    assert "imgflow.core.storage" in graph and "imgflow.api.routes" in graph  # the walk found the code
    assert circles(graph) == []


def named_modules(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names, wherever it stands (a function's, an
    ``if TYPE_CHECKING:`` one too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def crossings(root: Path, folder: str, forbidden: set[str]) -> list[str]:
    """``<file> imports <module>`` for each module of a ``forbidden`` package imported under ``folder``."""
    return sorted(
        f"{path.relative_to(root)} imports {name}"
        for path in (root / folder).rglob("*.py")
        for name in named_modules(path)
        if name.split(".")[0] in forbidden
    )


def shared_not_crossed(root: Path) -> list[str]:
    """What breaks the rule under ``root``: tests importing bench, bench importing tests, the
    harness importing either (or scripts/)."""
    return [
        *crossings(root, "tests", {"bench"}),
        *crossings(root, "bench", {"tests"}),
        *crossings(root, "harness", {"tests", "bench", "scripts"}),
    ]


def test_tests_and_bench_share_the_harness_not_each_other() -> None:
    assert any("imgflow.harness.servers" in named_modules(p) for p in (ROOT / "bench").rglob("*.py"))
    assert shared_not_crossed(ROOT) == []


def route_modules(api_src: Path) -> set[str]:
    """The API's modules that declare HTTP routes: a router of their own, or routes on the app."""
    return {
        module_name(path, api_src)
        for path in api_src.rglob("*.py")
        if re.search(r"\bAPIRouter\(|@app\.(get|post|put|patch|delete)\(", path.read_text())
    }


def test_the_api_keeps_its_routes_in_the_routes_package() -> None:
    found = route_modules(ROOT / "api" / "src")
    assert "imgflow.api.routes.jobs" in found  # the walk found the code
    elsewhere = [name for name in found if not f"{name}.".startswith("imgflow.api.routes.")]
    assert sorted(elsewhere) == []
