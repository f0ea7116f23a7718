"""Whether a database is already at the newest migration, without loading Alembic.

Every command opens the store, and opening it migrates (:meth:`Store.open`); Alembic and
its template engine cost more to import than the rest of ``orch task list`` together.
So the store first reads the database's ``alembic_version`` rows and compares them with
the heads of ``migrations/versions``, found by reading each file's ``revision`` and
``down_revision`` assignments as text. Only when they differ (a new database, an
upgrade) is Alembic loaded. A file whose revision cannot be read makes the heads
unknown, and then Alembic decides as before; a test checks the heads against Alembic's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

__all__ = ["VERSION_TABLE", "migration_heads"]

# Alembic's default, which migrations/env.py keeps.
VERSION_TABLE: Final = "alembic_version"
_REVISION: Final = re.compile(r"^revision\s*(?::[^=]*)?=\s*[\"']([^\"']+)[\"']", re.MULTILINE)
_DOWN_REVISION: Final = re.compile(r"^down_revision\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)
_QUOTED: Final = re.compile(r"[\"']([^\"']+)[\"']")


def migration_heads(versions: Path) -> frozenset[str] | None:
    """The revisions no other revision in ``versions`` builds on; None when a migration
    file does not say its revision and down revision in the usual way."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted(versions.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        revision, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        parents.update(_QUOTED.findall(down.group(1)))
    heads = revisions - parents
    return frozenset(heads) if heads else None
