"""What the dashboard's Costs and Health pages show, as plain values. Pure: the routes
read the cost report (:mod:`orchestrator.api.costs`) and the status
(:mod:`orchestrator.api.status`), these functions shape what the templates draw.

The Costs page's form asks for a first and a last day, both included (what people
mean by "from the 1st to the 30th"); :func:`period_from_form` turns them into the
report's ``[since, until)``. Bars are HTML ``<meter>`` elements: no inline style (the
dashboard's Content-Security-Policy forbids it), no script, and a screen reader reads
their value; the figure beside each bar is the text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from orchestrator.api.costs import (
    DEFAULT_PERIOD_DAYS,
    CostReport,
    Period,
    day_text,
    format_tokens,
    format_usd,
    parse_moment,
    parse_period,
)
from orchestrator.api.format import format_age, iso_utc
from orchestrator.errors import UsageError
from orchestrator.kernel.stages import stage_label
from orchestrator.store.costs import DAY_S, SpendRow

__all__ = [
    "BUDGET_HIGH",
    "BUDGET_LOW",
    "BarRow",
    "BudgetView",
    "costs_view",
    "health_view",
    "period_from_form",
]

# A budget meter turns amber past this share of the budget, red past the next.
BUDGET_LOW: Final = 0.7
BUDGET_HIGH: Final = 0.9
DATE_CHARS: Final = len("2026-12-01")


@dataclass(frozen=True)
class BarRow:
    """One row of a spend table: its label(s), the figures, and its bar's value."""

    labels: tuple[str, ...]
    cost: str
    cost_usd: float
    runs: int
    tokens_in: str
    tokens_out: str


@dataclass(frozen=True)
class BudgetView:
    """A running task against its budget, as the page draws it."""

    task_id: int
    work_item: str
    title: str
    stage: str
    repository: str
    spent: str
    budget: str
    used: float
    used_text: str
    window: str


def _day_of(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=UTC).date().isoformat()


def period_from_form(first: str, last: str, now: float) -> Period:
    """The period from the form's first and last day (both included; UTC dates).

    Empty fields take the defaults: the last day is today, the first 30 days back.
    """
    for name, value in (("from", first), ("to", last)):
        if value and len(value) != DATE_CHARS:
            raise UsageError(f"{name}: {value[:40]!r} is not a date; use e.g. 2026-12-01")
    until = parse_moment(last, "to") + DAY_S if last else None
    if first:
        since = parse_moment(first, "from")
        if until is not None and since >= until:
            raise UsageError(f"from ({first}) is after to ({last}); pick the first day first")
    else:
        end = until if until is not None else now
        since = (end // DAY_S) * DAY_S - (DEFAULT_PERIOD_DAYS - 1) * DAY_S
    if until is None:
        until = (now // DAY_S + 1) * DAY_S  # the end of today
    return parse_period(iso_utc(since), iso_utc(until), now)


def _bars(rows: Sequence[SpendRow], labels: Sequence[tuple[str, ...]]) -> list[BarRow]:
    return [
        BarRow(
            labels=label,
            cost=format_usd(row.cost_usd),
            cost_usd=row.cost_usd,
            runs=row.runs,
            tokens_in=format_tokens(row.input_tokens),
            tokens_out=format_tokens(row.output_tokens),
        )
        for row, label in zip(rows, labels, strict=True)
    ]


def costs_view(report: CostReport) -> dict[str, Any]:
    """The Costs page's values (the template's context)."""
    groups = {
        "day": _bars(report.by_day, [(day_text(int(row.key[0])),) for row in report.by_day]),
        "repository": _bars(
            report.by_repository, [(str(row.key[0]),) for row in report.by_repository]
        ),
        "agent_model": _bars(
            report.by_agent_model,
            [(str(row.key[0]), str(row.key[1]) or "(default)") for row in report.by_agent_model],
        ),
        "stage": _bars(
            report.by_stage, [(stage_label(str(row.key[0])),) for row in report.by_stage]
        ),
    }
    peaks = {
        name: max((bar.cost_usd for bar in bars), default=0.0) for name, bars in groups.items()
    }
    budgets = [
        BudgetView(
            task_id=budget.row.task_id,
            work_item=budget.row.work_item,
            title=budget.row.title,
            stage=stage_label(budget.row.stage),
            repository=budget.row.repository,
            spent=format_usd(budget.row.spent_usd),
            budget=format_usd(budget.budget_usd),
            used=min(budget.used, 1.0),
            used_text=f"{budget.used:.0%}",
            window=(
                f"since the retry of {iso_utc(budget.row.window_since)}"
                if budget.row.window_since is not None
                else "since it was created"
            ),
        )
        for budget in report.task_budgets
    ]
    last_day = report.period.until - 1e-6
    return {
        "first_day": _day_of(report.period.since),
        "last_day": _day_of(last_day),
        "since": iso_utc(report.period.since),
        "until": iso_utc(report.period.until),
        "total": {
            "cost": format_usd(report.total.cost_usd),
            "runs": report.total.runs,
            "tokens_in": format_tokens(report.total.input_tokens),
            "tokens_out": format_tokens(report.total.output_tokens),
        },
        "groups": groups,
        # A bar's full length: the largest value of its table (at least a cent, so an
        # all-zero table draws empty bars rather than dividing by zero).
        "peaks": {name: max(peak, 0.01) for name, peak in peaks.items()},
        "top_tasks": [
            {
                "task_id": task.task_id,
                "work_item": task.work_item,
                "title": task.title,
                "stage": stage_label(task.stage),
                "repository": task.repository,
                "cost": format_usd(task.spend.cost_usd),
                "runs": task.spend.runs,
            }
            for task in report.top_tasks
        ],
        "task_budget": format_usd(report.task_budget_usd) if report.task_budget_usd else "none",
        "budgets": budgets,
        "budgets_total": report.tasks_with_budget,
        "job_budgets": [
            {
                "job_id": job.job_id,
                "task_id": job.task_id,
                "work_item": job.work_item,
                "stage": stage_label(job.stage),
                "agent": job.agent,
                "recorded": format_usd(job.recorded_usd),
                "budget": format_usd(job.budget_usd),
            }
            for job in report.job_budgets
        ],
        "budget_low": BUDGET_LOW,
        "budget_high": BUDGET_HIGH,
    }


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else format_age(max(seconds, 0.0)) + " ago"


def _seconds_since(iso: str | None, now: float) -> float | None:
    if iso is None:
        return None
    return now - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _leader(leader: Mapping[str, Any] | None) -> str:
    """Whether this instance runs the maintenance that must run once (decision 0027)."""
    if leader is None:
        return "no maintenance in this process"
    if leader["election"] == "single-instance":
        return "this instance (the only one: SQLite)"
    if leader["is_leader"]:
        return f"this instance (advisory lock held since {leader['elected_at']})"
    return "another instance; this one's maintenance loops are on standby"


def health_view(status: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The Health page's values from a ``GET /status`` answer."""
    inbox = status["inbox"]
    outbox = status["outbox"]
    leases = status["transition_leases"]
    oldest = inbox.get("oldest_pending_age_s")
    loops = [
        {
            "name": str(loop["name"]),
            "state": str(loop["state"]),
            "restarts": int(loop.get("restarts") or 0),
            "last_error": loop.get("last_error") or "",
        }
        for loop in status["loops"]
    ]
    # A led loop on standby is healthy: another instance leads (decision 0027).
    problems = [
        f"loop {loop['name']} is {loop['state']}"
        for loop in loops
        if loop["state"] not in ("running", "standby")
    ]
    problems += [
        f"loop {loop['name']} was restarted {loop['restarts']} time(s); last error: "
        f"{loop['last_error'] or 'none recorded'}"
        for loop in loops
        if loop["restarts"]
    ]
    if leases["stale"]:
        problems.append(f"{leases['stale']} transition lease(s) held by a dead owner")
    if outbox.get("failed"):
        problems.append(f"{outbox['failed']} outbox message(s) failed for good")
    if inbox.get("failed"):
        problems.append(f"{inbox['failed']} inbox intent(s) failed")
    dead = [row for row in status["instances"] if not row["alive"]]
    if dead:
        problems.append(f"{len(dead)} instance(s) not stopped but not alive")
    return {
        "status": status,
        "leader": _leader(status.get("leader")),
        "uptime": format_age(float(status["uptime_s"])),
        "engine_tick": _age(_seconds_since(status["engine_last_tick_at"], now)),
        "loops": loops,
        "outbox_backlog": int(outbox.get("pending", 0)) + int(outbox.get("sending", 0)),
        "inbox_oldest": "none waiting" if oldest is None else format_age(float(oldest)),
        "leases": leases,
        "instances": [
            {**row, "heartbeat_age": _age(float(row["heartbeat_age_s"]))}
            for row in status["instances"]
        ],
        "stages": [
            (stage_label(stage), count) for stage, count in status["tasks_by_stage"].items()
        ],
        "problems": problems,
    }
