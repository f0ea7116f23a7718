"""The store: every read and write of tasks, jobs, runs and events.

Writes happen inside :meth:`Store.transaction`, which yields a :class:`Tx`; a caller
composes several writes (a stage change, the next job, the event) and they commit
together or not at all. On SQLite every write transaction starts with ``BEGIN
IMMEDIATE`` so two writers serialise instead of failing half-way; on PostgreSQL the
compare-and-swap ``UPDATE ... WHERE stage = :expected`` is atomic under READ COMMITTED.

:meth:`Tx.update_task_stage_cas` is the only code that writes ``tasks.stage``; a test
keeps it that way.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orchestrator.errors import (
    ConflictError,
    DatabaseUnavailableError,
    NotFoundError,
    OrchestratorError,
    UsageError,
)
from orchestrator.kernel.failures import FailureKind
from orchestrator.kernel.origins import origin_key
from orchestrator.store.activity import Activity
from orchestrator.store.raw import Sql, json_field, json_value, rows
from orchestrator.store.records import AgentRun, ApiToken, Event, Job, Task, TaskCard
from orchestrator.store.revisions import VERSION_TABLE, migration_heads
from orchestrator.store.schema import (
    agent_runs,
    api_tokens,
    events,
    jobs,
    outbox,
    task_cards,
    tasks,
)

__all__ = [
    "ACTIVE_JOB_STATUSES",
    "JOB_STATUSES",
    "DuplicateError",
    "Store",
    "Tx",
    "database_label",
    "sqlite_path",
]

JOB_STATUSES: Final = ("queued", "running", "finalizing", "done", "failed", "deferred")
# Jobs that hold a concurrency slot.
ACTIVE_JOB_STATUSES: Final = ("running", "finalizing")
# Jobs still to be run.
WAITING_JOB_STATUSES: Final = ("queued", "deferred")
SQLITE_BUSY_TIMEOUT_S: Final = 30
SQLITE_WAL_RETRY_S: Final = 0.05
# PostgreSQL: a pooled connection idle this long is pinged before use; one used more
# recently is not (_postgres_engine).
PING_AFTER_REST_S: Final = 1.0
RESTED_AT: Final = "orch_rested_at"
# Execution option marking a connection that writes (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION: Final = "orch_write"
MIGRATIONS_DIR: Final = Path(__file__).parent / "migrations"
# Arbitrary constant: the PostgreSQL advisory lock taken while migrating.
PG_MIGRATION_LOCK_ID: Final = 7_114_065
# PostgreSQL: NOTIFY on this channel when a transaction moved work (an event, an enqueued
# job, an outbox message; decision 0027, store/activity.py).
JOBS_CHANNEL: Final = "orch_jobs"


def _quoted(*words: str) -> str:
    """Constant words as SQL string literals, comma-separated."""
    return ", ".join(f"'{word}'" for word in words)


# The engine's hot statements (decision 0032, store/raw.py): about ten µs each on the
# driver's cursor against 80-260 through SQLAlchemy Core. Column lists come from the
# schema, so a new column is read without touching these.
_BEGIN: Final = Sql("BEGIN")
_BEGIN_IMMEDIATE: Final = Sql("BEGIN IMMEDIATE")
_TASK_COLUMNS: Final = ", ".join(column.name for column in tasks.c)
_GET_TASK: Final = Sql(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = :id")  # noqa: S608
_INSERT_EVENT: Final = Sql(
    "INSERT INTO events (task_id, job_id, kind, actor, from_stage, to_stage, reason, data,"
    " created_at) VALUES (:task_id, :job_id, :kind, :actor, :from_stage, :to_stage,"
    " :reason, :data, :created_at) RETURNING id"
)
_INSERT_JOB: Final = Sql(
    "INSERT INTO jobs (task_id, stage, kind, agent, status, attempt, feedback, not_before,"
    " enqueued_at, updated_at) VALUES (:task_id, :stage, :kind, :agent, 'queued', :attempt,"
    " :feedback, :not_before, :now, :now) RETURNING id"
)
_INSERT_RUN: Final = Sql(
    "INSERT INTO agent_runs (job_id, task_id, agent, model, effort, attempt, log_path,"
    " started_at) VALUES (:job_id, :task_id, :agent, :model, :effort, :attempt, :log_path,"
    " :now) RETURNING id"
)
_SET_JOB_PROCESS: Final = Sql(
    "UPDATE jobs SET pid = :pid, pid_start = :pid_start, start_sha = :start_sha,"
    " timeout_s = :timeout_s, budget_usd = :budget_usd, updated_at = :now WHERE id = :id"
)
_RECORD_EXIT: Final = Sql(
    "UPDATE agent_runs SET exit_code = :exit_code, exit_recorded_at = :now,"
    " input_tokens = :input_tokens, output_tokens = :output_tokens, cost_usd = :cost_usd,"
    " num_turns = :num_turns, model = COALESCE(:model, model) WHERE id = :id"
)
_WORKTREE_REMOVED: Final = Sql("UPDATE tasks SET worktree_removed_at = :removed_at WHERE id = :id")
_WORKTREE_REMOVED_AT_VERSION: Final = Sql(
    "UPDATE tasks SET worktree_removed_at = :removed_at WHERE id = :id AND version = :version"
)
_HAS_PENDING_JOB: Final = Sql(
    "SELECT 1 FROM jobs WHERE task_id = :task_id"  # noqa: S608 - constant words
    f" AND status IN ({_quoted(*WAITING_JOB_STATUSES, *ACTIVE_JOB_STATUSES)}) LIMIT 1"
)
_ACTIVE_JOB_COUNTS: Final = Sql(
    "SELECT tasks.repository, count(*) FROM tasks JOIN jobs ON jobs.task_id = tasks.id"  # noqa: S608
    f" WHERE jobs.status IN ({_quoted(*ACTIVE_JOB_STATUSES)}) GROUP BY tasks.repository"
)
_JOB_AND_TASK_COLUMNS: Final = ", ".join(
    [f"jobs.{column.name} AS job_{column.name}" for column in jobs.c]
    + [f"tasks.{column.name} AS task_{column.name}" for column in tasks.c]
)


def _now() -> float:
    return time.time()


class DuplicateError(sa.exc.IntegrityError):
    """A write met a unique key that is already there (a concurrent writer won).

    Raised by :meth:`Store.transaction` in place of SQLAlchemy's ``IntegrityError``
    (it still is one), so callers outside the store catch it without SQLAlchemy."""


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite database URL; None for another database or memory."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return None if parsed.database == ":memory:" else Path(parsed.database)


def database_label(url: str) -> str:
    """The database URL for people: a SQLite file as its path, passwords hidden."""
    path = sqlite_path(url)
    if path is not None:
        return f"SQLite {path}"
    return sa.make_url(url).render_as_string(hide_password=True)


def _create_engine(url: str, synchronous: str = "FULL") -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise UsageError(
            f"database URL {url!r} is not valid; use sqlite:///path or "
            "postgresql+psycopg://user@host/db"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        )

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the driver, decide when transactions begin.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
            _enable_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
            # FULL: a committed transition (and its effect journal row) survives a power
            # loss, not only a crash; measured in bench/sqlite_synchronous.py, see
            # docs/decisions/0002.
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # Writers take the write lock up front: a compare-and-swap must not be upgraded
            # from a read lock later. Readers begin deferred: in WAL they never wait.
            if conn.get_execution_options().get(WRITE_OPTION):
                _BEGIN_IMMEDIATE.run(conn)
            else:
                _BEGIN.run(conn)

        return engine
    if parsed.get_backend_name() == "postgresql":
        return _postgres_engine(parsed)
    raise UsageError(
        f"database {parsed.get_backend_name()!r} is not supported; use SQLite or PostgreSQL"
    )


def _postgres_engine(url: sa.URL) -> Engine:
    """A pool that pings only a connection that rested ``PING_AFTER_REST_S`` or more.

    ``pool_pre_ping`` pings at every checkout: a second round trip for every
    transaction, twice the work the server sees when busy (issue 12). A connection
    handed back a moment ago is alive as far as a ping can tell, so only a rested one is
    pinged (a database restarted while the pool slept is still noticed and the
    connection replaced); the pool hands out the most recently used connection first
    (LIFO), so a busy process keeps reusing live ones and the spares rest."""
    engine = sa.create_engine(url, pool_use_lifo=True)

    @sa.event.listens_for(engine, "checkin")
    def _rested(_dbapi_conn: Any, record: Any) -> None:
        record.info[RESTED_AT] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _ping_if_rested(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        rested = record.info.get(RESTED_AT)
        if rested is None or time.monotonic() - rested < PING_AFTER_REST_S:
            return  # new, or handed back a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            # The pool discards this connection and checks out another (a new one).
            raise sa.exc.DisconnectionError(f"a rested connection is gone: {exc}") from exc

    return engine


def _enable_wal(cursor: Any) -> None:
    """Switch a SQLite file to WAL. On a brand-new file, SQLite answers "database is
    locked" at once (ignoring busy_timeout) while another connection writes: retry."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(SQLITE_WAL_RETRY_S)


def _task(row: sa.Row[Any]) -> Task:
    return Task(**row._mapping)


def _job(row: sa.Row[Any]) -> Job:
    return Job(**row._mapping)


def _task_of(row: dict[str, Any]) -> Task:
    """A task from a row that :mod:`orchestrator.store.raw` read."""
    row["origin"] = json_field(row["origin"])
    return Task(**row)


@functools.cache
def _job_status_sql(columns: tuple[str, ...], expected: int) -> Sql:
    """``UPDATE jobs`` setting ``columns`` (each from the parameter of its name) where
    the job is in one of ``expected`` statuses (parameters ``was0``, ``was1``, ...)."""
    assignments = ", ".join(f"{column} = :{column}" for column in columns)
    statuses = ", ".join(f":was{n}" for n in range(expected))
    return Sql(f"UPDATE jobs SET {assignments} WHERE id = :id AND status IN ({statuses})")  # noqa: S608


@functools.cache
def _ready_jobs_sql(paths: int, names: int) -> Sql:
    """Queued jobs that are due, each with its task (columns ``job_*`` and ``task_*``),
    oldest first; with ``paths`` or ``names``, only those of the repositories at the
    paths ``:path0``... or whose directory ends ``:name0``... (LIKE patterns)."""
    scope = [f"tasks.repository = :path{n}" for n in range(paths)]
    scope += [f"tasks.repository LIKE :name{n} ESCAPE '!'" for n in range(names)]
    where = "jobs.status = 'queued' AND jobs.not_before <= :now"
    if scope:
        where += f" AND ({' OR '.join(scope)})"
    return Sql(
        f"SELECT {_JOB_AND_TASK_COLUMNS} FROM jobs JOIN tasks ON tasks.id = jobs.task_id"  # noqa: S608
        f" WHERE {where} ORDER BY jobs.not_before, jobs.id LIMIT :limit"
    )


@functools.lru_cache(maxsize=64)
def _task_stages_sql(count: int) -> Sql:
    """The stage and failure of the ``count`` tasks ``:id0``, ``:id1``..."""
    ids = ", ".join(f":id{n}" for n in range(count))
    return Sql(f"SELECT id, stage, failed_reason FROM tasks WHERE id IN ({ids})")  # noqa: S608


def _like_suffix(text: str) -> str:
    """A LIKE pattern (escape character ``!``) matching what ends with ``text``."""
    return "%" + text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


# update_task_stage_cas's statements by the columns it sets and whether it compares.
_TASK_STAGE_SQL: Final[dict[tuple[tuple[str, ...], bool], Sql]] = {}


class Tx:
    """Writes inside one transaction. Obtain it from :meth:`Store.transaction`."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        # Set by a write that moves work: the commit pokes the store's Activity (and,
        # on PostgreSQL, notifies the other instances).
        self.moved = False

    # --- tasks -------------------------------------------------------------------------
    def get_task(self, task_id: int) -> Task:
        """Read a task inside this transaction (sees this transaction's writes)."""
        found = rows(_GET_TASK.run(self.conn, {"id": task_id}))
        if not found:
            raise NotFoundError(f"no task with id {task_id}")
        return _task_of(found[0])

    def insert_task(
        self,
        *,
        work_item: str,
        repository: str,
        title: str,
        description: str,
        stage: str,
        branch: str,
        base_branch: str,
        base_sha: str,
        worktree: str,
        origin: Mapping[str, Any] | None = None,
    ) -> int:
        """A new task; ``origin`` is where its work item came from (a tracker's issue),
        kept with its key so the issue's later changes find the task."""
        now = _now()
        result = self.conn.execute(
            tasks.insert().values(
                work_item=work_item,
                repository=repository,
                title=title,
                description=description,
                stage=stage,
                branch=branch,
                base_branch=base_branch,
                base_sha=base_sha,
                worktree=worktree,
                origin=dict(origin) if origin else None,
                origin_key=origin_key(origin),
                created_at=now,
                updated_at=now,
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    def update_task_stage_cas(
        self,
        task_id: int,
        expected: str,
        new: str,
        *,
        attempt: int | None = None,
        rollback_count: int | None = None,
        clear_failure: bool = False,
        unconditional: bool = False,
    ) -> bool:
        """Move a task from ``expected`` to ``new`` if it is still in ``expected``.

        Returns whether this caller won. A loser must perform no side effect.
        ``unconditional`` (the transition-lease kill-switch) drops the compare: the old
        blind write, kept for operators who switch the lease off. A task that leaves its
        stage has no rollback of an unhealthy deploy pending any more.
        """
        values: dict[str, Any] = {"stage": new, "updated_at": _now(), "pending_rollback": None}
        if attempt is not None:
            values["attempt"] = attempt
        if rollback_count is not None:
            values["rollback_count"] = rollback_count
        if clear_failure:
            values["failed_reason"] = None
        key = (tuple(values), not unconditional)
        statement = _TASK_STAGE_SQL.get(key)
        if statement is None:
            assignments = ", ".join(f"{column} = :{column}" for column in values)
            condition = "id = :id" if unconditional else "id = :id AND stage = :expected"
            statement = _TASK_STAGE_SQL[key] = Sql(
                f"UPDATE tasks SET version = version + 1, {assignments} WHERE {condition}"  # noqa: S608
            )
        cursor = statement.run(self.conn, {"id": task_id, "expected": expected, **values})
        return bool(cursor.rowcount == 1)

    def update_task_counters(
        self,
        task_id: int,
        *,
        expected_stage: str,
        attempt: int | None = None,
        rollback_count: int | None = None,
        failed_reason: str | None = None,
        clear_failure: bool = False,
    ) -> bool:
        """Change a task's counters or failure flag, if it is still in ``expected_stage``."""
        values: dict[str, Any] = {"version": tasks.c.version + 1, "updated_at": _now()}
        if attempt is not None:
            values["attempt"] = attempt
        if rollback_count is not None:
            values["rollback_count"] = rollback_count
        if failed_reason is not None:
            values["failed_reason"] = failed_reason
        elif clear_failure:
            values["failed_reason"] = None
        result = self.conn.execute(
            tasks.update()
            .where(tasks.c.id == task_id, tasks.c.stage == expected_stage)
            .values(**values)
        )
        return result.rowcount == 1

    def set_pending_rollback(self, task_id: int, rollback: int, *, expected_stage: str) -> bool:
        """Record that the task must finish rolling back the unhealthy deploy whose
        verdict is event ``rollback``, if it is still in ``expected_stage``. Neither the
        version nor ``updated_at`` moves: the task's outcome has not changed yet."""
        result = self.conn.execute(
            tasks.update()
            .where(tasks.c.id == task_id, tasks.c.stage == expected_stage)
            .values(pending_rollback=rollback)
        )
        return result.rowcount == 1

    def set_worktree_removed(
        self, task_id: int, removed_at: float | None, *, expected_version: int | None = None
    ) -> bool:
        """Record that the task's worktree is gone (``removed_at``) or back (None).

        With ``expected_version`` only if the task did not change meanwhile (a retry in
        between brings the worktree back). Neither the version nor ``updated_at`` moves:
        the worktree is not the task's state, and ``updated_at`` dates a failure.
        """
        params = {"id": task_id, "removed_at": removed_at, "version": expected_version}
        if expected_version is None:
            return bool(_WORKTREE_REMOVED.run(self.conn, params).rowcount == 1)
        return bool(_WORKTREE_REMOVED_AT_VERSION.run(self.conn, params).rowcount == 1)

    # --- jobs --------------------------------------------------------------------------
    def enqueue_job(
        self,
        *,
        task_id: int,
        stage: str,
        kind: str,
        agent: str,
        attempt: int,
        feedback: str | None = None,
        delay_s: float = 0.0,
    ) -> int:
        now = _now()
        cursor = _INSERT_JOB.run(
            self.conn,
            {
                "task_id": task_id,
                "stage": stage,
                "kind": kind,
                "agent": agent,
                "attempt": attempt,
                "feedback": feedback,
                "not_before": now + delay_s,
                "now": now,
            },
        )
        self.moved = True
        return int(cursor.fetchone()[0])

    def set_job_status_cas(
        self,
        job_id: int,
        expected: str | Sequence[str],
        new: str,
        *,
        error: str | None = None,
        owner_boot_id: str | None = None,
        failure_kind: FailureKind | None = None,
    ) -> bool:
        """Move a job from ``expected`` (one status or several) to ``new``; returns won.

        A job that fails says how (``failure_kind``): decisions read the kind, never
        the error text, so a failure without one is refused here."""
        if new == "failed" and failure_kind is None:
            raise ValueError(f"job {job_id} fails without a failure_kind")
        now = _now()
        expected_set = [expected] if isinstance(expected, str) else list(expected)
        values: dict[str, Any] = {"status": new, "updated_at": now}
        if new == "running":
            values["started_at"] = now
            values["owner_boot_id"] = owner_boot_id
        if new in ("done", "failed"):
            values["finished_at"] = now
        if error is not None:
            values["error"] = error
        if failure_kind is not None:
            values["failure_kind"] = str(FailureKind(failure_kind))
        return bool(
            _job_status_sql(tuple(values), len(expected_set))
            .run(
                self.conn,
                {"id": job_id, **values, **{f"was{n}": was for n, was in enumerate(expected_set)}},
            )
            .rowcount
            == 1
        )

    def set_job_process(
        self,
        job_id: int,
        *,
        pid: int | None,
        start_sha: str | None,
        pid_start: int | None = None,
        timeout_s: float | None = None,
        budget_usd: float | None = None,
    ) -> None:
        """Record a started job's process and the limits it runs under."""
        _SET_JOB_PROCESS.run(
            self.conn,
            {
                "id": job_id,
                "pid": pid,
                "pid_start": pid_start,
                "start_sha": start_sha,
                "timeout_s": timeout_s,
                "budget_usd": budget_usd,
                "now": _now(),
            },
        )

    def adopt_job(self, job_id: int, *, old_boot_id: str | None, new_boot_id: str) -> bool:
        """Take over a running job from a dead engine; False if someone else did."""
        result = self.conn.execute(
            jobs.update()
            .where(
                jobs.c.id == job_id,
                jobs.c.status == "running",
                jobs.c.owner_boot_id.is_(None)
                if old_boot_id is None
                else jobs.c.owner_boot_id == old_boot_id,
            )
            .values(owner_boot_id=new_boot_id, updated_at=_now())
        )
        return result.rowcount == 1

    def cancel_waiting_jobs(self, task_id: int, reason: str) -> list[int]:
        """Fail every queued or deferred job of a task (kind ``cancelled``); their ids."""
        ids = [
            int(row.id)
            for row in self.conn.execute(
                sa.select(jobs.c.id).where(
                    jobs.c.task_id == task_id, jobs.c.status.in_(WAITING_JOB_STATUSES)
                )
            )
        ]
        for job_id in ids:
            self.set_job_status_cas(
                job_id,
                WAITING_JOB_STATUSES,
                "failed",
                error=reason,
                failure_kind=FailureKind.CANCELLED,
            )
        return ids

    # --- runs --------------------------------------------------------------------------
    def insert_agent_run(
        self,
        *,
        job_id: int,
        task_id: int,
        agent: str,
        model: str,
        effort: str,
        attempt: int,
        log_path: str,
    ) -> int:
        cursor = _INSERT_RUN.run(
            self.conn,
            {
                "job_id": job_id,
                "task_id": task_id,
                "agent": agent,
                "model": model,
                "effort": effort,
                "attempt": attempt,
                "log_path": log_path,
                "now": _now(),
            },
        )
        return int(cursor.fetchone()[0])

    def record_exit(
        self,
        run_id: int,
        *,
        exit_code: int,
        model: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float = 0.0,
        num_turns: int | None = None,
    ) -> None:
        _RECORD_EXIT.run(
            self.conn,
            {
                "id": run_id,
                "exit_code": exit_code,
                "now": _now(),
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cost_usd": cost_usd,
                "num_turns": num_turns,
                "model": model or None,  # an empty model keeps the one recorded
            },
        )

    # --- events ------------------------------------------------------------------------
    def add_event(
        self,
        kind: str,
        *,
        actor: str,
        task_id: int | None = None,
        job_id: int | None = None,
        from_stage: str | None = None,
        to_stage: str | None = None,
        reason: str = "",
        data: Mapping[str, Any] | None = None,
    ) -> int:
        """Append an event; its id (events are ordered by id)."""
        cursor = _INSERT_EVENT.run(
            self.conn,
            {
                "task_id": task_id,
                "job_id": job_id,
                "kind": str(kind),
                "actor": actor,
                "from_stage": from_stage,
                "to_stage": to_stage,
                "reason": reason,
                "data": json_value(dict(data) if data is not None else None),
                "created_at": _now(),
            },
        )
        self.moved = True
        return int(cursor.fetchone()[0])

    def outbox_key_queued(self, key: str) -> bool:
        """Whether an outbox row with idempotency key ``key`` exists (any status)."""
        query = sa.select(outbox.c.id).where(outbox.c.idempotency_key == key)
        return self.conn.execute(query).first() is not None

    def point_task_card(self, task_id: int, chat_id: str, message_id: int, digest: str) -> None:
        """Point the task's card in ``chat_id`` at ``message_id`` (an upsert)."""
        values = {"message_id": message_id, "text_hash": digest, "updated_at": _now()}
        where = sa.and_(task_cards.c.task_id == task_id, task_cards.c.chat_id == chat_id)
        if self.conn.execute(task_cards.update().where(where).values(**values)).rowcount == 0:
            self.conn.execute(
                task_cards.insert().values(task_id=task_id, chat_id=chat_id, **values)
            )


class Store:
    """The database of one orchestrator: open it, migrate it, read and write it."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL") -> None:
        if sqlite_synchronous not in ("NORMAL", "FULL"):
            raise UsageError(
                f"sqlite_synchronous must be NORMAL or FULL, not {sqlite_synchronous!r}"
            )
        self.url = url
        self.engine = _create_engine(url, sqlite_synchronous)
        self._statements = 0
        self._statements_lock = threading.Lock()
        sa.event.listen(self.engine, "before_cursor_execute", self._count_statement)
        # When work last moved through this store in this process (store/activity.py).
        self.activity = Activity()
        self._path = sqlite_path(url)
        self._wal = None if self._path is None else self._path.with_name(self._path.name + "-wal")
        self._stamped = None if self._wal is None else (str(self._path), str(self._wal))
        # SQLite: the change stamps just before and just after this process's last
        # write (None before any): a watcher that saw the first and sees the second
        # saw only our own commit.
        self.own_change: tuple[tuple[int, ...] | None, tuple[int, ...] | None] = (None, None)
        # SQLite has one writer at a time. Threads of this process that write at once
        # queue here, handed the turn as soon as it is free; on SQLite's own lock they
        # would wait in its busy handler, which sleeps 1, 2, 5 ... up to 100 ms between
        # tries (other processes still do). Re-entrant, so a nested write fails as it
        # did (on SQLite's timeout) rather than hanging.
        self._write_turn = threading.RLock() if self._path is not None else None

    def _count_statement(self, *_args: Any) -> None:
        with self._statements_lock:
            self._statements += 1

    @property
    def statements(self) -> int:
        """SQL statements this process has sent through this store since it opened (what
        ``orch_db_statements_total`` shows: how much the database is asked, idle or not)."""
        with self._statements_lock:
            return self._statements

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, sqlite_synchronous: str = "FULL") -> Store:
        """Connect and bring the schema up to date (migrations run at start)."""
        store = cls(url, sqlite_synchronous=sqlite_synchronous)
        if migrate and not store.at_head():
            store.upgrade()
        return store

    def at_head(self) -> bool:
        """True when the database is at the newest migration (read without Alembic:
        :mod:`orchestrator.store.revisions`); False when unsure or behind."""
        heads = migration_heads(MIGRATIONS_DIR / "versions")
        if heads is None:
            return False
        query = sa.text(f"SELECT version_num FROM {VERSION_TABLE}")  # noqa: S608 - a constant
        try:
            with self.engine.connect() as conn:
                current = {str(row[0]) for row in conn.execute(query)}
        except sa.exc.DBAPIError:
            return False  # no version table yet (a new database), or none reachable
        return current == heads

    def ping(self) -> None:
        """A cheap round trip; :class:`DatabaseUnavailableError` when it fails."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            lines = (str(cause) or type(cause).__name__).strip().splitlines()
            raise DatabaseUnavailableError(lines[0] if lines else type(cause).__name__) from None

    def is_outage(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the database is out of reach for now (its server down or
        restarting, a connection lost, SQLite's file locked past the busy timeout),
        rather than that a statement or the schema is wrong: asked by a loop deciding
        to wait for the database or to die. An ``OperationalError`` counts when a
        round trip fails now too."""
        if isinstance(exc, DatabaseUnavailableError):
            return True
        if isinstance(exc, self.engine.dialect.loaded_dbapi.OperationalError):
            # The driver's own, from a connection of ours outside the pool (LISTEN).
            return self._unreachable()
        if not isinstance(exc, sa.exc.DBAPIError):
            return False
        if exc.connection_invalidated or "locked" in str(exc.orig):
            return True
        return isinstance(exc, sa.exc.OperationalError) and self._unreachable()

    def _unreachable(self) -> bool:
        try:
            self.ping()
        except DatabaseUnavailableError:
            return True
        return False

    def outbox_counts(self, statuses: Sequence[str]) -> dict[str, int]:
        """How many outbox messages are in each of ``statuses`` (0 for none)."""
        counts = dict.fromkeys(statuses, 0)
        query = (
            sa.select(outbox.c.status, sa.func.count().label("n"))
            .where(outbox.c.status.in_(tuple(statuses)))
            .group_by(outbox.c.status)
        )
        counts.update({str(row.status): int(row.n) for row in self._all(query)})
        return counts

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def upgrade(self) -> tuple[str | None, str | None]:
        """Run Alembic migrations to head; returns (revision before, revision after)."""
        from alembic import command  # noqa: PLC0415 - alembic is only needed here
        from alembic.config import Config  # noqa: PLC0415
        from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        try:
            with (
                self.engine.connect().execution_options(**{WRITE_OPTION: True}) as conn,
                conn.begin(),
            ):
                if self.dialect == "postgresql":
                    # Two processes starting at once must not both create the tables.
                    conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK_ID})"))
                before = MigrationContext.configure(conn).get_current_revision()
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
                after = MigrationContext.configure(conn).get_current_revision()
        except sa.exc.OperationalError as exc:
            raise OrchestratorError(
                f"cannot open the database {self.engine.url.render_as_string()}: "
                f"{str(exc.orig).strip().splitlines()[0]}"
            ) from None
        return before, after

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One atomic unit of writes; commits on exit, rolls back on an exception."""
        try:
            with self._write_turn or contextlib.nullcontext(), self.engine.connect() as plain:
                conn = plain.execution_options(**{WRITE_OPTION: True})
                with conn.begin():
                    # SQLite: the stamp while we hold the write lock, so the watcher can
                    # tell "only our commit changed it" from "someone else's did too".
                    pre = self.change_stamp() if self._path is not None else None
                    tx = Tx(conn)
                    yield tx
                    if tx.moved and conn.dialect.name == "postgresql":
                        # Delivered at commit (once, however many moves): every idle
                        # instance wakes now instead of at its next poll.
                        conn.execute(
                            sa.text("SELECT pg_notify(:channel, '')"), {"channel": JOBS_CHANNEL}
                        )
                if self._path is not None:
                    # Our own commit, not news to us: read before another thread of this
                    # process can write (another process still can, a rare early wake).
                    self.own_change = (pre, self.change_stamp())
        except DuplicateError:
            raise
        except sa.exc.IntegrityError as exc:
            raise DuplicateError(exc.statement, exc.params, exc.orig or exc) from exc
        if tx.moved:
            self.activity.poke()

    # Convenience: a single compare-and-swap in its own transaction.
    def update_task_stage_cas(self, task_id: int, expected: str, new: str) -> bool:
        with self.transaction() as tx:
            return tx.update_task_stage_cas(task_id, expected, new)

    # --- reads -------------------------------------------------------------------------
    def _all(self, query: sa.Select[Any]) -> list[sa.Row[Any]]:
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection for one of :mod:`orchestrator.store.raw`'s reads (one statement,
        its own snapshot)."""
        with self.engine.connect() as conn:
            yield conn

    def get_task(self, task_id: int) -> Task:
        with self._reading() as conn:
            found = rows(_GET_TASK.run(conn, {"id": task_id}))
        if not found:
            raise NotFoundError(f"no task with id {task_id}; see `orch task list`")
        return _task_of(found[0])

    def find_task(self, ref: str, repository: str | None = None) -> Task:
        """A task by work item (e.g. DEMO-1) or numeric id."""
        query = sa.select(tasks).where(tasks.c.work_item == ref)
        if repository is not None:
            query = query.where(tasks.c.repository == repository)
        rows = self._all(query)
        if len(rows) > 1:
            raise UsageError(
                f"work item {ref!r} exists in {len(rows)} repositories; add --repo PATH"
            )
        if rows:
            return _task(rows[0])
        if ref.isdigit() and len(ref) < 12:
            task = self.get_task(int(ref))
            if repository is None or task.repository == repository:
                return task
        raise NotFoundError(f"no task {ref!r}; see `orch task list`")

    def task_exists(self, repository: str, work_item: str) -> bool:
        query = sa.select(tasks.c.id).where(
            tasks.c.repository == repository, tasks.c.work_item == work_item
        )
        return bool(self._all(query))

    def list_tasks(self, *, stage: str | None = None, limit: int = 200) -> list[Task]:
        query = sa.select(tasks).order_by(tasks.c.id.desc()).limit(limit)
        if stage is not None:
            query = query.where(tasks.c.stage == stage)
        return [_task(row) for row in self._all(query)]

    def task_stages(self, task_ids: Collection[int]) -> dict[int, tuple[str, bool]]:
        """Each task's stage and whether it failed, in one query whatever their number:
        the engine's watch pass, learning which running jobs' tasks moved under them."""
        if not task_ids:
            return {}
        ids = sorted(task_ids)
        with self._reading() as conn:
            found = _task_stages_sql(len(ids)).run(
                conn, {f"id{n}": task_id for n, task_id in enumerate(ids)}
            )
            return {
                int(task_id): (str(stage), failed is not None)
                for task_id, stage, failed in found.fetchall()
            }

    def count_tasks(self, repository: str) -> int:
        query = sa.select(sa.func.count()).select_from(tasks)
        query = query.where(tasks.c.repository == repository)
        return int(self._all(query)[0][0])

    def tasks_with_worktree_to_release(self, terminal: Sequence[str]) -> list[Task]:
        """Tasks that ended (a ``terminal`` stage, or failed) whose worktree is still
        recorded as present: the janitor's candidates, oldest first."""
        query = (
            sa.select(tasks)
            .where(
                tasks.c.worktree_removed_at.is_(None),
                sa.or_(tasks.c.stage.in_(list(terminal)), tasks.c.failed_reason.is_not(None)),
            )
            .order_by(tasks.c.id)
        )
        return [_task(row) for row in self._all(query)]

    def tasks_by_worktree(self, paths: Sequence[str]) -> dict[str, Task]:
        """The tasks whose worktree is one of ``paths``, by that path: a sweep of the
        directories on disk costs what is on disk, not every task ever run."""
        found: dict[str, Task] = {}
        wanted = list(dict.fromkeys(paths))
        for start in range(0, len(wanted), 500):
            query = sa.select(tasks).where(tasks.c.worktree.in_(wanted[start : start + 500]))
            found.update((task.worktree, task) for task in map(_task, self._all(query)))
        return found

    def repositories(self) -> list[str]:
        """The repositories tasks were created in."""
        query = sa.select(tasks.c.repository).distinct().order_by(tasks.c.repository)
        return [str(row[0]) for row in self._all(query)]

    def has_pending_job(self, task_id: int) -> bool:
        """Whether a job of the task is queued, deferred, running or finalizing."""
        with self._reading() as conn:
            return _HAS_PENDING_JOB.run(conn, {"task_id": task_id}).fetchone() is not None

    def get_job(self, job_id: int) -> Job:
        rows = self._all(sa.select(jobs).where(jobs.c.id == job_id))
        if not rows:
            raise NotFoundError(f"no job with id {job_id}")
        return _job(rows[0])

    def task_jobs(self, task_id: int) -> list[Job]:
        query = sa.select(jobs).where(jobs.c.task_id == task_id).order_by(jobs.c.id)
        return [_job(row) for row in self._all(query)]

    def ready_jobs(
        self, now: float, limit: int = 50, repositories: Sequence[str] = ()
    ) -> list[tuple[Job, Task]]:
        """Queued jobs whose time has come, oldest first, each with its task as read in
        the same query (the dispatch reads no task per job).

        ``repositories`` (an instance's affinity; empty = all) keeps the jobs of those
        repositories only, each named by its path or its directory's name, as
        :func:`orchestrator.settings.in_scope` matches them; the filter is in the query,
        so another repository's backlog never hides this instance's jobs."""
        paths = [item for item in repositories if "/" in item]
        names = [item for item in repositories if "/" not in item]
        params: dict[str, Any] = {"now": now, "limit": limit}
        params.update({f"path{n}": path for n, path in enumerate(paths)})
        params.update({f"name{n}": _like_suffix(f"/{name}") for n, name in enumerate(names)})
        with self._reading() as conn:
            found = rows(_ready_jobs_sql(len(paths), len(names)).run(conn, params))
        result = []
        for row in found:
            job = {name[4:]: value for name, value in row.items() if name.startswith("job_")}
            task = {name[5:]: value for name, value in row.items() if name.startswith("task_")}
            result.append((Job(**job), _task_of(task)))
        return result

    def next_job_due(self, now: float) -> float | None:
        """When the earliest queued job not yet due comes due (a retry's backoff); None
        when no job waits for its time."""
        query = sa.select(sa.func.min(jobs.c.not_before)).where(
            jobs.c.status == "queued", jobs.c.not_before > now
        )
        with self.engine.connect() as conn:
            due = conn.execute(query).scalar()
        return None if due is None else float(due)

    def change_stamp(self) -> tuple[int, ...] | None:
        """On SQLite, a value that changes whenever any process commits to the database
        file (the sizes and modification times of the file and its write-ahead log): an
        idle engine watches it instead of polling with queries. None elsewhere
        (PostgreSQL announces its commits by NOTIFY) or for a database in memory."""
        if self._stamped is None:
            return None
        stamp: list[int] = []
        for path in self._stamped:  # strings: a Path's stat cost more than the call
            try:
                info = os.stat(path)
            except OSError:
                stamp += [0, 0]
            else:
                stamp += [info.st_mtime_ns, info.st_size]
        return tuple(stamp)

    def jobs_by_status(self, statuses: Sequence[str]) -> list[tuple[Job, Task]]:
        """Jobs in the given statuses, each with its task."""
        job_cols = [c.label(f"job_{c.name}") for c in jobs.c]
        query = (
            sa.select(*job_cols, tasks)
            .join(tasks, tasks.c.id == jobs.c.task_id)
            .where(jobs.c.status.in_(list(statuses)))
            .order_by(jobs.c.id)
        )
        result = []
        for row in self._all(query):
            mapping = dict(row._mapping)
            job = Job(**{c.name: mapping.pop(f"job_{c.name}") for c in jobs.c})
            result.append((job, Task(**mapping)))
        return result

    def active_job_counts(self) -> dict[str, int]:
        """Running or finalizing jobs per repository."""
        with self._reading() as conn:
            found = _ACTIVE_JOB_COUNTS.run(conn).fetchall()
        return {str(key): int(count) for key, count in found}

    def latest_job(self, task_id: int) -> Job | None:
        query = sa.select(jobs).where(jobs.c.task_id == task_id).order_by(jobs.c.id.desc())
        rows = self._all(query.limit(1))
        return _job(rows[0]) if rows else None

    def overdue_finalizing(
        self, grace_s: float, now: float | None = None
    ) -> list[tuple[Job, float]]:
        """Finalizing jobs whose exit was recorded at least ``grace_s`` before ``now``
        (default: the wall clock), with that age (``finished_age_s``, computed here so
        every caller agrees)."""
        now = _now() if now is None else now
        query = (
            sa.select(jobs, agent_runs.c.exit_recorded_at)
            .join(agent_runs, agent_runs.c.job_id == jobs.c.id)
            .where(
                jobs.c.status == "finalizing",
                agent_runs.c.exit_recorded_at.is_not(None),
                agent_runs.c.exit_recorded_at <= now - grace_s,
            )
            .order_by(jobs.c.id)
        )
        found = []
        for row in self._all(query):
            mapping = dict(row._mapping)
            recorded = float(mapping.pop("exit_recorded_at"))
            found.append((Job(**mapping), now - recorded))
        return found

    def task_runs(self, task_id: int) -> list[AgentRun]:
        query = sa.select(agent_runs).where(agent_runs.c.task_id == task_id)
        return [AgentRun(**row._mapping) for row in self._all(query.order_by(agent_runs.c.id))]

    def agent_run(self, run_id: int) -> AgentRun | None:
        """One agent run by its id; None when there is no such run."""
        rows = self._all(sa.select(agent_runs).where(agent_runs.c.id == run_id))
        return AgentRun(**rows[0]._mapping) if rows else None

    def job_run(self, job_id: int) -> AgentRun | None:
        query = sa.select(agent_runs).where(agent_runs.c.job_id == job_id)
        rows = self._all(query.order_by(agent_runs.c.id.desc()).limit(1))
        return AgentRun(**rows[0]._mapping) if rows else None

    def task_events(self, task_id: int) -> list[Event]:
        query = sa.select(events).where(events.c.task_id == task_id).order_by(events.c.id)
        return [Event(**row._mapping) for row in self._all(query)]

    def events_after(self, last_id: int, limit: int = 500) -> list[Event]:
        """Events newer than ``last_id``, oldest first (for live progress)."""
        query = sa.select(events).where(events.c.id > last_id).order_by(events.c.id).limit(limit)
        return [Event(**row._mapping) for row in self._all(query)]

    def newest_event_id(self) -> int:
        """The id of the newest event, 0 when there is none."""
        return int(self._all(sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0)))[0][0])

    def counts_by_stage(self) -> dict[str, int]:
        query = sa.select(tasks.c.stage, sa.func.count()).group_by(tasks.c.stage)
        return {str(key): int(count) for key, count in map(tuple, self._all(query))}

    def count_failed_tasks(self) -> int:
        query = sa.select(sa.func.count()).select_from(tasks)
        return int(self._all(query.where(tasks.c.failed_reason.is_not(None)))[0][0])

    # --- API tokens (orchestrator.auth hashes; the store never sees a secret) ---------------
    def create_api_token(
        self, *, name: str, role: str, token_hash: str, actor: str, event_kind: str
    ) -> ApiToken:
        """Store a new token and its audit event together; a taken name is a conflict."""
        try:
            with self.transaction() as tx:
                tx.conn.execute(
                    api_tokens.insert().values(
                        name=name,
                        role=role,
                        token_hash=token_hash,
                        created_by=actor,
                        created_at=_now(),
                    )
                )
                tx.add_event(event_kind, actor=actor, reason=f"token {name} ({role}) created")
        except sa.exc.IntegrityError:
            raise ConflictError(
                f"a token named {name!r} already exists; revoke it first "
                f"(orch token revoke {name}) or choose another name"
            ) from None
        found = self.api_token_named(name)
        assert found is not None
        return found

    def revoke_api_token(self, name: str, *, actor: str, event_kind: str) -> bool:
        """Delete the token called ``name`` (with an audit event); False if there is none."""
        with self.transaction() as tx:
            deleted = tx.conn.execute(api_tokens.delete().where(api_tokens.c.name == name))
            if deleted.rowcount == 0:
                return False
            tx.add_event(event_kind, actor=actor, reason=f"token {name} revoked")
        return True

    def api_tokens(self) -> list[ApiToken]:
        query = sa.select(api_tokens).order_by(api_tokens.c.name)
        return [ApiToken(**row._mapping) for row in self._all(query)]

    def api_token_named(self, name: str) -> ApiToken | None:
        rows = self._all(sa.select(api_tokens).where(api_tokens.c.name == name))
        return ApiToken(**rows[0]._mapping) if rows else None

    def api_token_by_hash(self, token_hash: str) -> ApiToken | None:
        rows = self._all(sa.select(api_tokens).where(api_tokens.c.token_hash == token_hash))
        return ApiToken(**rows[0]._mapping) if rows else None

    def count_api_tokens(self) -> int:
        return int(self._all(sa.select(sa.func.count()).select_from(api_tokens))[0][0])

    # --- Telegram cards ---------------------------------------------------------------
    def task_card(self, task_id: int, chat_id: str) -> TaskCard | None:
        """The task's live card in ``chat_id``, if it has one."""
        query = sa.select(
            task_cards.c.task_id,
            task_cards.c.chat_id,
            task_cards.c.message_id,
            task_cards.c.text_hash,
            task_cards.c.updated_at,
        ).where(task_cards.c.task_id == task_id, task_cards.c.chat_id == chat_id)
        rows = self._all(query)
        return TaskCard(**rows[0]._mapping) if rows else None

    def sent_outbox(self, channel: str, kind: str, limit: int) -> list[tuple[int | None, Any]]:
        """(task id, payload) of the newest ``limit`` sent outbox rows of a kind."""
        query = (
            sa.select(outbox.c.task_id, outbox.c.payload)
            .where(outbox.c.channel == channel, outbox.c.kind == kind, outbox.c.status == "sent")
            .order_by(outbox.c.id.desc())
            .limit(limit)
        )
        rows = self._all(query)
        return [(None if row.task_id is None else int(row.task_id), row.payload) for row in rows]

    def get_event(self, event_id: int) -> Event | None:
        rows = self._all(sa.select(events).where(events.c.id == event_id))
        return Event(**rows[0]._mapping) if rows else None

    def task_of_card(self, chat_id: str, message_id: int) -> int | None:
        """The task whose live card in ``chat_id`` is message ``message_id``, if any."""
        query = sa.select(task_cards.c.task_id).where(
            task_cards.c.chat_id == chat_id, task_cards.c.message_id == message_id
        )
        rows = self._all(query)
        return int(rows[0][0]) if rows else None
