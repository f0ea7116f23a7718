"""Human progress output: the events trail as it happens, and per-stage summaries."""

from __future__ import annotations

from collections import defaultdict

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from orchestrator.kernel.stages import STAGE_ORDER, stage_label
from orchestrator.store import Event, Store, Task
from orchestrator.transitions import EventKind

__all__ = ["EventPrinter", "format_age", "task_summary_rows"]


def format_age(seconds: float) -> str:
    """12.3s, 4m05s, 2h03m: short and readable."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class EventPrinter:
    """Prints new events as one line each; call :meth:`poll` from the engine loop."""

    def __init__(self, store: Store, console: Console, language: str, *, quiet: bool = False):
        self.store = store
        self.console = console
        self.language = language
        self.quiet = quiet
        self.last_id = 0
        self._started: dict[int, float] = {}
        self._work_items: dict[int, str] = {}

    def skip_existing(self) -> None:
        """Start from now: old events are history, not progress."""
        newest = self.store.events_after(self.last_id, limit=1_000_000)
        if newest:
            self.last_id = newest[-1].id

    def poll(self) -> None:
        for event in self.store.events_after(self.last_id):
            self.last_id = event.id
            line = self._line(event)
            if line and not self.quiet:
                # The line is markup built with every user part escaped (see _line).
                self.console.print(Text.from_markup(line))

    def _work_item(self, task_id: int | None) -> str:
        if task_id is None:
            return "-"
        if task_id not in self._work_items:
            self._work_items[task_id] = self.store.get_task(task_id).work_item
        return self._work_items[task_id]

    def _line(self, event: Event) -> str | None:
        who = f"[bold]{escape(self._work_item(event.task_id))}[/bold]"
        reason = escape(event.reason)
        label = stage_label(event.to_stage or "", self.language)
        if event.kind == EventKind.TASK_CREATED:
            return f"{who} created: {reason}"
        if event.kind in (EventKind.STAGE_CHANGED, EventKind.APPROVED):
            return f"{who} ▶ {label}"
        if event.kind == EventKind.JOB_STARTED and event.job_id is not None:
            self._started[event.job_id] = event.created_at
            return f"{who}   running {reason}"
        if event.kind in (EventKind.JOB_EXITED, EventKind.JOB_KILLED):
            started = self._started.pop(event.job_id or -1, None)
            took = f" after {format_age(event.created_at - started)}" if started else ""
            return f"{who}   {reason}{took}"
        if event.kind == EventKind.GATE_VERDICT:
            passed = (event.data or {}).get("outcome") == "pass"
            mark = "[green]✓[/green]" if passed else "[red]✗[/red]"
            return f"{who}   {mark} gate: {reason}"
        if event.kind == EventKind.RETRY:
            return f"{who}   [yellow]retry[/yellow] {reason}"
        if event.kind == EventKind.ROLLBACK:
            return f"{who} [yellow]◀ rollback to {label}[/yellow]: {reason}"
        if event.kind == EventKind.FAILED:
            return f"{who} [red]failed[/red]: {reason}"
        if event.kind == EventKind.CANCELLED:
            return f"{who} cancelled: {reason}"
        return None


def task_summary_rows(store: Store, task: Task) -> list[tuple[str, str, str, str, str, str]]:
    """One row per stage that ran: stage, agent, attempts, duration, cost, last result."""
    jobs = store.task_jobs(task.id)
    runs_by_job = defaultdict(list)
    for run in store.task_runs(task.id):
        runs_by_job[run.job_id].append(run)
    by_stage: dict[str, list[tuple[str, float, float, str]]] = defaultdict(list)
    for job in jobs:
        if job.started_at is None:
            continue
        duration = (job.finished_at or job.updated_at) - job.started_at
        cost = sum(run.cost_usd for run in runs_by_job[job.id])
        by_stage[job.stage].append((job.agent, duration, cost, job.status))
    rows = []
    for stage in STAGE_ORDER:
        entries = by_stage.get(stage)
        if not entries:
            continue
        rows.append(
            (
                stage,
                entries[-1][0],
                str(len(entries)),
                format_age(sum(e[1] for e in entries)),
                f"${sum(e[2] for e in entries):.4f}",
                entries[-1][3],
            )
        )
    return rows
