"""The cost report's reads (``orchestrator.store.costs``) and the report built on them
(``orchestrator.api.costs``), on SQLite and PostgreSQL.

Rows are written through the store's own operations; the moments a run started are then
set through the table the store reads, never by sleeping. Days are UTC: a run at 23:59
and one at 12:00 stay on their day on both databases (PostgreSQL's integer cast rounds,
so a plain cast would move every afternoon run to the next day).
"""

from __future__ import annotations

import itertools
from dataclasses import astuple
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.api.costs import GROUPINGS, Period, cost_report, group_spend, total_spend
from orchestrator.kernel.events import EventKind
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store.costs import CostStore, SpendRow
from orchestrator.store.schema import agent_runs, events, jobs, tasks

DAY: Final = 86_400.0
DEC_1: Final = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
REPO_A: Final = "/srv/alpha"
REPO_B: Final = "/srv/beta"
numbers = itertools.count(1)


def add_task(store: Store, repository: str = REPO_A, stage: str = "development") -> int:
    work_item = f"C-{next(numbers)}"
    with store.transaction() as tx:
        task_id = tx.insert_task(
            work_item=work_item,
            repository=repository,
            title=f"Task {work_item}",
            description="",
            stage=stage,
            branch=f"orch/{work_item}",
            base_branch="main",
            base_sha="0" * 40,
            worktree=f"/tmp/wt/{work_item}",
        )
        tx.add_event(EventKind.TASK_CREATED, actor="test", task_id=task_id, to_stage=stage)
    return task_id


def add_run(
    store: Store,
    task_id: int,
    *,
    at: float,
    cost: float,
    stage: str = "development",
    agent: str = "claude",
    model: str = "opus",
    tokens: int = 100,
    status: str = "done",
    budget_usd: float | None = None,
) -> int:
    """A job of ``stage`` with one run that started ``at`` and recorded ``cost``; the
    job is left in ``status``."""
    with store.transaction() as tx:
        job_id = tx.enqueue_job(task_id=task_id, stage=stage, kind="agent", agent=agent, attempt=1)
        if status != "queued":
            assert tx.set_job_status_cas(job_id, "queued", "running", owner_boot_id="b")
            run_id = tx.insert_agent_run(
                job_id=job_id,
                task_id=task_id,
                agent=agent,
                model=model,
                effort="",
                attempt=1,
                log_path="/tmp/log",
            )
            if status != "running":
                tx.record_exit(
                    run_id,
                    exit_code=0,
                    input_tokens=tokens,
                    output_tokens=tokens // 2,
                    cost_usd=cost,
                )
                assert tx.set_job_status_cas(job_id, "running", status)
            tx.conn.execute(
                agent_runs.update().where(agent_runs.c.id == run_id).values(started_at=at)
            )
        if budget_usd is not None:
            tx.conn.execute(jobs.update().where(jobs.c.id == job_id).values(budget_usd=budget_usd))
    return job_id


def queue_job(store: Store, task_id: int, *, running: bool = True) -> int:
    """Another job for the task, running (what makes it count for the budgets) or
    only queued."""
    with store.transaction() as tx:
        job_id = tx.enqueue_job(
            task_id=task_id, stage="development", kind="agent", agent="claude", attempt=2
        )
        if running:
            assert tx.set_job_status_cas(job_id, "queued", "running", owner_boot_id="b")
        return job_id


def retried_at(store: Store, task_id: int, moment: float) -> None:
    with store.transaction() as tx:
        tx.add_event(EventKind.RETRIED, actor="test", task_id=task_id)
        tx.conn.execute(
            events.update()
            .where(events.c.task_id == task_id, events.c.kind == EventKind.RETRIED)
            .values(created_at=moment)
        )


def test_days_are_utc_days_on_both_databases(store: Store) -> None:
    task = add_task(store)
    add_run(store, task, at=DEC_1, cost=1.0)  # midnight: the day it opens
    add_run(store, task, at=DEC_1 + 12 * 3600 + 1, cost=2.0)  # afternoon
    add_run(store, task, at=DEC_1 + DAY - 0.001, cost=4.0)  # the last moment of the day
    add_run(store, task, at=DEC_1 + DAY, cost=8.0)  # the next day

    rows = group_spend(CostStore(store).spend_cube(DEC_1 - DAY, DEC_1 + 3 * DAY), "day")

    day = int(DEC_1 // DAY)
    assert [(row.key, row.cost_usd, row.runs) for row in rows] == [
        ((day,), 7.0, 3),
        ((day + 1,), 8.0, 1),
    ]


def _cube(rows: list[SpendRow]) -> list[tuple[object, ...]]:
    return sorted((*row.key, round(row.cost_usd, 9), *astuple(row)[2:]) for row in rows)


def test_whole_days_come_from_the_rollup_and_partial_days_from_the_runs(store: Store) -> None:
    """The cube of any period, whole days, partial ones or a stretch inside one day, is
    what summing its runs gives (the oracle: the runs' own grouped query), also after
    runs are recorded again with another model, moved to another day and deleted: the
    rollup follows every write of a run. Seen failing without the triggers (the whole
    days were empty) and with an update trigger that did not take the old values out."""
    costs = CostStore(store)
    alpha, beta = add_task(store, REPO_A), add_task(store, REPO_B)
    runs = []
    for day in range(4):
        for hour, task, model in ((1, alpha, "opus"), (13, beta, "haiku"), (23, alpha, "opus")):
            moment = DEC_1 + day * DAY + hour * 3600
            add_run(store, task, at=moment, cost=0.1 * (hour + day), model=model)
            runs.append(task)
    periods = [
        (DEC_1 + 6 * 3600, DEC_1 + 3 * DAY + 6 * 3600),  # partial first and last day
        (DEC_1, DEC_1 + 2 * DAY),  # whole days only
        (DEC_1 + 3600, DEC_1 + 2 * 3600),  # inside one day
        (DEC_1 - DAY, DEC_1 + 5 * DAY),  # beyond every run
    ]

    def check() -> None:
        for since, until in periods:
            assert _cube(costs.spend_cube(since, until)) == _cube(
                costs._runs_cube([(since, until)])
            ), (since, until)

    check()
    with store.transaction() as tx:
        run_ids = [row.id for row in tx.conn.execute(sa.select(agent_runs.c.id))]
        tx.record_exit(run_ids[0], exit_code=0, model="sonnet", cost_usd=5.0)
        tx.conn.execute(
            agent_runs.update()
            .where(agent_runs.c.id == run_ids[1])
            .values(started_at=DEC_1 + 2 * DAY + 60)
        )
        tx.conn.execute(agent_runs.delete().where(agent_runs.c.id == run_ids[2]))
    check()
    assert total_spend(costs.spend_cube(DEC_1 - DAY, DEC_1 + 5 * DAY)).runs == len(runs) - 1


def test_the_period_includes_since_and_excludes_until(store: Store) -> None:
    task = add_task(store)
    add_run(store, task, at=DEC_1 - 0.001, cost=1.0)
    add_run(store, task, at=DEC_1, cost=2.0)
    add_run(store, task, at=DEC_1 + DAY - 0.001, cost=4.0)
    add_run(store, task, at=DEC_1 + DAY, cost=8.0)

    total = total_spend(CostStore(store).spend_cube(DEC_1, DEC_1 + DAY))

    assert (total.cost_usd, total.runs) == (6.0, 2)


def test_groupings_name_repository_agent_model_and_stage(store: Store) -> None:
    alpha, beta = add_task(store, REPO_A), add_task(store, REPO_B)
    add_run(store, alpha, at=DEC_1, cost=1.0, stage="analysis", model="opus", tokens=10)
    add_run(store, alpha, at=DEC_1, cost=2.0, stage="development", model="sonnet", tokens=20)
    add_run(store, beta, at=DEC_1, cost=4.0, stage="development", agent="codex", model="")
    cube = CostStore(store).spend_cube(DEC_1, DEC_1 + DAY)

    def view(grouping: str) -> list[tuple[tuple[object, ...], float]]:
        return [(row.key, row.cost_usd) for row in group_spend(cube, grouping)]

    assert view("repository") == [((REPO_B,), 4.0), ((REPO_A,), 3.0)]
    assert view("agent_model") == [
        (("codex", ""), 4.0),
        (("claude", "sonnet"), 2.0),
        (("claude", "opus"), 1.0),
    ]
    assert view("stage") == [(("development",), 6.0), (("analysis",), 1.0)]
    tokens = group_spend(cube, "agent_model")[2]
    assert (tokens.input_tokens, tokens.output_tokens) == (10, 5)


def test_top_tasks_are_the_costliest_in_the_period(store: Store) -> None:
    cheap, dear, outside = add_task(store), add_task(store), add_task(store)
    add_run(store, cheap, at=DEC_1, cost=0.5)
    add_run(store, dear, at=DEC_1, cost=1.0)
    add_run(store, dear, at=DEC_1 + 60, cost=1.0)
    add_run(store, outside, at=DEC_1 - DAY, cost=100.0)

    top = CostStore(store).top_tasks(DEC_1, DEC_1 + DAY, limit=5)

    assert [(row.task_id, row.spend.cost_usd, row.spend.runs) for row in top] == [
        (dear, 2.0, 2),
        (cheap, 0.5, 1),
    ]
    assert CostStore(store).top_tasks(DEC_1, DEC_1 + DAY, limit=1)[0].task_id == dear


def test_top_tasks_cut_ties_by_the_older_task(store: Store) -> None:
    """The top is cut among the per-task sums before they meet the tasks: at the cut,
    equal spend goes to the older task, whatever order the sums come in."""
    tied = [add_task(store) for _ in range(4)]
    for task in reversed(tied):
        add_run(store, task, at=DEC_1, cost=0.25)
    dear = add_task(store)
    add_run(store, dear, at=DEC_1, cost=0.5)

    top = CostStore(store).top_tasks(DEC_1, DEC_1 + DAY, limit=3)

    assert [row.task_id for row in top] == [dear, tied[0], tied[1]]


def test_budgets_count_the_window_since_the_last_retry_and_each_repository(
    store: Store, tmp_path: Path
) -> None:
    retried = add_task(store, REPO_A)
    add_run(store, retried, at=DEC_1, cost=5.0)  # before the retry: not in the window
    retried_at(store, retried, DEC_1 + 10)
    add_run(store, retried, at=DEC_1 + 20, cost=1.0)
    queue_job(store, retried)
    fresh = add_task(store, REPO_A)
    add_run(store, fresh, at=DEC_1, cost=3.0)
    queue_job(store, fresh)
    idle = add_task(store, REPO_A)  # nothing running: not listed
    add_run(store, idle, at=DEC_1, cost=50.0)
    waiting = add_task(store, REPO_A)  # a job queued, none running: not listed either
    add_run(store, waiting, at=DEC_1, cost=40.0)
    queue_job(store, waiting, running=False)
    other = add_task(store, REPO_B)  # its repository has its own budget
    add_run(store, other, at=DEC_1, cost=1.0, status="running", budget_usd=2.5)
    settings = Settings(
        data_dir=tmp_path,
        task_budget_usd=4.0,
        repos={"beta": {"path": REPO_B, "task_budget_usd": 1.0}},
    )

    report = cost_report(store, settings, Period(DEC_1, DEC_1 + DAY), top=10)

    shown = [(b.row.task_id, b.row.spent_usd, b.budget_usd) for b in report.task_budgets]
    assert shown == [(fresh, 3.0, 4.0), (retried, 1.0, 4.0), (other, 0.0, 1.0)]
    assert report.tasks_with_budget == 3
    assert report.task_budgets[1].row.window_since == DEC_1 + 10
    assert [(j.task_id, j.budget_usd, j.status) for j in report.job_budgets] == [
        (other, 2.5, "running")
    ]
    data = report.to_dict()["budgets"]
    assert data["tasks"][0]["used"] == 0.75
    assert data["tasks"][1]["window_opened_at"] == "2026-12-01T00:00:10.000Z"
    # A repository without a budget (0 = none) lists none of its tasks.
    settings = Settings(data_dir=tmp_path, repos={"beta": {"path": REPO_B, "task_budget_usd": 1.0}})
    none_in_alpha = cost_report(store, settings, Period(DEC_1, DEC_1 + DAY), top=10)
    assert [b.row.task_id for b in none_in_alpha.task_budgets] == [other]


def test_the_budget_list_is_bounded_and_closest_first(store: Store, tmp_path: Path) -> None:
    ids = []
    for cost in (0.1, 0.9, 0.5, 0.3):
        task = add_task(store)
        add_run(store, task, at=DEC_1, cost=cost)
        queue_job(store, task)
        ids.append(task)

    report = cost_report(
        store, Settings(data_dir=tmp_path, task_budget_usd=1.0), Period(DEC_1, DEC_1 + DAY), 2
    )

    assert [b.row.task_id for b in report.task_budgets] == [ids[1], ids[2]]
    assert report.tasks_with_budget == 4


def test_an_empty_period_is_all_zero_days(store: Store, tmp_path: Path) -> None:
    report = cost_report(store, Settings(data_dir=tmp_path), Period(DEC_1, DEC_1 + 3 * DAY), 10)
    data = report.to_dict()
    assert [day["day"] for day in data["by_day"]] == ["2026-12-01", "2026-12-02", "2026-12-03"]
    assert data["total"] == {"cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0, "runs": 0}
    assert data["by_repository"] == data["top_tasks"] == data["budgets"]["tasks"] == []


runs_drawn = st.lists(
    st.tuples(
        st.sampled_from([REPO_A, REPO_B, "/srv/gamma"]),
        st.sampled_from(["analysis", "architecture", "development"]),
        st.sampled_from([("claude", "opus"), ("claude", "sonnet"), ("codex", "")]),
        st.floats(min_value=-2 * DAY, max_value=5 * DAY),  # around the period
        st.integers(min_value=0, max_value=10_000),  # cost in tenths of a cent
        st.integers(min_value=0, max_value=2**40),  # tokens
    ),
    max_size=12,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(runs_drawn)
def test_every_grouping_sums_to_the_total(store: Store, drawn: list[tuple]) -> None:  # type: ignore[type-arg]
    with store.transaction() as tx:  # a fresh set of runs for each example
        for table in (agent_runs, jobs, events, tasks):
            tx.conn.execute(table.delete())
    for repository, stage, (agent, model), offset, tenths, tokens in drawn:
        task = add_task(store, repository)
        add_run(
            store,
            task,
            at=DEC_1 + offset,
            cost=tenths / 1000,
            stage=stage,
            agent=agent,
            model=model,
            tokens=tokens,
        )
    costs = CostStore(store)
    since, until = DEC_1, DEC_1 + 3 * DAY
    cube = costs.spend_cube(since, until)
    total = total_spend(cube)
    inside = [run for run in drawn if since <= DEC_1 + run[3] < until]
    assert total.runs == len(inside)
    assert total.cost_usd == pytest.approx(sum(run[4] for run in inside) / 1000)
    assert total.input_tokens == sum(run[5] for run in inside)
    assert total.output_tokens == sum(run[5] // 2 for run in inside)
    for grouping in GROUPINGS:
        rows = group_spend(cube, grouping)
        assert sum(row.runs for row in rows) == total.runs, grouping
        assert sum(row.input_tokens for row in rows) == total.input_tokens, grouping
        assert sum(row.output_tokens for row in rows) == total.output_tokens, grouping
        assert sum(row.cost_usd for row in rows) == pytest.approx(total.cost_usd), grouping
        assert len({row.key for row in rows}) == len(rows), grouping
    top = costs.top_tasks(since, until, limit=100)
    assert sum(row.spend.runs for row in top) == total.runs
    assert {row.key[0] for row in group_spend(cube, "day")} <= set(Period(since, until).days)
    # Each repository's spend is what its runs cost (the oracle: the drawn runs).
    by_repository = {row.key[0]: row.runs for row in group_spend(cube, "repository")}
    for repository in {run[0] for run in inside}:
        assert by_repository[repository] == sum(1 for run in inside if run[0] == repository)


tasks_drawn = st.lists(
    st.lists(
        st.tuples(
            st.floats(min_value=-2 * DAY, max_value=5 * DAY),  # around the period
            st.sampled_from([0, 1, 2, 3, 8]),  # cost in eighths of a dollar: exact sums, ties
        ),
        max_size=3,
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    tasks_drawn,
    st.floats(min_value=-DAY, max_value=3 * DAY),
    st.floats(min_value=1, max_value=4 * DAY),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=1, max_value=3),
)
def test_top_tasks_by_all_time_spend_are_the_grouped_top(
    store: Store,
    drawn: list[list[tuple[float, int]]],
    start: float,
    length: float,
    limit: int,
    candidates: int,
    pages: int,
) -> None:
    """Visiting tasks by their spend over all time (``task_spend``, kept by triggers)
    finds the same top as grouping every run of the period, whatever the period, the
    ties, the page size and the number of pages before the grouped fallback; also after
    a run is moved out of the period and another deleted."""
    with store.transaction() as tx:  # a fresh set of runs for each example
        for table in (agent_runs, jobs, events, tasks):
            tx.conn.execute(table.delete())
    for runs in drawn:
        task = add_task(store)
        for offset, eighths in runs:
            add_run(store, task, at=DEC_1 + offset, cost=eighths / 8)
    costs = CostStore(store, top_candidates=candidates, top_candidate_pages=pages)
    since, until = DEC_1 + start, DEC_1 + start + length

    def check() -> None:
        found = costs.top_tasks(since, until, limit)
        assert found == costs.top_tasks_grouped(since, until, limit)

    check()
    with store.transaction() as tx:
        run_ids = sorted(row.id for row in tx.conn.execute(sa.select(agent_runs.c.id)))
        if run_ids:
            tx.conn.execute(
                agent_runs.update()
                .where(agent_runs.c.id == run_ids[0])
                .values(started_at=DEC_1 - 10 * DAY)
            )
            tx.conn.execute(agent_runs.delete().where(agent_runs.c.id == run_ids[-1]))
    check()


def test_top_tasks_visit_past_a_tie_at_the_cut(store: Store) -> None:
    """Tasks of equal spend are visited newest first, so a tie at the cut is not the end:
    the older task still takes the place (seen failing with the stop rule on ``>=``)."""
    tied = [add_task(store) for _ in range(3)]
    for task in tied:
        add_run(store, task, at=DEC_1, cost=1.0)

    top = CostStore(store, top_candidates=1).top_tasks(DEC_1, DEC_1 + DAY, limit=1)

    assert [row.task_id for row in top] == [tied[0]]
