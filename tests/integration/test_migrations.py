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
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from orchestrator.kernel.origins import issue_key
from orchestrator.store import Store
from orchestrator.store.deliveries import DeliveryStore
from orchestrator.store.revisions import migration_heads
from orchestrator.store.schema import metadata
from orchestrator.store.store import MIGRATIONS_DIR

HEAD = "0012b"  # bump with every new migration


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
        "spend_days",
        "task_spend",
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


def test_the_heads_read_without_alembic_are_alembics() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))

    heads = set(ScriptDirectory.from_config(config).get_heads())

    assert migration_heads(MIGRATIONS_DIR / "versions") == heads == {HEAD}


def test_open_migrates_a_database_behind_head_and_skips_alembic_at_head(
    empty_db_url: str,
) -> None:
    store = Store.open(empty_db_url, migrate=False)
    try:
        assert not store.at_head()  # no version table yet
        store.upgrade()
        assert store.at_head()
        _migrate(store, "0008", down=True)
        assert not store.at_head()
    finally:
        store.close()

    reopened = Store.open(empty_db_url)  # behind: Alembic runs
    try:
        assert reopened.at_head()
        assert reopened.upgrade() == (HEAD, HEAD)
    finally:
        reopened.close()


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


# --- 0009: state in columns, backfilled from the event log and the error texts ----------
def _migrate(store: Store, revision: str, *, down: bool = False) -> None:
    """Bring ``store`` to ``revision`` (up, or ``down``) the way Store.upgrade does."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with store.engine.connect() as conn, conn.begin():
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)


class _Rows:
    """Rows written at revision 0007, with the tables as they were then (reflected)."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.meta = sa.MetaData()
        self.meta.reflect(conn)

    def add(self, table: str, **values: Any) -> int:
        result = self.conn.execute(self.meta.tables[table].insert().values(**values))
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    def task(self, work_item: str, stage: str = "development") -> int:
        return self.add(
            "tasks",
            work_item=work_item,
            repository="/repos/r",
            title=work_item,
            description="",
            stage=stage,
            version=0,
            attempt=1,
            rollback_count=0,
            branch=f"orch/{work_item}",
            base_branch="main",
            base_sha="0" * 40,
            worktree=f"/wt/{work_item}",
            created_at=1.0,
            updated_at=1.0,
        )

    def event(self, task_id: int, kind: str, job_id: int | None = None, data: Any = None) -> int:
        return self.add(
            "events",
            task_id=task_id,
            job_id=job_id,
            kind=kind,
            actor="t",
            reason="",
            data=data,
            created_at=1.0,
        )

    def job(
        self,
        task_id: int,
        status: str = "failed",
        error: str | None = None,
        *,
        started: bool = True,
        exit_code: int | None = None,
    ) -> int:
        job_id = self.add(
            "jobs",
            task_id=task_id,
            stage="development",
            kind="agent",
            agent="claude",
            status=status,
            attempt=1,
            error=error,
            not_before=1.0,
            enqueued_at=1.0,
            started_at=1.0 if started else None,
            updated_at=1.0,
        )
        if started:
            self.add(
                "agent_runs",
                job_id=job_id,
                task_id=task_id,
                agent="claude",
                model="",
                effort="",
                attempt=1,
                exit_code=exit_code,
                input_tokens=0,
                output_tokens=0,
                cost_usd=0.0,
                log_path="/l",
                started_at=1.0,
            )
        return job_id


def test_0009_backfills_failure_kinds_origins_and_pending_rollbacks(empty_db_url: str) -> None:
    """A database with rows written before 0009 behaves the same after it: each failed
    job gets the kind its events and error text said, each tracker task its origin and
    key, each task still rolling back an unhealthy deploy its pending rollback. Seen
    failing with each backfill step of 0009 left out (the columns stayed NULL: write-back
    and the tracker's webhooks lost the task, the crossing merged instead of rolling
    back, the reconciler retried a stale job)."""
    store = Store.open(empty_db_url, migrate=False)
    try:
        _migrate(store, "0007")
        with store.engine.connect() as conn, conn.begin():
            rows = _Rows(conn)
            plane = {"tracker": "plane", "project_id": "p1", "issue_id": "uuid-1"}
            github = {"tracker": "github", "repo": "Acme/Shop", "number": 7}
            from_plane, from_github, by_hand = (rows.task(w) for w in ("P-1", "GH-7", "D-1"))
            rows.event(from_plane, "task.created", data={"origin": plane})
            rows.event(from_github, "task.created", data={"origin": github})
            rows.event(by_hand, "task.created")
            rolling, rolled, moved = (rows.task(w, "deploy") for w in ("R-1", "R-2", "R-3"))
            verdict = rows.event(rolling, "deploy.unhealthy", data={"report": "r"})
            rows.event(rolling, "job.retry")  # not a rollback's end
            for task, end in ((rolled, "task.rollback"), (moved, "stage.changed")):
                rows.event(task, "deploy.unhealthy", data={"report": "r"})
                rows.event(task, end)
            jobs = {
                "lost_race": rows.job(by_hand, error="task moved to done while the job ran"),
                "stale": rows.job(by_hand, error="task is in done; job is stale", started=False),
                "timeout": rows.job(by_hand, error="timed out after 30s", exit_code=-1),
                "finalize_error": rows.job(by_hand, error="finalize failed: boom", exit_code=0),
                "gate_failed": rows.job(by_hand, error="no ADR", exit_code=0),
                "gate_deferred": rows.job(by_hand, error="ruff crashed", exit_code=0),
                "cancelled": rows.job(by_hand, error="by alice", started=False),
                "task_budget": rows.job(by_hand, error="cost budget $5.00 reached", started=False),
                "nonzero_exit": rows.job(by_hand, error="claude exited with code 2", exit_code=2),
                "environment": rows.job(by_hand, error="unknown agent 'x'", exit_code=-1),
                "agent_error": rows.job(by_hand, error="API Error: 529", exit_code=0),
                "budget": rows.job(by_hand, error="claude went over its run budget of $1.00"),
                "unknown": rows.job(by_hand, error="something else"),
            }
            done = rows.job(by_hand, "done")
            rows.event(by_hand, "job.lost_race", job_id=jobs["lost_race"])
            rows.event(by_hand, "job.lost_race", job_id=jobs["stale"])
            for name, outcome in (("gate_failed", "fail"), ("gate_deferred", "defer")):
                data = {"outcome": outcome, "gate": "g"}
                rows.event(by_hand, "gate.verdict", job_id=jobs[name], data=data)
            environment = {"cause": "environment"}
            rows.event(by_hand, "task.failed", job_id=jobs["environment"], data=environment)
        _migrate(store, "head")

        kinds = {name: store.get_job(job_id).failure_kind for name, job_id in jobs.items()}
        assert kinds == {name: "lost_race" if name == "stale" else name for name in jobs}
        assert store.get_job(done).failure_kind is None
        assert store.get_task(from_plane).origin == plane
        assert store.get_task(from_github).origin == github
        assert store.get_task(by_hand).origin is None
        deliveries = DeliveryStore(store)
        found = deliveries.task_of_origin(issue_key("plane", issue_id="uuid-1") or "")
        assert found is not None
        assert found.id == from_plane
        found = deliveries.task_of_origin(issue_key("github", project="acme/shop", number=7) or "")
        assert found is not None
        assert found.id == from_github
        pending = {t: store.get_task(t).pending_rollback for t in (rolling, rolled, moved)}
        assert pending == {rolling: verdict, rolled: None, moved: None}

        # And back: 0009 goes down cleanly, and up again.
        _migrate(store, "0007", down=True)
        _migrate(store, "head")
        assert store.get_job(jobs["timeout"]).failure_kind == "timeout"
    finally:
        store.close()


# --- 0010: indexes for the pages and lists --------------------------------------------
def _indexes(store: Store) -> dict[str, set[str]]:
    with store.engine.connect() as conn:
        inspector = sa.inspect(conn)
        return {
            table: {str(index["name"]) for index in inspector.get_indexes(table)}
            for table in ("tasks", "jobs", "agent_runs")
        }


def test_0010_adds_the_read_indexes_and_goes_down_cleanly(empty_db_url: str) -> None:
    """0010 adds the work-item, queue and spend indexes (the spend index in place of the
    task-id one) on a database holding rows; down puts 0009's indexes back; up again."""
    added = {
        "tasks": {"ix_tasks_work_item"},
        "jobs": {"ix_jobs_status_id"},
        "agent_runs": {"ix_agent_runs_task_spend", "ix_agent_runs_started_at"},
    }
    store = Store.open(empty_db_url, migrate=False)
    try:
        _migrate(store, "0009")
        with store.engine.connect() as conn, conn.begin():
            rows = _Rows(conn)
            rows.job(rows.task("I-1"), "done", exit_code=0)
        before = _indexes(store)
        assert "ix_agent_runs_task_id" in before["agent_runs"]
        _migrate(store, "0010")
        after = _indexes(store)
        for table, names in added.items():
            assert after[table] == (before[table] | names) - {"ix_agent_runs_task_id"}
        assert store.task_runs(store.find_task("I-1").id)[0].exit_code == 0

        _migrate(store, "0009", down=True)
        assert _indexes(store) == before
        _migrate(store, "head")
        assert _indexes(store)["agent_runs"] >= added["agent_runs"]
    finally:
        store.close()


# --- 0011: the cost report's daily rollup, kept by triggers ---------------------------
def _spend_days(store: Store) -> list[tuple[Any, ...]]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM spend_days WHERE runs > 0 ORDER BY day"))
        return [tuple(row) for row in rows]


def test_0011_backfills_the_rollup_and_its_triggers_go_down_and_up(empty_db_url: str) -> None:
    """Runs written before 0011 are in the rollup after it (backfill), a run written
    after it too (triggers); down drops the table and the triggers (a run can still be
    written), and up again backfills what was written in between."""
    store = Store.open(empty_db_url, migrate=False)
    try:
        _migrate(store, "0010")
        with store.engine.connect() as conn, conn.begin():
            rows = _Rows(conn)
            task = rows.task("S-1")
            rows.job(task, "done", exit_code=0)
            rows.job(task, "done", exit_code=0)
            conn.execute(sa.text("UPDATE agent_runs SET cost_usd = 0.5, input_tokens = 7"))
        _migrate(store, "0011")
        # started_at 1.0: day 0; the _Rows job is in development, its task in /repos/r.
        assert _spend_days(store) == [(0, "/repos/r", "claude", "", "development", 1.0, 14, 0, 2)]
        with store.engine.connect() as conn, conn.begin():
            _Rows(conn).job(task, "done", exit_code=0)
        assert _spend_days(store)[0][-1] == 3

        _migrate(store, "0010", down=True)
        with store.engine.connect() as conn, conn.begin():
            _Rows(conn).job(task, "done", exit_code=0)
            assert "spend_days" not in sa.inspect(conn).get_table_names()
        _migrate(store, "head")
        assert _spend_days(store) == [(0, "/repos/r", "claude", "", "development", 1.0, 14, 0, 4)]
    finally:
        store.close()


def test_0012_backfills_task_spend_and_its_triggers_go_down_and_up(empty_db_url: str) -> None:
    """Each task's spend over all time: backfilled from the runs written before 0012,
    moved by a run written after it, dropped with its triggers by down, rebuilt by up."""
    store = Store.open(empty_db_url, migrate=False)
    try:
        _migrate(store, "0011")
        with store.engine.connect() as conn, conn.begin():
            rows = _Rows(conn)
            task = rows.task("T-1")
            rows.job(task, "done", exit_code=0)
            conn.execute(sa.text("UPDATE agent_runs SET cost_usd = 0.5"))

        def spend() -> list[tuple[Any, ...]]:
            with store.engine.connect() as conn:
                query = sa.text("SELECT task_id, cost_usd, runs FROM task_spend")
                return [tuple(row) for row in conn.execute(query)]

        _migrate(store, "0012")
        assert spend() == [(task, 0.5, 1)]
        with store.engine.connect() as conn, conn.begin():
            _Rows(conn).job(task, "done", exit_code=0)
        assert spend() == [(task, 0.5, 2)]
        _migrate(store, "0011", down=True)
        with store.engine.connect() as conn, conn.begin():
            _Rows(conn).job(task, "done", exit_code=0)
            assert "task_spend" not in sa.inspect(conn).get_table_names()
        _migrate(store, "head")
        assert spend() == [(task, 0.5, 3)]
    finally:
        store.close()
