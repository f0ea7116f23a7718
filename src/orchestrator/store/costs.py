"""What the cost report reads: agent runs' spend over a period, grouped, and the spend
of the tasks and jobs that still have work against their budgets.

A run belongs to the period ``[since, until)`` its ``started_at`` falls in (a run's
cost is recorded once, when it ends, against the run). The period's spend is grouped by
(day, repository, agent, model, stage); the coarser groupings and the total are sums of
those rows. Its whole days are read from the ``spend_days`` rollup that triggers on
``agent_runs`` keep (migration 0011, decision 0025), so a 30-day report reads about 30
rows per key, not every run; only the runs of a partial first or last day are summed
from ``agent_runs`` (its ``started_at`` index). The top tasks visit tasks by their
spend over all time (``task_spend``, migration 0012), costliest first, and stop once no
task left can enter the top (:meth:`CostStore.top_tasks`).

Days are UTC days, bucketed in SQL as ``floor(started_at / 86400)``. The two databases
need different spellings: PostgreSQL's ``CAST(double AS integer)`` *rounds* (a run
after noon would land on the next day), SQLite has no ``floor`` before 3.35 but its
``CAST(real AS INTEGER)`` truncates, which is the floor for every moment after 1970.

A task's budget window opens at its creation or at a person's last retry (the rule of
:mod:`orchestrator.lifecycle.budget`); :meth:`CostStore.running_task_spend` sums the runs in that
window for every task with a job running, and orders them by how much of their budget
they have used, in SQL, given each repository's budget. It starts from the jobs'
status index, so a long queue costs it nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa

from orchestrator.kernel.events import EventKind
from orchestrator.store.schema import agent_runs, events, jobs, spend_days, task_spend, tasks
from orchestrator.store.store import ACTIVE_JOB_STATUSES, Store

__all__ = ["DAY_S", "BudgetRow", "CostStore", "JobBudgetRow", "SpendRow", "TopTaskRow"]

DAY_S: Final = 86_400
# The top tasks visit tasks by their spend over all time, this many at a time, and group
# the period's runs per task instead after this many pages (decision 0025).
TOP_CANDIDATES: Final = 100
TOP_CANDIDATE_PAGES: Final = 5
# What the trigger-kept sums may lose to rounding against a fresh sum of the runs.
BOUND_SLACK_USD: Final = 1e-9


@dataclass(frozen=True)
class SpendRow:
    """Spend of one group of runs: its key (a day number, names), dollars, tokens, runs."""

    key: tuple[Any, ...]
    cost_usd: float
    input_tokens: int
    output_tokens: int
    runs: int


@dataclass(frozen=True)
class TopTaskRow:
    """A task and what its runs in the period spent."""

    task_id: int
    work_item: str
    title: str
    repository: str
    stage: str
    spend: SpendRow


@dataclass(frozen=True)
class BudgetRow:
    """A task with a job running, and what it spent in its budget window."""

    task_id: int
    work_item: str
    title: str
    repository: str
    stage: str
    # When the window opened (a person's last retry); None = the task's creation.
    window_since: float | None
    spent_usd: float


@dataclass(frozen=True)
class JobBudgetRow:
    """A running job with a run budget, and what its runs have recorded so far."""

    job_id: int
    task_id: int
    work_item: str
    stage: str
    agent: str
    status: str
    started_at: float | None
    budget_usd: float
    # Recorded when a run ends; a run still going shows what earlier runs recorded.
    recorded_usd: float


def _sums() -> list[Any]:
    return [
        sa.func.coalesce(sa.func.sum(agent_runs.c.cost_usd), 0.0).label("cost_usd"),
        sa.func.coalesce(sa.func.sum(agent_runs.c.input_tokens), 0).label("input_tokens"),
        sa.func.coalesce(sa.func.sum(agent_runs.c.output_tokens), 0).label("output_tokens"),
        # count(*), not count(id): PostgreSQL can then sum from the covering index alone.
        sa.func.count().label("runs"),
    ]


def _top_row(row: sa.Row[Any]) -> TopTaskRow:
    return TopTaskRow(
        task_id=int(row.id),
        work_item=row.work_item,
        title=row.title,
        repository=row.repository,
        stage=row.stage,
        spend=_spend((int(row.id),), row),
    )


def _spend(key: tuple[Any, ...], row: sa.Row[Any]) -> SpendRow:
    # PostgreSQL sums BIGINT as NUMERIC (a Decimal) and FLOAT as double: normalise both.
    return SpendRow(
        key=key,
        cost_usd=float(row.cost_usd or 0.0),
        input_tokens=int(row.input_tokens or 0),
        output_tokens=int(row.output_tokens or 0),
        runs=int(row.runs),
    )


class CostStore:
    """The cost report's grouped reads over one :class:`~orchestrator.store.Store`."""

    def __init__(
        self,
        store: Store,
        *,
        top_candidates: int = TOP_CANDIDATES,
        top_candidate_pages: int = TOP_CANDIDATE_PAGES,
    ) -> None:
        self.store = store
        self.top_candidates = top_candidates
        self.top_candidate_pages = top_candidate_pages

    def _all(self, query: sa.Select[Any]) -> list[sa.Row[Any]]:
        with self.store.engine.connect() as conn:
            return list(conn.execute(query))

    def _day(self) -> sa.ColumnElement[int]:
        """The UTC day number (days since 1970-01-01) of a run's start."""
        days = agent_runs.c.started_at / DAY_S
        if self.store.dialect == "postgresql":
            return sa.cast(sa.func.floor(days), sa.BigInteger)
        return sa.cast(days, sa.Integer)  # SQLite truncates: the floor after 1970

    def _in_period(self, query: sa.Select[Any], since: float, until: float) -> sa.Select[Any]:
        return query.where(agent_runs.c.started_at >= since, agent_runs.c.started_at < until)

    # --- the period --------------------------------------------------------------------
    def spend_cube(self, since: float, until: float) -> list[SpendRow]:
        """The period's spend in its finest grouping, one row per (UTC day, repository,
        agent, model, stage) with runs: every other grouping and the total are sums of
        these rows (:func:`orchestrator.api.costs.group_spend`). The key is that tuple, in
        that order.

        The whole days of the period come from the ``spend_days`` rollup (a row per day
        and key, whatever the number of runs); only the runs of its partial first and
        last day are read and summed here."""
        first_whole = math.ceil(since / DAY_S)
        end_whole = math.floor(until / DAY_S)
        if first_whole >= end_whole:  # no whole day: every run of the period is read
            return self._runs_cube([(since, until)])
        whole = sa.select(spend_days).where(
            spend_days.c.day >= first_whole,
            spend_days.c.day < end_whole,
            spend_days.c.runs > 0,
        )
        rows = [
            _spend((int(row.day), row.repository, row.agent, row.model, row.stage), row)
            for row in self._all(whole)
        ]
        edges = [(since, first_whole * DAY_S), (end_whole * DAY_S, until)]
        return rows + self._runs_cube([(lo, hi) for lo, hi in edges if lo < hi])

    def _runs_cube(self, stretches: list[tuple[float, float]]) -> list[SpendRow]:
        """The cube of the runs that started in any of ``stretches`` (``[lo, hi)``)."""
        if not stretches:
            return []
        keys = [
            self._day().label("day"),
            tasks.c.repository,
            agent_runs.c.agent,
            agent_runs.c.model,
            jobs.c.stage,
        ]
        query = (
            sa.select(*keys, *_sums())
            .select_from(agent_runs)
            .join(tasks, tasks.c.id == agent_runs.c.task_id)
            .join(jobs, jobs.c.id == agent_runs.c.job_id)
            .where(
                sa.or_(
                    *(
                        sa.and_(agent_runs.c.started_at >= lo, agent_runs.c.started_at < hi)
                        for lo, hi in stretches
                    )
                )
            )
            .group_by(*keys)
        )
        return [
            _spend((int(row.day), row.repository, row.agent, row.model, row.stage), row)
            for row in self._all(query)
        ]

    def top_tasks(self, since: float, until: float, limit: int) -> list[TopTaskRow]:
        """The ``limit`` tasks whose runs in the period cost most (ties: older task first).

        Tasks are visited by their spend over all time (``task_spend``), costliest first,
        ``top_candidates`` at a time, and their runs in the period summed from the
        covering ``ix_agent_runs_task_spend``. A task's spend in the period is at most its
        spend over all time, so once the ``limit``-th best found is above what the next
        task spent in all, no later task can enter the top. When the top is not known
        after ``top_candidate_pages`` pages (a short period over a long history), the
        period's runs are grouped per task instead (:meth:`top_tasks_grouped`)."""
        best: list[sa.Row[Any]] = []
        after: tuple[float, int] | None = None
        for _ in range(self.top_candidate_pages):
            candidates = sa.select(task_spend.c.cost_usd, task_spend.c.task_id).where(
                task_spend.c.runs > 0
            )
            if after is not None:
                candidates = candidates.where(
                    sa.tuple_(task_spend.c.cost_usd, task_spend.c.task_id) < sa.tuple_(*after)
                )
            page = self._all(
                candidates.order_by(
                    task_spend.c.cost_usd.desc(), task_spend.c.task_id.desc()
                ).limit(self.top_candidates)
            )
            if page:
                ids = [int(row.task_id) for row in page]
                best = sorted(
                    [*best, *self._all(self._task_sums(since, until).where(tasks.c.id.in_(ids)))],
                    key=lambda row: (-float(row.cost_usd or 0.0), int(row.id)),
                )[:limit]
            if len(page) < self.top_candidates:
                return [_top_row(row) for row in best]  # every task was visited
            after = (float(page[-1].cost_usd), int(page[-1].task_id))
            if len(best) == limit and float(best[-1].cost_usd) > after[0] + BOUND_SLACK_USD:
                return [_top_row(row) for row in best]
        return self.top_tasks_grouped(since, until, limit)

    def _task_sums(self, since: float, until: float) -> sa.Select[Any]:
        """Each task with runs in the period, with what they spent."""
        return (
            self._in_period(
                sa.select(
                    tasks.c.id,
                    tasks.c.work_item,
                    tasks.c.title,
                    tasks.c.repository,
                    tasks.c.stage,
                    *_sums(),
                ).join(agent_runs, agent_runs.c.task_id == tasks.c.id),
                since,
                until,
            )
        ).group_by(tasks.c.id, tasks.c.work_item, tasks.c.title, tasks.c.repository, tasks.c.stage)

    def top_tasks_grouped(self, since: float, until: float, limit: int) -> list[TopTaskRow]:
        """:meth:`top_tasks` by grouping every run of the period per task: the top cut
        in the grouped query over the covering index, only its rows meet ``tasks``."""
        sums = _sums()
        per_task = (
            self._in_period(sa.select(agent_runs.c.task_id, *sums), since, until)
            .group_by(agent_runs.c.task_id)
            .order_by(sums[0].desc(), agent_runs.c.task_id)
            .limit(limit)
            .subquery()
        )
        query = (
            sa.select(
                tasks.c.id,
                tasks.c.work_item,
                tasks.c.title,
                tasks.c.repository,
                tasks.c.stage,
                per_task.c.cost_usd,
                per_task.c.input_tokens,
                per_task.c.output_tokens,
                per_task.c.runs,
            )
            .join(per_task, per_task.c.task_id == tasks.c.id)
            .order_by(per_task.c.cost_usd.desc(), tasks.c.id)
            .limit(limit)
        )
        return [_top_row(row) for row in self._all(query)]

    # --- budgets -------------------------------------------------------------------------
    def _running_task_ids(self) -> sa.Select[Any]:
        # Driven from the jobs' status index: a handful of rows, whatever the queue holds.
        return sa.select(jobs.c.task_id).where(jobs.c.status.in_(ACTIVE_JOB_STATUSES))

    def running_task_repositories(self) -> list[str]:
        """The repositories of the tasks with a job running (or finalizing)."""
        query = (
            sa.select(tasks.c.repository)
            .where(tasks.c.id.in_(self._running_task_ids()))
            .group_by(tasks.c.repository)
            .order_by(tasks.c.repository)
        )
        return [str(row.repository) for row in self._all(query)]

    def running_task_spend(
        self, budgets: Mapping[str, float], limit: int
    ) -> tuple[list[BudgetRow], int]:
        """Tasks with a job running whose repository has a budget (``budgets``:
        repository -> dollars, > 0), those closest to their budget first, at most
        ``limit``; and how many such tasks there are in all.

        Each task's window and spend are correlated subqueries on the ``task_id``
        indexes of ``events`` and ``agent_runs``; the count is a window function.
        """
        budgeted = {repo: budget for repo, budget in budgets.items() if budget > 0}
        if not budgeted:
            return [], 0
        # Both correlate to the outer task explicitly: nested in ``spent``, ``since``
        # would otherwise correlate to nothing and take every task's last retry.
        since = (
            sa.select(sa.func.max(events.c.created_at))
            .where(events.c.task_id == tasks.c.id, events.c.kind == EventKind.RETRIED)
            .correlate(tasks)
            .scalar_subquery()
        )
        spent = (
            sa.select(sa.func.coalesce(sa.func.sum(agent_runs.c.cost_usd), 0.0))
            .where(
                agent_runs.c.task_id == tasks.c.id,
                agent_runs.c.started_at >= sa.func.coalesce(since, -1.0),
            )
            .correlate(tasks)
            .scalar_subquery()
        )
        rows = (
            sa.select(
                tasks.c.id,
                tasks.c.work_item,
                tasks.c.title,
                tasks.c.repository,
                tasks.c.stage,
                since.label("since"),
                spent.label("spent_usd"),
                sa.func.count().over().label("total"),
            )
            .where(
                tasks.c.id.in_(self._running_task_ids()),
                tasks.c.repository.in_(list(budgeted)),
            )
            .subquery()
        )
        budget = sa.case(
            *((rows.c.repository == repo, sa.literal(value)) for repo, value in budgeted.items()),
            else_=sa.literal(1.0),
        )
        query = sa.select(rows).order_by((rows.c.spent_usd / budget).desc(), rows.c.id).limit(limit)
        found = self._all(query)
        return [
            BudgetRow(
                task_id=int(row.id),
                work_item=row.work_item,
                title=row.title,
                repository=row.repository,
                stage=row.stage,
                window_since=None if row.since is None else float(row.since),
                spent_usd=float(row.spent_usd),
            )
            for row in found
        ], (int(found[0].total) if found else 0)

    def running_job_budgets(self, limit: int) -> list[JobBudgetRow]:
        """Running jobs that carry a run budget, oldest first, at most ``limit``."""
        recorded = (
            sa.select(sa.func.coalesce(sa.func.sum(agent_runs.c.cost_usd), 0.0))
            .where(agent_runs.c.job_id == jobs.c.id)
            .scalar_subquery()
        )
        query = (
            sa.select(
                jobs.c.id,
                jobs.c.task_id,
                tasks.c.work_item,
                jobs.c.stage,
                jobs.c.agent,
                jobs.c.status,
                jobs.c.started_at,
                jobs.c.budget_usd,
                recorded.label("usd"),
            )
            .join(tasks, tasks.c.id == jobs.c.task_id)
            .where(jobs.c.status.in_(ACTIVE_JOB_STATUSES), jobs.c.budget_usd > 0)
            .order_by(jobs.c.id)
            .limit(limit)
        )
        return [
            JobBudgetRow(
                job_id=int(row.id),
                task_id=int(row.task_id),
                work_item=row.work_item,
                stage=row.stage,
                agent=row.agent,
                status=row.status,
                started_at=None if row.started_at is None else float(row.started_at),
                budget_usd=float(row.budget_usd),
                recorded_usd=float(row.usd),
            )
            for row in self._all(query)
        ]
