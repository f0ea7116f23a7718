"""The live card of a task: built from facts, rendered as text and buttons for a chat.

Theory of operation
-------------------
:func:`load_card_view` reads the facts (task, agent runs, jobs, the cancel event);
:func:`build_card_view` and :func:`render_card` are pure. The card has one row per stage
of the task's pipeline (skipped stages omitted; ``created`` and ``done`` are the header's
business). A row's marker depends only on the task's **position** in ``STAGE_ORDER``,
never on which stages have runs (ORCH-091 D2)::

    ✅  stages before the position (all of them once the task is done)
    🔄  the current stage            ❌ the current stage of a failed task
    ⏸️  the human gate, waiting      ⛔ where a cancelled task stopped
    ▫️  stages after the position: after a rollback, later stages lose their ✅

Per stage, each agent shows the cost summed over **all** its runs in that stage, with
model, effort and attempt from its last run (ORCH-091 D3); the total is the sum over
every run of the task, so it always equals ``SUM(agent_runs.cost_usd)``. Labels come
from :func:`~orchestrator.kernel.stages.stage_label` (en / ru; an unknown stage gets a
neutral capitalised label).

Buttons (``callback_data`` ``"<action>:<task id>"``): approve and reject at the human
gate (reject asks for the reason: :mod:`~orchestrator.integrations.reject_prompt`), retry
when failed, cancel while not finished.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from orchestrator.auth import telegram_buttons_enabled
from orchestrator.kernel.stages import (
    CANCELLED,
    CREATED,
    DONE,
    HUMAN_GATE_STAGES,
    JOB_STAGES,
    REJECT_TARGET,
    STAGE_ORDER,
    TERMINAL_STAGES,
    stage_label,
)
from orchestrator.settings import Settings
from orchestrator.store import AgentRun, Store, Task
from orchestrator.text_input import display_safe

__all__ = [
    "ACTIONS",
    "MAX_TEXT_CHARS",
    "AgentLine",
    "CardView",
    "Mark",
    "RenderedCard",
    "StageRow",
    "build_card_view",
    "callback_data",
    "card_actions",
    "load_card_view",
    "parse_callback_data",
    "render_alert",
    "render_card",
]

# Telegram's limit for a message's text.
MAX_TEXT_CHARS: Final = 4096
MAX_REASON_CHARS: Final = 300
ACTIONS: Final = ("approve", "reject", "retry", "cancel")


class Mark:
    DONE: Final = "✅"
    CURRENT: Final = "🔄"
    WAITING: Final = "⏸️"
    FAILED: Final = "❌"
    CANCELLED: Final = "⛔"
    LATER: Final = "▫️"


WORDS: Final[Mapping[str, Mapping[str, str]]] = {
    "en": {
        "failed_at": "Failed at",
        "waits": "waits for approval",
        "attempt": "attempt",
        "runs": "runs",
        "total": "Total",
        "approve": "✅ Approve",
        "reject": "↩️ Reject",
        "retry": "🔁 Retry",
        "cancel": "✖️ Cancel",
    },
    "ru": {
        "failed_at": "Ошибка на этапе",
        "waits": "ждёт подтверждения",
        "attempt": "попытка",
        "runs": "запусков",
        "total": "Итого",
        "approve": "✅ Подтвердить",
        "reject": "↩️ Отклонить",
        "retry": "🔁 Повторить",
        "cancel": "✖️ Отменить",
    },
}


@dataclass(frozen=True)
class AgentLine:
    """One agent's work in one stage: all its runs summed, the last run's details."""

    agent: str
    model: str
    effort: str
    attempt: int
    runs: int
    cost_usd: float


@dataclass(frozen=True)
class StageRow:
    stage: str
    mark: str
    agents: tuple[AgentLine, ...] = ()


@dataclass(frozen=True)
class CardView:
    """Everything the card shows, independent of language."""

    task_id: int
    work_item: str
    title: str
    stage: str
    attempt: int
    failed_reason: str | None
    rows: tuple[StageRow, ...]
    total_cost_usd: float
    actions: tuple[str, ...]


@dataclass(frozen=True)
class RenderedCard:
    text: str
    reply_markup: dict[str, Any]

    @property
    def digest(self) -> str:
        """Identifies what the chat shows: equal digests need no edit."""
        blob = json.dumps([self.text, self.reply_markup], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def callback_data(action: str, task_id: int) -> str:
    return f"{action}:{task_id}"


def parse_callback_data(data: str) -> tuple[str, int] | None:
    """``"approve:12"`` -> ``("approve", 12)``; None for anything else."""
    action, _, number = data.partition(":")
    if action not in ACTIONS or not number.isdigit() or len(number) > 12:
        return None
    return action, int(number)


def card_actions(task: Task) -> tuple[str, ...]:
    """The buttons a task's card offers now."""
    if task.stage in TERMINAL_STAGES:
        return ()
    actions: list[str] = []
    if task.stage in HUMAN_GATE_STAGES and not task.failed:
        actions.append("approve")
        if task.stage in REJECT_TARGET:
            actions.append("reject")
    if task.failed and task.stage in JOB_STAGES:
        actions.append("retry")
    actions.append("cancel")
    return tuple(actions)


def _mark(index: int, position: int | None, task: Task) -> str:
    if position is None or index > position:
        return Mark.LATER
    if index < position:
        return Mark.DONE
    if task.stage == CANCELLED:
        return Mark.CANCELLED
    if task.failed:
        return Mark.FAILED
    if task.stage in HUMAN_GATE_STAGES:
        return Mark.WAITING
    return Mark.CURRENT


def _agent_lines(runs: Sequence[AgentRun]) -> tuple[AgentLine, ...]:
    by_agent: dict[str, list[AgentRun]] = {}
    for run in sorted(runs, key=lambda r: r.id):
        by_agent.setdefault(run.agent, []).append(run)
    lines = []
    for agent, own in by_agent.items():
        last = own[-1]
        lines.append(
            AgentLine(
                agent=agent,
                model=last.model,
                effort=last.effort,
                attempt=last.attempt,
                runs=len(own),
                cost_usd=sum(run.cost_usd for run in own),
            )
        )
    return tuple(lines)


def build_card_view(
    task: Task,
    stages: Sequence[str],
    runs: Sequence[AgentRun],
    run_stages: Mapping[int, str],
    *,
    cancelled_from: str | None = None,
) -> CardView:
    """The card of ``task``: ``stages`` is its pipeline's forward path, ``run_stages``
    maps a job id to the stage it ran in, ``cancelled_from`` is where a cancelled task
    stood when it was cancelled."""
    position_stage = cancelled_from if task.stage == CANCELLED else task.stage
    position = STAGE_ORDER.index(position_stage) if position_stage in STAGE_ORDER else None
    rows = []
    for stage in stages:
        if stage in (CREATED, DONE):
            continue
        index = STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)
        stage_runs = [run for run in runs if run_stages.get(run.job_id) == stage]
        rows.append(StageRow(stage, _mark(index, position, task), _agent_lines(stage_runs)))
    return CardView(
        task_id=task.id,
        work_item=task.work_item,
        title=task.title,
        stage=task.stage,
        attempt=task.attempt,
        failed_reason=task.failed_reason,
        rows=tuple(rows),
        total_cost_usd=sum(run.cost_usd for run in runs),
        actions=card_actions(task),
    )


def _words(language: str) -> Mapping[str, str]:
    return WORDS.get(language, WORDS["en"])


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _agent_text(line: AgentLine, words: Mapping[str, str]) -> str:
    details = ", ".join(part for part in (line.model, line.effort) if part)
    text = line.agent + (f" ({details})" if details else "")
    text += f" · {words['attempt']} {line.attempt}"
    if line.runs > 1:
        text += f" · {words['runs']}: {line.runs}"
    return text + f" · ${line.cost_usd:.2f}"


def _status_line(view: CardView, language: str, words: Mapping[str, str]) -> str:
    label = stage_label(view.stage, language)
    if view.stage == DONE:
        return f"📦 {label}"
    if view.stage == CANCELLED:
        return f"{Mark.CANCELLED} {label}"
    if view.failed_reason is not None:
        failed_at = stage_label(view.stage, language)
        return f"{Mark.FAILED} {words['failed_at']} {failed_at}: " + _clip(
            view.failed_reason, MAX_REASON_CHARS
        )
    if view.stage in HUMAN_GATE_STAGES:
        return f"{Mark.WAITING} {label} — {words['waits']}"
    suffix = f" · {words['attempt']} {view.attempt}" if view.attempt > 1 else ""
    return f"{Mark.CURRENT} {label}{suffix}"


def render_card(view: CardView, language: str = "en") -> RenderedCard:
    """The card as Telegram shows it: plain text (no parse mode) and inline buttons."""
    words = _words(language)
    title = _clip(display_safe(view.title), 200)
    lines = [f"📋 {view.work_item} · {title}", _status_line(view, language, words)]
    lines.append("")
    for row in view.rows:
        line = f"{row.mark} {stage_label(row.stage, language)}"
        if row.agents:
            line += " — " + "; ".join(_agent_text(agent, words) for agent in row.agents)
        lines.append(line)
    lines.append("")
    lines.append(f"💰 {words['total']}: ${view.total_cost_usd:.2f}")
    text = "\n".join(lines)
    if len(text) > MAX_TEXT_CHARS:
        text = text[: MAX_TEXT_CHARS - 1] + "…"
    buttons = [
        {"text": words[action], "callback_data": callback_data(action, view.task_id)}
        for action in view.actions
    ]
    # An empty keyboard on an edit removes the buttons of a finished task.
    return RenderedCard(text, {"inline_keyboard": [buttons] if buttons else []})


def render_alert(message: str, *, work_item: str | None = None, title: str | None = None) -> str:
    """An alert: its own message, naming the task it is about."""
    shown = _clip(display_safe(title or ""), 200)
    head = "⚠️ " + (f"{work_item} · {shown}" if work_item else "orchestrator")
    text = f"{head}\n{message.strip()}"
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


def load_card_view(store: Store, settings: Settings, task_id: int) -> CardView:
    """Read the facts of a task's card from the store and build it."""
    task = store.get_task(task_id)
    runs = store.task_runs(task.id)
    run_stages = {job.id: job.stage for job in store.task_jobs(task.id)}
    cancelled_from = None
    if task.stage == CANCELLED:
        for event in reversed(store.task_events(task.id)):
            if event.to_stage == CANCELLED and event.from_stage:
                cancelled_from = event.from_stage
                break
    stages = settings.pipeline_for(Path(task.repository)).stages()
    view = build_card_view(task, stages, runs, run_stages, cancelled_from=cancelled_from)
    if not telegram_buttons_enabled(settings):
        # No telegram_allowed_users: nobody may press, so the card offers nothing.
        view = replace(view, actions=())
    return view
