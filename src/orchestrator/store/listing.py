"""The API's lists, a page at a time, and the facts a task list shows beside each task.

Every list is keyset-paginated on row ids (``orchestrator.api.pagination`` makes the
cursor): a page asks for ``limit + 1`` rows after (or before) an id, the extra row only
saying that there is a next page. Each method is one query, or one grouped query per
fact for a whole page of tasks, never one query per row.

A task *enters* a stage by a crossing: its creation (``task.created``) or an event whose
``from_stage`` and ``to_stage`` differ, except the attempts that did not happen
(``transition.deferred``, ``transition.lost``). :data:`CROSSING` says so in SQL, and the
metrics' stage durations use the same rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import sqlalchemy as sa

from orchestrator.kernel.events import EventKind
from orchestrator.store.records import AgentRun, ApiToken, Event, Job, Task
from orchestrator.store.schema import agent_runs, api_tokens, events, jobs, tasks
from orchestrator.store.store import ACTIVE_JOB_STATUSES, WAITING_JOB_STATUSES, Store

__all__ = ["CROSSING", "QUEUE_STATUSES", "ListingStore", "TaskFacts"]

# Jobs /queue lists: waiting to start, or holding a slot.
QUEUE_STATUSES: Final = (*WAITING_JOB_STATUSES, *ACTIVE_JOB_STATUSES)
# Events recorded for a crossing that did not happen.
_NOT_CROSSED: Final = (EventKind.DEFERRED, EventKind.LOST)

CROSSING: Final = sa.or_(
    events.c.kind == EventKind.TASK_CREATED,
    sa.and_(
        events.c.from_stage.is_not(None),
        events.c.to_stage.is_not(None),
        events.c.from_stage != events.c.to_stage,
        events.c.kind.not_in(_NOT_CROSSED),
    ),
)


@dataclass(frozen=True)
class TaskFacts:
    """What a task list shows beside a task: spend, its newest job, when its stage began."""

    cost_usd: float
    current_job: Job | None
    stage_entered_at: float


_JOB_NAMES: Final = tuple(column.name for column in jobs.c)
_TASK_NAMES: Final = tuple(column.name for column in tasks.c)

_R = TypeVar("_R")


def _job_columns() -> list[sa.Label[Any]]:
    return [c.label(f"job_{c.name}") for c in jobs.c]


def _split_job_task(row: sa.Row[Any]) -> tuple[Job, Task]:
    # By position (the job's columns, then the task's): building records from
    # ``row._mapping`` cost more than the query for a page of 100.
    split = len(_JOB_NAMES)
    job = Job(**dict(zip(_JOB_NAMES, row[:split], strict=True)))
    return job, Task(**dict(zip(_TASK_NAMES, row[split:], strict=True)))


def _records(record: Callable[..., _R], rows: Sequence[sa.Row[Any]]) -> list[_R]:
    """Rows of one table's columns as its records."""
    if not rows:
        return []
    names = rows[0]._fields
    return [record(**dict(zip(names, row, strict=True))) for row in rows]


class ListingStore:
    """Paginated reads over one :class:`~orchestrator.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _all(self, query: sa.Select[Any]) -> list[sa.Row[Any]]:
        with self.store.engine.connect() as conn:
            return list(conn.execute(query))

    def _tuples(self, query: sa.Select[Any]) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._all(query)]

    # --- tasks -------------------------------------------------------------------------
    def tasks_page(
        self,
        *,
        stage: str | None,
        before_id: int | None,
        limit: int,
        repository: str | None = None,
    ) -> list[Task]:
        """Up to ``limit + 1`` tasks, newest first, older than ``before_id`` if given
        (in one ``repository`` only, if given)."""
        query = sa.select(tasks).order_by(tasks.c.id.desc()).limit(limit + 1)
        if stage is not None:
            query = query.where(tasks.c.stage == stage)
        if repository is not None:
            query = query.where(tasks.c.repository == repository)
        if before_id is not None:
            query = query.where(tasks.c.id < before_id)
        return _records(Task, self._all(query))

    def repositories(self, limit: int = 500) -> list[str]:
        """The repositories tasks were created in, by name (the board's filter).

        A skip scan: each step seeks the next name in the ``(repository, work_item)``
        index, so it costs one seek per repository, not a read of every task."""
        following = tasks.alias("following")
        first = sa.select(sa.func.min(tasks.c.repository).label("repository")).cte(
            "repositories", recursive=True
        )
        step = (
            sa.select(sa.func.min(following.c.repository))
            .where(following.c.repository > first.c.repository)
            .scalar_subquery()
        )
        names = first.union_all(sa.select(step).where(first.c.repository.is_not(None)))
        query = sa.select(names.c.repository).where(names.c.repository.is_not(None)).limit(limit)
        return [str(row[0]) for row in self._all(query)]

    def task_facts(self, page: Sequence[Task]) -> dict[int, TaskFacts]:
        """Cost so far, newest job and stage-entered time of each task: three queries."""
        ids = [task.id for task in page]
        if not ids:
            return {}
        costs = {
            int(task_id): float(total or 0.0)
            for task_id, total in self._tuples(
                sa.select(agent_runs.c.task_id, sa.func.sum(agent_runs.c.cost_usd))
                .where(agent_runs.c.task_id.in_(ids))
                .group_by(agent_runs.c.task_id)
            )
        }
        newest = (
            sa.select(sa.func.max(jobs.c.id))
            .where(jobs.c.task_id.in_(ids))
            .group_by(jobs.c.task_id)
            .scalar_subquery()
        )
        newest_jobs = self._all(sa.select(jobs).where(jobs.c.id.in_(newest)))
        current = {job.task_id: job for job in _records(Job, newest_jobs)}
        entered = {
            int(task_id): float(moment)
            for task_id, moment in self._tuples(
                sa.select(events.c.task_id, sa.func.max(events.c.created_at))
                .join(tasks, tasks.c.id == events.c.task_id)
                .where(events.c.task_id.in_(ids), events.c.to_stage == tasks.c.stage, CROSSING)
                .group_by(events.c.task_id)
            )
        }
        return {
            task.id: TaskFacts(
                cost_usd=round(costs.get(task.id, 0.0), 6),
                current_job=current.get(task.id),
                stage_entered_at=entered.get(task.id, task.created_at),
            )
            for task in page
        }

    # --- the queue ---------------------------------------------------------------------
    def queue_page(self, *, after_id: int | None, limit: int) -> list[tuple[Job, Task]]:
        """Up to ``limit + 1`` waiting or active jobs with their tasks, oldest job first.

        Each status's first ``limit + 1`` ids come from the ``(status, id)`` index, and
        the page is the first ``limit + 1`` of those: a page reads a few hundred index
        entries however long the queue is (``status IN (...) ORDER BY id`` sorted every
        waiting job first)."""
        firsts = []
        for status in QUEUE_STATUSES:
            first = sa.select(jobs.c.id).where(jobs.c.status == status)
            if after_id is not None:
                first = first.where(jobs.c.id > after_id)
            # A subquery each: SQLite takes no ORDER BY / LIMIT on a compound's members.
            firsts.append(sa.select(first.order_by(jobs.c.id).limit(limit + 1).subquery()))
        page_ids = sa.union_all(*firsts).subquery()
        query = (
            sa.select(*_job_columns(), tasks)
            .join(tasks, tasks.c.id == jobs.c.task_id)
            .where(jobs.c.id.in_(sa.select(page_ids.c.id)))
            .order_by(jobs.c.id)
            .limit(limit + 1)
        )
        return [_split_job_task(row) for row in self._all(query)]

    def queue_counts(self) -> dict[str, int]:
        """How many jobs /queue holds in all, by status."""
        counts = dict.fromkeys(QUEUE_STATUSES, 0)
        query = (
            sa.select(jobs.c.status, sa.func.count())
            .where(jobs.c.status.in_(QUEUE_STATUSES))
            .group_by(jobs.c.status)
        )
        counts.update({str(status): int(n) for status, n in self._tuples(query)})
        return counts

    # --- one task's lists ----------------------------------------------------------------
    def task_events_page(self, task_id: int, *, after_id: int | None, limit: int) -> list[Event]:
        query = sa.select(events).where(events.c.task_id == task_id)
        if after_id is not None:
            query = query.where(events.c.id > after_id)
        rows = self._all(query.order_by(events.c.id).limit(limit + 1))
        return _records(Event, rows)

    def task_runs_page(self, task_id: int, *, after_id: int | None, limit: int) -> list[AgentRun]:
        query = sa.select(agent_runs).where(agent_runs.c.task_id == task_id)
        if after_id is not None:
            query = query.where(agent_runs.c.id > after_id)
        rows = self._all(query.order_by(agent_runs.c.id).limit(limit + 1))
        return _records(AgentRun, rows)

    def task_jobs_page(self, task_id: int, *, after_id: int | None, limit: int) -> list[Job]:
        query = sa.select(jobs).where(jobs.c.task_id == task_id)
        if after_id is not None:
            query = query.where(jobs.c.id > after_id)
        rows = self._all(query.order_by(jobs.c.id).limit(limit + 1))
        return _records(Job, rows)

    # --- API tokens ----------------------------------------------------------------------
    def api_tokens_page(self, *, after_id: int | None, limit: int) -> list[ApiToken]:
        """Up to ``limit + 1`` tokens (hashes stay in their records), oldest first."""
        query = sa.select(api_tokens)
        if after_id is not None:
            query = query.where(api_tokens.c.id > after_id)
        rows = self._all(query.order_by(api_tokens.c.id).limit(limit + 1))
        return _records(ApiToken, rows)
