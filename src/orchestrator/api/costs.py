"""The cost report: what agent runs spent over a period, and how close the work still
going is to its budgets. ``GET /costs``, ``orch costs`` and the dashboard's Costs page
all show :func:`cost_report`.

Theory of operation
-------------------
A **period** is ``[since, until)`` in UTC, given as ISO 8601 dates or times
(:func:`parse_period`: a date is its midnight UTC, a time without an offset is UTC).
Without ``until`` it ends now; without ``since`` it is the 30 days before ``until``. A
run counts in the period its start falls in.

The report holds the period's total, its spend **per UTC day** (every day of the
period, those without runs at zero), **per repository**, **per agent and model** and
**per stage**, and the top tasks by cost; each grouping sums to the total. Beside it,
**budgets**: every task with a job running whose repository has a
``task_budget_usd``, with what it spent in its budget window (since its creation or a
person's last retry: :mod:`orchestrator.lifecycle.budget`'s rule), closest to its budget first;
and every running job with a run budget (``budget_usd`` of its agent or stage, kept on
the job). A run's cost is recorded when it ends, so a job shows what its finished runs
recorded; the engine itself watches a run's live spend and stops it past its budget.

Parsing and grouping are pure; :func:`cost_report` reads through
:class:`~orchestrator.store.costs.CostStore` (the period's spend in its finest
grouping, whole days from a rollup and partial ones from the runs; the top tasks,
visited by their spend over all time; the running tasks' and jobs' budgets) and the
settings' budgets.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from orchestrator.api.cost_limits import DEFAULT_PERIOD_DAYS, DEFAULT_TOP, MAX_PERIOD_DAYS, MAX_TOP
from orchestrator.api.format import iso_utc, with_iso_times
from orchestrator.errors import UsageError
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store.costs import (
    DAY_S,
    BudgetRow,
    CostStore,
    JobBudgetRow,
    SpendRow,
    TopTaskRow,
)

# The groupings of the report: which parts of the finest key (day, repository, agent,
# model, stage: :meth:`CostStore.spend_cube`) each one keeps.
GROUPINGS: Final[dict[str, tuple[int, ...]]] = {
    "day": (0,),
    "repository": (1,),
    "agent_model": (2, 3),
    "stage": (4,),
}

__all__ = [
    "DEFAULT_PERIOD_DAYS",
    "DEFAULT_TOP",
    "GROUPINGS",
    "MAX_PERIOD_DAYS",
    "MAX_TOP",
    "CostReport",
    "Period",
    "cost_report",
    "day_text",
    "format_tokens",
    "format_usd",
    "group_spend",
    "parse_moment",
    "parse_period",
    "parse_top",
    "total_spend",
]

# The longest date or time text we try to read (an ISO 8601 time with an offset and
# microseconds is 32 characters).
MAX_MOMENT_CHARS: Final = 40
# What of a bad moment its error line shows (repr escapes included).
SHOWN_MOMENT_CHARS: Final = 60
EXAMPLE: Final = "e.g. 2026-12-01 or 2026-12-01T09:30:00Z"
# The shapes of ISO 8601 we read: a calendar date, optionally a time (to the minute,
# second or microsecond) and an offset. Python's own parser also takes any character
# between date and time ("2026-12-01%00"), which is not ISO 8601.
ISO_MOMENT: Final = re.compile(
    r"\d{4}-\d\d-\d\d"
    r"(?:[Tt ]\d\d:\d\d(?::\d\d(?:\.\d{1,6})?)?(?:[Zz]|[+-]\d\d:?\d\d)?)?",
    re.ASCII,
)
# Moments before 1970 are not in the store (times are UNIX seconds).
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Nor after 9998: a moment must still be a date once shown in UTC.
LAST: Final = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Period:
    """``[since, until)`` in UNIX seconds."""

    since: float
    until: float

    @property
    def days(self) -> list[int]:
        """Every UTC day number (days since 1970-01-01) the period touches."""
        first = math.floor(self.since / DAY_S)
        last = math.ceil(self.until / DAY_S) - 1
        return list(range(first, max(first, last) + 1))


def parse_moment(text: str, name: str) -> float:
    """An ISO 8601 date (midnight UTC) or time (UTC unless it names an offset) as UNIX
    seconds; a :class:`UsageError` naming ``name`` for anything else."""
    shown = repr(text[:MAX_MOMENT_CHARS])  # escapes can make it ten times longer
    if len(shown) > SHOWN_MOMENT_CHARS:
        shown = shown[: SHOWN_MOMENT_CHARS - 1] + "…"
    problem = f"{name}: {shown} is not an ISO 8601 date or time; use {EXAMPLE}"
    if len(text) > MAX_MOMENT_CHARS or not ISO_MOMENT.fullmatch(text):
        raise UsageError(problem)
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
    except ValueError:  # a month 13, a February 30, an hour 25
        raise UsageError(problem) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment < EPOCH:
        raise UsageError(f"{name}: {shown!r} is before 1970; nothing was recorded then")
    if moment >= LAST:
        raise UsageError(f"{name}: {shown!r} is after 9998; use a nearer date")
    return moment.timestamp()


def parse_period(since: str | None, until: str | None, now: float) -> Period:
    """The period asked for; the defaults are in the module docstring."""
    end = parse_moment(until, "until") if until is not None else now
    start = parse_moment(since, "since") if since is not None else end - DEFAULT_PERIOD_DAYS * DAY_S
    if start >= end:
        raise UsageError(
            f"since ({iso_utc(start)}) must be before until ({iso_utc(end)}); "
            "the period is [since, until)"
        )
    if end - start > MAX_PERIOD_DAYS * DAY_S:
        days = math.ceil((end - start) / DAY_S)
        raise UsageError(
            f"the period is {days} days; ask for at most {MAX_PERIOD_DAYS} (since and until)"
        )
    return Period(max(start, 0.0), end)


def parse_top(top: int) -> int:
    """How many top tasks to show (1 to :data:`MAX_TOP`)."""
    if not 1 <= top <= MAX_TOP:
        raise UsageError(f"top must be between 1 and {MAX_TOP}, not {top}")
    return top


def format_usd(value: float) -> str:
    """Dollars with cents, and four decimals below a dollar (agent runs are cheap)."""
    if value == 0 or abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.4f}"


def format_tokens(count: int) -> str:
    """A token count people read at a glance: 950, 12.3k, 4.1M."""
    if count < 1_000:
        return str(count)
    if count < 1_000_000:
        return f"{count / 1_000:.1f}k"
    return f"{count / 1_000_000:.1f}M"


def day_text(day: int) -> str:
    """A UTC day number as ``YYYY-MM-DD``."""
    return (EPOCH + timedelta(days=day)).date().isoformat()


def _spend(row: SpendRow) -> dict[str, Any]:
    return {
        "cost_usd": round(row.cost_usd, 6),
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "runs": row.runs,
    }


@dataclass(frozen=True)
class TaskBudget:
    """A task with work going, its budget, and what it spent in its window."""

    row: BudgetRow
    budget_usd: float

    @property
    def used(self) -> float:
        """Share of the budget spent (1.0 = all of it; can pass 1 by the last run)."""
        return self.row.spent_usd / self.budget_usd

    def to_dict(self) -> dict[str, Any]:
        return with_iso_times(
            {
                "task_id": self.row.task_id,
                "work_item": self.row.work_item,
                "title": self.row.title,
                "repository": self.row.repository,
                "stage": self.row.stage,
                "budget_usd": self.budget_usd,
                "spent_usd": round(self.row.spent_usd, 6),
                "used": round(self.used, 4),
                # None: the window opened at the task's creation.
                "window_opened_at": self.row.window_since,
            }
        )


@dataclass(frozen=True)
class CostReport:
    """Everything the cost report shows (see the module docstring)."""

    period: Period
    total: SpendRow
    by_day: list[SpendRow]
    by_repository: list[SpendRow]
    by_agent_model: list[SpendRow]
    by_stage: list[SpendRow]
    top_tasks: list[TopTaskRow]
    task_budget_usd: float
    task_budgets: list[TaskBudget]
    tasks_with_budget: int
    job_budgets: list[JobBudgetRow]

    def to_dict(self) -> dict[str, Any]:
        """The report as ``GET /costs`` and ``orch costs --json`` answer it."""
        return {
            "since": iso_utc(self.period.since),
            "until": iso_utc(self.period.until),
            "total": _spend(self.total),
            "by_day": [{"day": day_text(row.key[0]), **_spend(row)} for row in self.by_day],
            "by_repository": [
                {"repository": row.key[0], **_spend(row)} for row in self.by_repository
            ],
            "by_agent_model": [
                {"agent": row.key[0], "model": row.key[1], **_spend(row)}
                for row in self.by_agent_model
            ],
            "by_stage": [{"stage": row.key[0], **_spend(row)} for row in self.by_stage],
            "top_tasks": [
                {
                    "task_id": row.task_id,
                    "work_item": row.work_item,
                    "title": row.title,
                    "repository": row.repository,
                    "stage": row.stage,
                    **_spend(row.spend),
                }
                for row in self.top_tasks
            ],
            "budgets": {
                # The global task budget (0 = none); a repository may set its own.
                "task_budget_usd": self.task_budget_usd,
                "tasks": [budget.to_dict() for budget in self.task_budgets],
                "tasks_with_budget": self.tasks_with_budget,
                "jobs": [
                    with_iso_times(
                        {
                            "job_id": job.job_id,
                            "task_id": job.task_id,
                            "work_item": job.work_item,
                            "stage": job.stage,
                            "agent": job.agent,
                            "status": job.status,
                            "started_at": job.started_at,
                            "budget_usd": job.budget_usd,
                            "recorded_usd": round(job.recorded_usd, 6),
                        }
                    )
                    for job in self.job_budgets
                ],
            },
        }


def _add(key: tuple[Any, ...], rows: list[SpendRow]) -> SpendRow:
    return SpendRow(
        key=key,
        cost_usd=sum(row.cost_usd for row in rows),
        input_tokens=sum(row.input_tokens for row in rows),
        output_tokens=sum(row.output_tokens for row in rows),
        runs=sum(row.runs for row in rows),
    )


def total_spend(cube: list[SpendRow]) -> SpendRow:
    """The sum of every row."""
    return _add((), cube)


def group_spend(cube: list[SpendRow], grouping: str) -> list[SpendRow]:
    """The cube's rows summed by ``grouping`` (a key of :data:`GROUPINGS`): days in
    order, the others costliest first (ties by name)."""
    parts = GROUPINGS[grouping]
    groups: dict[tuple[Any, ...], list[SpendRow]] = {}
    for row in cube:
        groups.setdefault(tuple(row.key[part] for part in parts), []).append(row)
    summed = [_add(key, rows) for key, rows in groups.items()]
    if grouping == "day":
        return sorted(summed, key=lambda row: row.key)
    return sorted(summed, key=lambda row: (-row.cost_usd, row.key))


def _dense_days(period: Period, rows: list[SpendRow]) -> list[SpendRow]:
    """One row per day of the period, at zero where no run started."""
    found = {int(row.key[0]): row for row in rows}
    return [found.get(day, SpendRow((day,), 0.0, 0, 0, 0)) for day in period.days]


def cost_report(store: Store, settings: Settings, period: Period, top: int) -> CostReport:
    """The report over ``period`` with the ``top`` costliest tasks (and as many budget
    rows at most)."""
    costs = CostStore(store)
    since, until = period.since, period.until
    budgets = {
        repo: settings.task_budget_for(Path(repo)) for repo in costs.running_task_repositories()
    }
    task_rows, with_budget = costs.running_task_spend(budgets, top)
    cube = costs.spend_cube(since, until)
    return CostReport(
        period=period,
        total=total_spend(cube),
        by_day=_dense_days(period, group_spend(cube, "day")),
        by_repository=group_spend(cube, "repository"),
        by_agent_model=group_spend(cube, "agent_model"),
        by_stage=group_spend(cube, "stage"),
        top_tasks=costs.top_tasks(since, until, top),
        task_budget_usd=settings.task_budget_usd,
        task_budgets=[TaskBudget(row, budgets[row.repository]) for row in task_rows],
        tasks_with_budget=with_budget,
        job_budgets=costs.running_job_budgets(top),
    )
