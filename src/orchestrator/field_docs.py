"""What each setting means, read from where it is written: the settings models.

A field's meaning is its ``Field(description=...)`` when it has one, else the ``#``
comment block right above it in the model's source (the house style of
``settings.py``). Fields declared on consecutive lines share the comment above the
first (``max_running_jobs`` / ``max_running_jobs_per_repo``). A ``# --- name ---``
line starts a section and describes no field.

``orch config show`` and the generated reference (``orch config reference``, kept in
``docs/settings.md``) both read these, so a comment is all a new setting needs.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

from pydantic import BaseModel

__all__ = ["FieldDoc", "field_docs", "parse_field_comments"]

_FIELD = re.compile(r"^    ([A-Za-z_][A-Za-z0-9_]*)\s*:")
_COMMENT = re.compile(r"^    #\s?(.*)$")
_SECTION = re.compile(r"^    #\s*---\s*(.*?)\s*-*\s*$")


@dataclass(frozen=True)
class FieldDoc:
    """One field of a settings model: its name, its meaning and its section."""

    name: str
    description: str
    section: str


def _source_comments(model: type[BaseModel]) -> dict[str, tuple[str, str]]:
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):  # no source shipped: descriptions stay empty
        return {}
    return parse_field_comments(source)


def parse_field_comments(source: str) -> dict[str, tuple[str, str]]:
    """Field name -> (comment above it, section), from a class's source (its first line
    is the ``class`` statement; the body is indented four spaces)."""
    found: dict[str, tuple[str, str]] = {}
    pending: list[str] = []
    shared = ""  # the comment of the field on the line group above, if contiguous
    section = ""
    in_field = False
    for line in source.splitlines()[1:]:
        if not line.strip():
            pending, shared, in_field = [], "", False
            continue
        header = _SECTION.match(line)
        if header:
            section, pending, shared, in_field = header.group(1), [], "", False
            continue
        comment = _COMMENT.match(line)
        if comment:
            pending.append(comment.group(1).strip())
            in_field = False
            continue
        field = _FIELD.match(line)
        if field:
            if pending:
                shared = " ".join(pending)
            elif not in_field:
                shared = ""
            found[field.group(1)] = (shared, section)
            pending, in_field = [], True
            continue
        continuation = line.startswith("     ") or line.lstrip().startswith((")", "]", "}"))
        if not continuation:  # a method or a decorator ends the group
            pending, shared, in_field = [], "", False
    return found


def field_docs(model: type[BaseModel]) -> list[FieldDoc]:
    """Every field of ``model`` in declaration order, with its meaning."""
    comments = _source_comments(model)
    docs = []
    for name, info in model.model_fields.items():
        comment, section = comments.get(name, ("", ""))
        docs.append(FieldDoc(name, info.description or comment, section))
    return docs
