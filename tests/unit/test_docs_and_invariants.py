"""Docs generated from code stay in sync; structural rules of the code hold."""

import ast
import re
from pathlib import Path

from orchestrator.cli.diagram import render_stages_doc

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "orchestrator"


def test_stage_diagram_in_docs_is_generated_from_stage_transitions() -> None:
    committed = (ROOT / "docs" / "stages.md").read_text(encoding="utf-8")
    assert committed == render_stages_doc(), (
        "docs/stages.md is stale: run `python -m orchestrator.cli.diagram > docs/stages.md`"
    )


def _writes_stage_column(node: ast.AST) -> bool:
    """A call like `<table>.update()....values(stage=...)` or `.values(**{"stage": ...})`."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return False
    if node.func.attr != "values":
        return False
    return any(keyword.arg == "stage" for keyword in node.keywords)


def _updates_tasks(function: ast.AST) -> bool:
    """The function builds `tasks.update()` (SQLAlchemy) or raw `UPDATE tasks` SQL."""
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "update"
            and isinstance(node.value, ast.Name)
            and node.value.id == "tasks"
        ):
            return True
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "update tasks" in node.value.lower()
        ):
            return True
    return False


def _functions_writing_stage() -> list[str]:
    found = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef) or not _updates_tasks(function):
                continue
            for node in ast.walk(function):
                stage_key = isinstance(node, ast.Dict) and any(
                    isinstance(key, ast.Constant) and key.value == "stage" for key in node.keys
                )
                raw_sql = (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and "stage" in node.value.lower()
                    and "update tasks" in node.value.lower()
                )
                if _writes_stage_column(node) or stage_key or raw_sql:
                    found.append(f"{path.relative_to(SRC)}:{function.name}")
    return sorted(set(found))


def test_only_update_task_stage_cas_writes_the_stage() -> None:
    # The one way to change a task's stage is the compare-and-swap in the store.
    assert _functions_writing_stage() == ["store/store.py:update_task_stage_cas"]


def test_the_scan_would_notice_a_second_writer() -> None:
    # Guard the guard: the detector recognises a bypassing write.
    bad = ast.parse("def bypass(conn):\n    conn.execute(tasks.update().values(stage='done'))\n")
    assert any(_writes_stage_column(node) for node in ast.walk(bad))


# SQL text that sets tasks.stage: in its SET list, before any WHERE.
_SETS_STAGE = re.compile(r"update\s+tasks\s+set\s(?:(?!\bwhere\b).)*\bstage\s*=", re.I | re.S)


def _sql_texts(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    """Every string in the tree, an f-string with ``{}`` for each of its values."""
    texts: list[tuple[ast.AST, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            texts.append((node, node.value))
        elif isinstance(node, ast.JoinedStr):
            parts = [
                value.value if isinstance(value, ast.Constant) else "{}" for value in node.values
            ]
            texts.append((node, "".join(str(part) for part in parts)))
    return texts


def _raw_sql_setting_stage(source: str) -> list[str]:
    """The functions (or ``<module>``) holding SQL text that sets the stage column."""
    tree = ast.parse(source)
    owner: dict[ast.AST, str] = {}
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef):
            for node in ast.walk(function):
                owner.setdefault(node, function.name)
    return sorted(
        {owner.get(node, "<module>") for node, text in _sql_texts(tree) if _SETS_STAGE.search(text)}
    )


def test_no_sql_text_sets_the_stage() -> None:
    # The compare-and-swap names its columns from its values (the dict with "stage"
    # that the test above finds); no SQL text anywhere, a module constant included,
    # sets the stage itself.
    found = []
    for path in SRC.rglob("*.py"):
        for where in _raw_sql_setting_stage(path.read_text(encoding="utf-8")):
            found.append(f"{path.relative_to(SRC)}:{where}")
    assert found == []


def test_the_sql_scan_would_notice_a_second_writer() -> None:
    bypass = "SET_DONE = \"UPDATE tasks SET updated_at = 1, stage = 'done' WHERE id = 1\"\n"
    assert _raw_sql_setting_stage(bypass) == ["<module>"]
    in_function = 'def f(c):\n    c.execute(f"update tasks set {x}, stage = :s where id = 1")\n'
    assert _raw_sql_setting_stage(in_function) == ["f"]
    # A stage in the WHERE clause only compares.
    assert _raw_sql_setting_stage('Q = "UPDATE tasks SET a = 1 WHERE stage = :s"\n') == []


def test_kernel_does_no_io() -> None:
    # The kernel is pure: no database, subprocess, filesystem or clock imports.
    forbidden = {"sqlalchemy", "subprocess", "os", "pathlib", "time", "datetime", "httpx"}
    for path in (SRC / "kernel").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


def test_only_the_composition_roots_import_concrete_adapters() -> None:
    # The kernel never imports the store, the engine or any adapter.
    for path in (SRC / "kernel").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        for module in (
            "orchestrator.store",
            "orchestrator.engine.core",
            "orchestrator.workspace.git",
        ):
            assert module not in text, f"kernel/{path.name} imports {module}"


def _missing_references(doc: str) -> list[str]:
    """Test names and ``tests/``/``bench/`` paths named in ``doc`` that do not exist."""
    sources = "\n".join(path.read_text() for path in (ROOT / "tests").rglob("test_*.py"))
    defined = set(re.findall(r"^def (test_\w+)\(", sources, re.MULTILINE))
    missing = [name for name in re.findall(r"\b(test_\w+)\b(?!\.py)", doc) if name not in defined]
    paths = re.findall(r"\b((?:tests|bench)/[\w/]+\.py)", doc)
    missing += [path for path in paths if not (ROOT / path).exists()]
    return sorted(set(missing))


def test_reliability_doc_names_existing_tests() -> None:
    # Every failure class in docs/reliability.md names the test that proves it.
    assert _missing_references((ROOT / "docs" / "reliability.md").read_text()) == []


def test_the_reliability_check_would_notice_a_renamed_test() -> None:
    doc = "`test_a_resumed_zombie_owner_is_fenced`, `test_no_such_thing`, `tests/gone.py`"
    assert _missing_references(doc) == ["test_no_such_thing", "tests/gone.py"]
