"""``orch costs`` for people: the cost report (:mod:`orchestrator.api.costs`) as Rich tables.

Every name in the tables is user text (repositories, titles, models), so nothing here is
Rich markup: cells are plain strings, styles are passed as ``style=``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from orchestrator.api.costs import CostReport, day_text, format_tokens, format_usd
from orchestrator.api.format import iso_utc
from orchestrator.store.costs import SpendRow

__all__ = ["cost_report_renderables"]

SPEND_COLUMNS: Final = ("cost", "runs", "tokens in", "tokens out")


def _spend_cells(row: SpendRow) -> list[str]:
    return [
        format_usd(row.cost_usd),
        str(row.runs),
        format_tokens(row.input_tokens),
        format_tokens(row.output_tokens),
    ]


def _table(title: str, *columns: str) -> Table:
    table = Table(*columns, *SPEND_COLUMNS, box=None, title=title, title_justify="left")
    for column in table.columns[len(columns) :]:
        column.justify = "right"
    return table


def _groupings(report: CostReport) -> Iterator[Table]:
    days = _table("per day (UTC; days with runs)", "day")
    for row in report.by_day:
        if row.runs:
            days.add_row(day_text(int(row.key[0])), *_spend_cells(row))
    yield days
    repositories = _table("per repository", "repository")
    for row in report.by_repository:
        repositories.add_row(Path(str(row.key[0])).name, *_spend_cells(row))
    yield repositories
    agents = _table("per agent and model", "agent", "model")
    for row in report.by_agent_model:
        agents.add_row(str(row.key[0]), str(row.key[1]) or "(default)", *_spend_cells(row))
    yield agents
    stages = _table("per stage", "stage")
    for row in report.by_stage:
        stages.add_row(str(row.key[0]), *_spend_cells(row))
    yield stages
    top = _table(f"top {len(report.top_tasks)} tasks", "work item", "title", "stage")
    for task in report.top_tasks:
        top.add_row(task.work_item, task.title, task.stage, *_spend_cells(task.spend))
    yield top


def _budgets(report: CostReport) -> Iterator[RenderableType]:
    if report.task_budgets:
        tasks = Table(
            "work item",
            "stage",
            "repository",
            "spent",
            "budget",
            "used",
            box=None,
            title=(
                f"task budgets ({len(report.task_budgets)} of {report.tasks_with_budget} "
                "running tasks, closest first)"
            ),
            title_justify="left",
        )
        for budget in report.task_budgets:
            tasks.add_row(
                budget.row.work_item,
                budget.row.stage,
                Path(budget.row.repository).name,
                format_usd(budget.row.spent_usd),
                format_usd(budget.budget_usd),
                Text(f"{budget.used:.0%}", style="red" if budget.used >= 1 else ""),
            )
        yield tasks
    else:
        yield Text("task budgets: no running task has one (task_budget_usd)")
    if report.job_budgets:
        jobs = Table(
            "job",
            "work item",
            "stage",
            "agent",
            "recorded",
            "run budget",
            box=None,
            title="running jobs with a run budget (a run's cost is recorded when it ends)",
            title_justify="left",
        )
        for job in report.job_budgets:
            jobs.add_row(
                str(job.job_id),
                job.work_item,
                job.stage,
                job.agent,
                format_usd(job.recorded_usd),
                format_usd(job.budget_usd),
            )
        yield jobs


def cost_report_renderables(report: CostReport) -> Iterator[RenderableType]:
    """What ``orch costs`` prints, in order: the period and total, the groupings, the
    top tasks, the budgets."""
    total = report.total
    yield Text.assemble(
        ("costs ", "bold"),
        f"{iso_utc(report.period.since)} to {iso_utc(report.period.until)} (UTC, until excluded)",
    )
    yield Text(
        f"total: {format_usd(total.cost_usd)} in {total.runs} runs, "
        f"{format_tokens(total.input_tokens)} tokens in, "
        f"{format_tokens(total.output_tokens)} out"
    )
    if total.runs:
        for table in _groupings(report):
            yield Text("")
            yield table
    yield Text("")
    yield from _budgets(report)
