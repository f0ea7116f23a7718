"""Human progress output: the events trail as it happens, the running jobs, and
per-stage summaries.

:class:`JobBoard` is what ``orch run`` shows of each running job: its elapsed time and
the last line of its output (read from the run's log, masked). On a terminal it is a
table refreshed in place under the events trail (Rich ``Live``); piped, it is a plain
line per job whenever its last line changed, at most every
:data:`PLAIN_PROGRESS_INTERVAL_S` per job, so a log file stays readable.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from orchestrator.api.format import format_age
from orchestrator.api.run_logs import UnreadableLogError, masked_log, read_log
from orchestrator.kernel.events import EventKind
from orchestrator.kernel.stages import STAGE_ORDER, stage_label
from orchestrator.store import Event, Job, Store, Task

__all__ = [
    "PLAIN_PROGRESS_INTERVAL_S",
    "EventPrinter",
    "JobBoard",
    "RunningJob",
    "last_output_line",
    "task_summary_rows",
]

# Piped output: the least time between two progress lines of one job.
PLAIN_PROGRESS_INTERVAL_S: Final = 10.0
# How often the board reads the running jobs' logs again.
BOARD_REFRESH_S: Final = 0.5
# How much of a log's end is read for its last line.
LAST_LINE_BYTES: Final = 8 * 1024
MAX_LINE_CHARS: Final = 300


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


def last_output_line(path: Path, secrets: frozenset[str]) -> str:
    """The last non-empty line of the log at ``path``, masked; "" when there is none.

    The structured result line an agent ends with (JSON) is skipped: it is not news."""
    try:
        text = read_log(path, max_bytes=LAST_LINE_BYTES).text
    except (OSError, UnreadableLogError):
        return ""
    for raw in reversed(text.splitlines()):
        line = raw.strip()
        if line and not line.startswith("{"):
            return masked_log(line, secrets)[:MAX_LINE_CHARS]
    return ""


@dataclass(frozen=True)
class RunningJob:
    """One running job as the board shows it."""

    job_id: int
    work_item: str
    stage: str
    agent: str
    attempt: int
    pid: int | None
    started_at: float
    last_line: str


class JobBoard:
    """The running jobs of ``orch run``; call :meth:`update` from the engine loop."""

    def __init__(
        self,
        store: Store,
        console: Console,
        secrets: frozenset[str],
        *,
        live: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.console = console
        self.secrets = secrets
        self.live = live
        self.clock = clock
        self._lock = threading.Lock()  # Rich's refresh thread renders while we update
        self._jobs: list[RunningJob] = []
        self._read_at = 0.0
        self._printed: dict[int, tuple[float, str]] = {}
        self._work_items: dict[int, str] = {}

    @property
    def jobs(self) -> list[RunningJob]:
        with self._lock:
            return list(self._jobs)

    def update(self, jobs: Sequence[Job]) -> None:
        """Read the running ``jobs``' logs again (at most every :data:`BOARD_REFRESH_S`);
        piped, print the lines that changed."""
        now = time.monotonic()
        if now - self._read_at < BOARD_REFRESH_S:
            return
        self._read_at = now
        board = [entry for entry in map(self._entry, jobs) if entry is not None]
        with self._lock:
            self._jobs = board
        if not self.live:
            self._print_changed(board)

    def _entry(self, job: Job) -> RunningJob | None:
        run = self.store.job_run(job.id)
        if run is None:
            return None
        if job.task_id not in self._work_items:
            self._work_items[job.task_id] = self.store.get_task(job.task_id).work_item
        return RunningJob(
            job_id=job.id,
            work_item=self._work_items[job.task_id],
            stage=job.stage,
            agent=job.agent,
            attempt=job.attempt,
            pid=job.pid,
            started_at=run.started_at,
            last_line=last_output_line(Path(run.log_path), self.secrets),
        )

    def _print_changed(self, board: list[RunningJob]) -> None:
        now = time.monotonic()
        for entry in board:
            printed_at, line = self._printed.get(entry.job_id, (None, ""))
            if not entry.last_line or entry.last_line == line:
                continue
            if printed_at is not None and now - printed_at < PLAIN_PROGRESS_INTERVAL_S:
                continue
            self._printed[entry.job_id] = (now, entry.last_line)
            self.console.print(Text(self.plain_line(entry)))

    def plain_line(self, entry: RunningJob) -> str:
        elapsed = format_age(max(0.0, self.clock() - entry.started_at))
        return f"{entry.work_item}   {entry.stage} {elapsed} │ {entry.last_line}"

    def render(self) -> RenderableType:
        """The table of running jobs (for Rich ``Live``); elapsed times as of now."""
        jobs = self.jobs
        if not jobs:
            return Text("")
        table = Table(box=None, show_header=False, pad_edge=False, expand=True)
        table.add_column("task", no_wrap=True, style="bold")
        table.add_column("stage", no_wrap=True)
        table.add_column("elapsed", no_wrap=True, justify="right")
        table.add_column("output", no_wrap=True, overflow="ellipsis", style="dim", ratio=1)
        now = self.clock()
        for entry in jobs:
            table.add_row(
                Text(entry.work_item),
                Text(f"{entry.stage} · {entry.agent} #{entry.attempt}"),
                Text(format_age(max(0.0, now - entry.started_at))),
                Text(entry.last_line),
            )
        return table
