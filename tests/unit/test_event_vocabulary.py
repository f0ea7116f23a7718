"""Every event kind written in ``src/`` comes from one vocabulary (``EventKind``).

An ``add_event`` call's kind must be ``EventKind.<NAME>`` (a name that exists), or a
parameter of the enclosing function (a helper that takes the kind from its caller); and
no string literal outside ``orchestrator/kernel/events.py`` may spell a dotted event kind, so a
helper called with ``"reaper.tier2"`` or a module constant ``X = "job.adopted"`` fails
too. Each rule is shown to fail on a planted violation.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

from orchestrator.kernel.events import EventKind, all_kinds

SRC: Final = Path(__file__).resolve().parents[2] / "src" / "orchestrator"
VOCABULARY: Final = SRC / "kernel" / "events.py"


def _parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    args = function.args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    return {arg.arg for arg in every}


def violations(source: str, where: str = "<planted>") -> list[str]:
    """What in ``source`` breaks the vocabulary rules, one line each."""
    tree = ast.parse(source)
    found: list[str] = []
    known = set(vars(EventKind))
    dotted = {kind for kind in all_kinds() if "." in kind}

    def allowed(kind: ast.expr, parameters: set[str]) -> bool:
        if isinstance(kind, ast.IfExp):  # one of two kinds
            return allowed(kind.body, parameters) and allowed(kind.orelse, parameters)
        return (
            isinstance(kind, ast.Attribute)
            and isinstance(kind.value, ast.Name)
            and kind.value.id == "EventKind"
            and kind.attr in known
        ) or (isinstance(kind, ast.Name) and kind.id in parameters)

    def visit(node: ast.AST, parameters: set[str]) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            parameters = parameters | _parameters(node)
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "add_event" and node.args:
                kind = node.args[0]
                if not allowed(kind, parameters):
                    found.append(f"{where}:{node.lineno}: add_event({ast.unparse(kind)})")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in dotted:
            found.append(f"{where}:{node.lineno}: the literal {node.value!r}")
        for child in ast.iter_child_nodes(node):
            visit(child, parameters)

    visit(tree, set())
    return found


def test_src_writes_only_event_kinds_of_the_vocabulary() -> None:
    found: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        if path == VOCABULARY:
            continue
        found += violations(path.read_text(encoding="utf-8"), str(path.relative_to(SRC)))
    assert found == []


def test_a_planted_literal_kind_fails() -> None:
    planted = 'def f(tx):\n    tx.add_event("job.adopted", actor="x")\n'
    assert violations(planted) == [
        "<planted>:2: add_event('job.adopted')",
        "<planted>:2: the literal 'job.adopted'",
    ]
    new_name = 'def f(tx):\n    tx.add_event("something.new", actor="x")\n'
    assert violations(new_name) == ["<planted>:2: add_event('something.new')"]


def test_a_planted_constant_or_helper_literal_fails() -> None:
    constant = 'ADOPTED = "job.adopted"\ndef f(tx):\n    tx.add_event(ADOPTED, actor="x")\n'
    assert violations(constant) == [
        "<planted>:1: the literal 'job.adopted'",
        "<planted>:3: add_event(ADOPTED)",
    ]
    helper = (
        "def event(tx, kind):\n    tx.add_event(kind, actor='x')\n"
        "def g(tx):\n    event(tx, 'reaper.tier2')\n"
    )
    assert violations(helper) == ["<planted>:4: the literal 'reaper.tier2'"]
    unknown = "def f(tx):\n    tx.add_event(EventKind.NOT_A_KIND, actor='x')\n"
    assert violations(unknown) == ["<planted>:2: add_event(EventKind.NOT_A_KIND)"]


def test_the_vocabulary_has_no_duplicates() -> None:
    names = [name for name in vars(EventKind) if name.isupper()]
    assert len({getattr(EventKind, name) for name in names}) == len(names)
