"""Migrations create exactly the schema in ``schema.py``, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from orchestrator.store import Store
from orchestrator.store.schema import metadata

HEAD = "0007"  # bump with every new migration


def _unquote(default: str) -> str:
    return re.sub(r"^'(.*)'$", r"\1", re.sub(r"^\((.*)\)$", r"\1", default))


def _sqlite_defaults_differ(
    _context: MigrationContext,
    _inspected_column: sa.Column[Any],
    _metadata_column: sa.Column[Any],
    inspected_default: str | None,
    _metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool | None:
    # Alembic's SQLite comparison unquotes with '(.+)', so a reflected DEFAULT '' never
    # equals the metadata's "": compare the unquoted texts ourselves.
    if inspected_default is None or rendered_metadata_default is None:
        return None  # let Alembic decide
    return _unquote(inspected_default) != _unquote(rendered_metadata_default)


def schema_diff(store: Store, target: sa.MetaData) -> list[Any]:
    """What autogenerate would change to make the database look like ``target``."""
    compare_defaults: object = _sqlite_defaults_differ if store.dialect == "sqlite" else True
    with store.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": compare_defaults}
        )
        return list(compare_metadata(context, target))


def _kinds(diff: Sequence[Any]) -> set[tuple[str, str]]:
    """(operation, column) pairs of a diff, flattening per-column modify groups."""
    flat = [op for entry in diff for op in (entry if isinstance(entry, list) else [entry])]
    return {(op[0], op[3] if op[0].startswith("modify_") else op[3].name) for op in flat}


def test_migrated_database_matches_schema(empty_db_url: str) -> None:
    store = Store.open(empty_db_url)
    try:
        diff = schema_diff(store, metadata)
    finally:
        store.close()

    assert diff == []
    assert set(metadata.tables) == {
        "tasks",
        "jobs",
        "agent_runs",
        "events",
        "instances",
        "transition_lease",
        "effects",
        "outbox",
        "task_cards",
        "webhook_deliveries",
        "api_tokens",
        "inbox",
    }


def test_schema_comparison_sees_drift(db_url: str) -> None:
    # Proves the comparison above can fail: types, defaults and columns are all compared.
    drifted = sa.MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.sorted_tables:
        table.to_metadata(drifted)
    tasks = drifted.tables["tasks"]
    tasks.append_column(sa.Column("priority", sa.Integer, nullable=True))
    tasks.c.description.server_default = sa.DefaultClause("none")
    tasks.c.title.type = sa.String(501)

    store = Store.open(db_url)
    try:
        diff = schema_diff(store, drifted)
    finally:
        store.close()

    assert _kinds(diff) == {
        ("add_column", "priority"),
        ("modify_default", "description"),
        ("modify_type", "title"),
    }


def test_upgrade_from_empty_then_again_is_a_no_op(empty_db_url: str) -> None:
    store = Store.open(empty_db_url, migrate=False)
    try:
        assert store.upgrade() == (None, HEAD)
        assert store.upgrade() == (HEAD, HEAD)
    finally:
        store.close()

    reopened = Store.open(empty_db_url)
    try:
        assert reopened.upgrade() == (HEAD, HEAD)
    finally:
        reopened.close()


def test_opened_store_is_at_head(store: Store) -> None:
    assert store.upgrade() == (HEAD, HEAD)


@pytest.mark.postgres
def test_concurrent_upgrades_migrate_once(pg_empty_database: str) -> None:
    # The advisory lock in Store.upgrade makes the second starter wait, then find head.
    racers = 2
    barrier = threading.Barrier(racers, timeout=10)
    stores = [Store(pg_empty_database) for _ in range(racers)]

    def upgrade(store: Store) -> tuple[str | None, str | None]:
        barrier.wait()
        return store.upgrade()

    try:
        with ThreadPoolExecutor(max_workers=racers) as pool:
            results = list(pool.map(upgrade, stores))
    finally:
        for store in stores:
            store.close()

    assert sorted(results, key=str) == [(HEAD, HEAD), (None, HEAD)]


def test_sqlite_open_waits_for_a_writer_on_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE elsewhere (x INTEGER)")
    release = threading.Timer(0.3, writer.execute, args=("COMMIT",))
    release.start()
    store = Store(f"sqlite:///{path}")
    try:
        assert store.upgrade() == (None, HEAD)
    finally:
        store.close()
        release.join()
        writer.close()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    store = Store.open(f"sqlite:///{path}")
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        store.close()

    # WAL is a property of the file: a plain connection sees it too.
    with closing(sqlite3.connect(path)) as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_sqlite_creates_missing_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "orch.db"
    Store.open(f"sqlite:///{path}").close()
    assert path.exists()
