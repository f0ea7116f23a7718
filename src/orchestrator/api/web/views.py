"""What the dashboard's pages show, as plain values built from store rows. Pure: the
routes read the store and git, these functions shape what the templates draw."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from orchestrator.api.format import iso_utc
from orchestrator.kernel.events import EventKind
from orchestrator.kernel.stages import (
    CANCELLED,
    HUMAN_GATE_STAGES,
    STAGE_ORDER,
    TERMINAL_STAGES,
    stage_label,
)
from orchestrator.store import ACTIVE_JOB_STATUSES, AgentRun, Event, Job, Task
from orchestrator.store.listing import TaskFacts

__all__ = [
    "BOARD_STAGES",
    "STATE_FILTERS",
    "Card",
    "RunRow",
    "TimelineRow",
    "card_for",
    "duration_text",
    "matches_state",
    "run_rows",
    "task_state",
    "timeline",
]

# The board's columns, left to right: the forward path, then cancelled.
BOARD_STAGES: Final[tuple[str, ...]] = (*STAGE_ORDER, CANCELLED)
# The board's state filter: value -> label.
STATE_FILTERS: Final[Mapping[str, str]] = {
    "": "All",
    "active": "Active",
    "waiting": "Waiting for a person",
    "failed": "Failed",
    "ended": "Done or cancelled",
}
# Event kinds the timeline marks, by the family they belong to.
_FAMILIES: Final[Mapping[str, str]] = {
    EventKind.GATE_VERDICT: "verdict",
    EventKind.RETRY: "retry",
    EventKind.RETRIED: "retry",
    EventKind.ROLLBACK: "rollback",
    EventKind.DEPLOY_UNHEALTHY: "rollback",
    EventKind.EFFECT: "effect",
    EventKind.EFFECT_DONE: "effect",
    EventKind.EFFECT_UNCERTAIN: "effect",
    EventKind.FAILED: "failed",
    EventKind.APPROVED: "human",
    EventKind.REJECTED: "human",
    EventKind.CANCELLED: "human",
}


def task_state(task: Task) -> str:
    """One word for the board's filter: failed, waiting, ended or active."""
    if task.failed:
        return "failed"
    if task.stage in TERMINAL_STAGES:
        return "ended"
    if task.stage in HUMAN_GATE_STAGES:
        return "waiting"
    return "active"


def matches_state(task: Task, wanted: str) -> bool:
    """Whether ``task`` passes the board's state filter (``""`` passes everything)."""
    return not wanted or task_state(task) == wanted


def duration_text(seconds: float) -> str:
    """``42s``, ``3m 12s``, ``2h 05m``, ``3d 4h``: short enough for a card."""
    whole = max(int(seconds), 0)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


@dataclass(frozen=True)
class Card:
    """One task on the board."""

    id: int
    work_item: str
    title: str
    repository: str
    repository_name: str
    stage: str
    stage_label: str
    agent: str | None
    job_status: str | None
    attempt: int
    cost_usd: float
    stage_entered_at: float
    stage_entered_iso: str
    elapsed: str
    waiting: bool
    failed: bool
    failed_reason: str | None
    state: str


def card_for(task: Task, facts: TaskFacts | None, now: float) -> Card:
    """The card of ``task`` given its listing facts (cost, newest job, stage entry)."""
    entered = facts.stage_entered_at if facts is not None else task.created_at
    job: Job | None = facts.current_job if facts is not None else None
    return Card(
        id=task.id,
        work_item=task.work_item,
        title=task.title,
        repository=task.repository,
        repository_name=task.repository.rstrip("/").rpartition("/")[2] or task.repository,
        stage=task.stage,
        stage_label=stage_label(task.stage),
        agent=job.agent if job is not None and task.stage not in TERMINAL_STAGES else None,
        job_status=job.status if job is not None else None,
        attempt=task.attempt,
        cost_usd=facts.cost_usd if facts is not None else 0.0,
        stage_entered_at=entered,
        stage_entered_iso=iso_utc(entered) or "",
        elapsed=duration_text(now - entered),
        waiting=task.stage in HUMAN_GATE_STAGES and not task.failed,
        failed=task.failed,
        failed_reason=task.failed_reason,
        state=task_state(task),
    )


@dataclass(frozen=True)
class TimelineRow:
    """One event of the task's trail."""

    id: int
    at: str
    kind: str
    family: str
    actor: str
    from_stage: str | None
    to_stage: str | None
    reason: str
    details: Sequence[tuple[str, str]] = field(default_factory=tuple)


def _details(data: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    if not data:
        return ()
    shown: list[tuple[str, str]] = []
    for key, value in list(data.items())[:12]:
        text = value if isinstance(value, str) else repr(value)
        if len(text) > 300:
            text = text[:299] + "…"
        shown.append((str(key)[:60], text))
    return tuple(shown)


def timeline(events: Sequence[Event]) -> list[TimelineRow]:
    """Every event, oldest first, with its family for the page's markers."""
    rows = []
    for event in events:
        family = _FAMILIES.get(event.kind, "")
        if not family and event.kind == EventKind.STAGE_CHANGED:
            family = "stage"
        if event.kind == EventKind.GATE_VERDICT and event.data:
            verdict = str(event.data.get("verdict") or event.data.get("result") or "")
            if verdict:
                family = f"verdict verdict-{verdict.lower()[:12]}"
        rows.append(
            TimelineRow(
                id=event.id,
                at=iso_utc(event.created_at) or "",
                kind=event.kind,
                family=family,
                actor=event.actor,
                from_stage=event.from_stage,
                to_stage=event.to_stage,
                reason=event.reason,
                details=_details(event.data),
            )
        )
    return rows


@dataclass(frozen=True)
class RunRow:
    """One agent run of the task."""

    id: int
    job_id: int
    agent: str
    model: str
    attempt: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    started_at: str
    duration: str
    exit_code: int | None
    running: bool


def run_rows(runs: Sequence[AgentRun], job_status: Mapping[int, str], now: float) -> list[RunRow]:
    """The task's runs, newest first; running: no exit recorded and its job active."""
    rows = []
    for run in reversed(runs):
        running = run.exit_recorded_at is None and job_status.get(run.job_id) in ACTIVE_JOB_STATUSES
        end = now if running else (run.exit_recorded_at or now)
        rows.append(
            RunRow(
                id=run.id,
                job_id=run.job_id,
                agent=run.agent,
                model=run.model or "—",
                attempt=run.attempt,
                input_tokens=run.input_tokens,
                output_tokens=run.output_tokens,
                cost_usd=run.cost_usd,
                started_at=iso_utc(run.started_at) or "",
                duration=duration_text(end - run.started_at),
                exit_code=run.exit_code,
                running=running,
            )
        )
    return rows
