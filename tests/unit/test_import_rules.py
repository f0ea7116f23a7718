"""The import rules of ``src/orchestrator`` (decision 0017), checked on every ``make test``.

* **No import cycles.** Every import counts, also one inside a function (a lazy import
  hides a cycle, it does not remove it); only ``if TYPE_CHECKING:`` blocks are exempt.
* **Only ``store/`` talks SQL.** No module outside ``orchestrator.store`` imports
  SQLAlchemy or Alembic (a function-level import counts too).
* **Only the composition roots import concrete adapters** (the forges, trackers and chat
  channel that speak a vendor's API); everything else sees their base classes.
* **No cycles between packages** (decision 0021): the subsystems (``kernel/``,
  ``lifecycle/``, ``engine/``, ``maintenance/``...) and the top-level modules form a
  layered graph, so each package can be read with only what is below it in mind.

Each rule is also run on a small planted package, where it must fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest

SRC: Final = Path(__file__).resolve().parents[2] / "src"
PACKAGE: Final = "orchestrator"
SQL_PACKAGES: Final = ("sqlalchemy", "alembic")
STORE: Final = "orchestrator.store"
ADAPTERS: Final = frozenset(
    {
        "orchestrator.forges.gitea",
        "orchestrator.forges.github",
        "orchestrator.forges.local",
        "orchestrator.trackers.github",
        "orchestrator.trackers.local",
        "orchestrator.trackers.plane",
        "orchestrator.integrations.telegram",
    }
)
COMPOSITION_ROOTS: Final = frozenset({"orchestrator.wiring", "orchestrator.integrations"})


@dataclass
class ImportGraph:
    """Which modules of a package import which (ours), and which third-party roots."""

    modules: dict[str, Path] = field(default_factory=dict)
    imports: dict[str, set[str]] = field(default_factory=dict)
    external: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, src: Path, package: str) -> ImportGraph:
        graph = cls()
        for path in sorted((src / package).rglob("*.py")):
            parts = list(path.relative_to(src).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            graph.modules[".".join(parts)] = path
        for name, path in graph.modules.items():
            ours, theirs = graph._imports_of(name, path, package)
            graph.imports[name] = ours - {name}
            graph.external[name] = theirs
        return graph

    def _resolve(self, dotted: str) -> str | None:
        """The most specific module of ours that ``dotted`` names (or lies in)."""
        while dotted and dotted not in self.modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def _imports_of(self, name: str, path: Path, package: str) -> tuple[set[str], set[str]]:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        exempt = {id(node) for block in _type_checking_blocks(tree) for node in ast.walk(block)}
        ours: set[str] = set()
        theirs: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in exempt:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, path, node)
                targets = [f"{base}.{alias.name}" for alias in node.names] or [base]
                targets = [t if self._resolve(t) != self._resolve(base) else base for t in targets]
            for target in targets:
                if target == package or target.startswith(f"{package}."):
                    resolved = self._resolve(target)
                    if resolved is not None:
                        ours.add(resolved)
                else:
                    theirs.add(target.partition(".")[0])
        return ours, theirs

    def cycles(self) -> list[list[str]]:
        """Every strongly connected set of two or more modules (Tarjan)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []

        def visit(module: str) -> None:
            index[module] = low[module] = len(index)
            stack.append(module)
            on_stack.add(module)
            for target in sorted(self.imports[module]):
                if target not in index:
                    visit(target)
                    low[module] = min(low[module], low[target])
                elif target in on_stack:
                    low[module] = min(low[module], index[target])
            if low[module] == index[module]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

        for module in sorted(self.modules):
            if module not in index:
                visit(module)
        return found

    def packages(self, package: str) -> ImportGraph:
        """The same graph one level up: a node per subpackage of ``package`` (everything in
        it) and per top-level module; the imports between different nodes."""

        def node(module: str) -> str:
            return ".".join(module.split(".")[:2])

        graph = ImportGraph()
        for module in self.modules:
            if module != package:
                graph.modules.setdefault(node(module), self.modules[module])
        for module, targets in self.imports.items():
            if module == package:
                continue
            outside = {node(t) for t in targets if t != package} - {node(module)}
            graph.imports.setdefault(node(module), set()).update(outside)
        return graph

    def sql_outside(self, store: str) -> set[str]:
        return {
            module
            for module, roots in self.external.items()
            if roots & set(SQL_PACKAGES) and not _within(module, store)
        }

    def adapter_imports(
        self, adapters: Iterable[str], roots: Iterable[str]
    ) -> list[tuple[str, str]]:
        """(importer, adapter) pairs where a module other than a composition root (or the
        adapter's own package mates) imports a concrete adapter."""
        adapters, roots = set(adapters), set(roots)
        return sorted(
            (module, target)
            for module, targets in self.imports.items()
            for target in targets & adapters
            if module not in roots and module.rpartition(".")[0] != target.rpartition(".")[0]
        )


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def _absolute(name: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".")
    if path.name != "__init__.py":
        base.pop()
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _type_checking_blocks(tree: ast.AST) -> list[ast.If]:
    def names_type_checking(test: ast.expr) -> bool:
        return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )

    return [n for n in ast.walk(tree) if isinstance(n, ast.If) and names_type_checking(n.test)]


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return ImportGraph.of(SRC, PACKAGE)


def test_the_graph_sees_the_whole_package(graph: ImportGraph) -> None:
    assert {"orchestrator.engine.core", "orchestrator.store.store", "orchestrator.kernel"} <= set(
        graph.modules
    )
    assert "orchestrator.store" in graph.imports["orchestrator.engine.core"]
    assert "sqlalchemy" in graph.external["orchestrator.store.store"]


def test_no_import_cycles(graph: ImportGraph) -> None:
    assert graph.cycles() == [], "import cycles in src/ (break them; see decision 0017)"


def test_no_cycles_between_packages(graph: ImportGraph) -> None:
    packages = graph.packages(PACKAGE)
    assert {"orchestrator.lifecycle", "orchestrator.engine", "orchestrator.settings"} <= set(
        packages.modules
    )
    assert "orchestrator.lifecycle" in packages.imports["orchestrator.engine"]
    assert packages.cycles() == [], "packages that import each other (see decision 0021)"


def test_only_store_imports_sqlalchemy(graph: ImportGraph) -> None:
    assert graph.sql_outside(STORE) == set(), "move these queries into store/"


def test_only_the_composition_roots_import_concrete_adapters(graph: ImportGraph) -> None:
    assert set(graph.modules) >= ADAPTERS | COMPOSITION_ROOTS
    assert graph.adapter_imports(ADAPTERS, COMPOSITION_ROOTS) == []


# --- each rule fails on a planted violation -------------------------------------------
def _plant(tmp_path: Path, files: dict[str, str]) -> ImportGraph:
    for relative, text in {"pkg/__init__.py": "", **files}.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return ImportGraph.of(tmp_path, "pkg")


def test_a_planted_cycle_through_a_lazy_import_is_found(tmp_path: Path) -> None:
    graph = _plant(
        tmp_path,
        {
            "pkg/a.py": "from pkg.b import thing\n",
            "pkg/b.py": "def thing():\n    from pkg import a\n    return a\n",
            "pkg/c.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg import a\n",
            "pkg/d.py": "from . import c\n",
        },
    )
    assert graph.cycles() == [["pkg.a", "pkg.b"]]


def test_a_planted_cycle_between_packages_is_found(tmp_path: Path) -> None:
    graph = _plant(
        tmp_path,
        {
            "pkg/engine/__init__.py": "",
            "pkg/engine/core.py": "from pkg.lifecycle.moves import advance\n",
            "pkg/lifecycle/__init__.py": "",
            "pkg/lifecycle/moves.py": "from pkg import settings\n",
            "pkg/lifecycle/later.py": "def f():\n    from pkg.engine import core\n",
            "pkg/settings.py": "import json\n",
        },
    )
    assert graph.cycles() == []
    assert graph.packages("pkg").cycles() == [["pkg.engine", "pkg.lifecycle"]]


def test_a_planted_sql_import_outside_the_store_is_found(tmp_path: Path) -> None:
    graph = _plant(
        tmp_path,
        {
            "pkg/store/__init__.py": "import sqlalchemy\n",
            "pkg/service.py": "from sqlalchemy import select\n",
            "pkg/migrate.py": "def up():\n    import alembic.op\n",
            "pkg/clean.py": "import json\n",
        },
    )
    assert graph.sql_outside("pkg.store") == {"pkg.service", "pkg.migrate"}


def test_a_planted_adapter_import_outside_the_root_is_found(tmp_path: Path) -> None:
    graph = _plant(
        tmp_path,
        {
            "pkg/forges/__init__.py": "",
            "pkg/forges/base.py": "",
            "pkg/forges/github.py": "from pkg.forges import base\n",
            "pkg/forges/gitea.py": "from pkg.forges.github import x\n",
            "pkg/wiring.py": "from pkg.forges.github import Forge\n",
            "pkg/engine.py": "from pkg.forges import github\n",
        },
    )
    found = graph.adapter_imports({"pkg.forges.github"}, {"pkg.wiring"})
    assert found == [("pkg.engine", "pkg.forges.github")]
