"""The API's paged reads and the metrics' grouped reads, on SQLite and PostgreSQL.

Rows are written through the store's own operations (``Tx``); times are made
deterministic by writing ``created_at`` of events through the same table the store
reads, never by sleeping.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.kernel.events import EventKind
from orchestrator.store import Store
from orchestrator.store.listing import ListingStore
from orchestrator.store.metrics import (
    JOB_RUN_BUCKETS_S,
    STAGE_DURATION_BUCKETS_S,
    MetricsStore,
)
from orchestrator.store.schema import events, jobs, webhook_deliveries


def add_task(store: Store, work_item: str, stage: str = "analysis") -> int:
    with store.transaction() as tx:
        task_id = tx.insert_task(
            work_item=work_item,
            repository="/srv/repo",
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


def cross(
    store: Store, task_id: int, old: str, new: str, kind: str = EventKind.STAGE_CHANGED
) -> None:
    with store.transaction() as tx:
        assert tx.update_task_stage_cas(task_id, old, new)
        tx.add_event(kind, actor="test", task_id=task_id, from_stage=old, to_stage=new)


def set_event_times(store: Store, task_id: int, times: list[float]) -> None:
    """Give the task's events, in id order, these ``created_at`` values."""
    with store.transaction() as tx:
        ids = [
            row[0]
            for row in tx.conn.execute(
                sa.select(events.c.id).where(events.c.task_id == task_id).order_by(events.c.id)
            )
        ]
        assert len(ids) == len(times)
        for event_id, moment in zip(ids, times, strict=True):
            tx.conn.execute(
                events.update().where(events.c.id == event_id).values(created_at=moment)
            )


def run_job(
    store: Store, task_id: int, stage: str, *, run_s: float, cost: float, tokens: int
) -> int:
    with store.transaction() as tx:
        job_id = tx.enqueue_job(
            task_id=task_id, stage=stage, kind="agent", agent="claude", attempt=1
        )
        assert tx.set_job_status_cas(job_id, "queued", "running", owner_boot_id="b")
        run_id = tx.insert_agent_run(
            job_id=job_id,
            task_id=task_id,
            agent="claude",
            model="opus",
            effort="",
            attempt=1,
            log_path="/tmp/log",
        )
        tx.record_exit(
            run_id, exit_code=0, input_tokens=tokens, output_tokens=tokens // 2, cost_usd=cost
        )
        assert tx.set_job_status_cas(job_id, "running", "done")
        started = tx.conn.execute(
            sa.select(jobs.c.started_at).where(jobs.c.id == job_id)
        ).scalar_one()
        tx.conn.execute(
            jobs.update().where(jobs.c.id == job_id).values(finished_at=started + run_s)
        )
    return job_id


def test_tasks_page_through_without_loss_or_repeat_across_inserts(store: Store) -> None:
    listing = ListingStore(store)
    ids = [add_task(store, f"T-{n}") for n in range(7)]

    first = listing.tasks_page(stage=None, before_id=None, limit=3)
    assert [t.id for t in first] == ids[::-1][:4]  # limit + 1: the extra says "more"
    add_task(store, "T-new")  # newer than every cursor: never shows up behind it
    second = listing.tasks_page(stage=None, before_id=first[2].id, limit=3)
    third = listing.tasks_page(stage=None, before_id=second[2].id, limit=3)

    seen = [t.id for t in first[:3] + second[:3] + third[:3]]
    assert seen == ids[::-1]
    assert len(third) == 1


def test_task_facts_sum_cost_and_name_the_newest_job_and_stage_entry(store: Store) -> None:
    listing = ListingStore(store)
    task_id = add_task(store, "F-1")
    idle = add_task(store, "F-2")
    run_job(store, task_id, "analysis", run_s=3, cost=0.25, tokens=100)
    newest = run_job(store, task_id, "analysis", run_s=4, cost=0.5, tokens=100)
    cross(store, task_id, "analysis", "brd-approval")
    cross(store, task_id, "brd-approval", "analysis", EventKind.REJECTED)
    cross(store, task_id, "analysis", "brd-approval")
    with store.transaction() as tx:  # an attempt that did not cross changes nothing
        tx.add_event(
            EventKind.DEFERRED,
            actor="t",
            task_id=task_id,
            from_stage="brd-approval",
            to_stage="architecture",
        )
    # created, job x2 (no events), 3 crossings, 1 deferral
    set_event_times(store, task_id, [100.0, 200.0, 300.0, 400.0, 500.0])

    facts = listing.task_facts([store.get_task(task_id), store.get_task(idle)])

    assert facts[task_id].cost_usd == pytest.approx(0.75)
    assert facts[task_id].current_job is not None
    assert facts[task_id].current_job.id == newest
    assert facts[task_id].stage_entered_at == 400.0  # the last entry of brd-approval
    assert facts[idle].cost_usd == 0
    assert facts[idle].current_job is None
    # Entered at its creation (the task.created event, written with the row).
    assert facts[idle].stage_entered_at == pytest.approx(store.get_task(idle).created_at, abs=5)


def test_queue_page_and_counts(store: Store) -> None:
    listing = ListingStore(store)
    task_id = add_task(store, "Q-1")
    with store.transaction() as tx:
        queued = [
            tx.enqueue_job(task_id=task_id, stage="analysis", kind="agent", agent="a", attempt=n)
            for n in range(1, 5)
        ]
        assert tx.set_job_status_cas(queued[1], "queued", "running", owner_boot_id="b")
    run_job(store, task_id, "analysis", run_s=1, cost=0, tokens=0)  # done: not queued

    first = listing.queue_page(after_id=None, limit=2)
    rest = listing.queue_page(after_id=first[1][0].id, limit=2)

    assert [job.id for job, _ in first[:2] + rest] == queued
    assert listing.queue_counts() == {"queued": 3, "deferred": 0, "running": 1, "finalizing": 0}


def test_queue_pages_merge_every_status_in_id_order_with_their_tasks(store: Store) -> None:
    """A page takes the first ids of each status (the ``(status, id)`` index) and merges
    them: paging through jobs of all four queue statuses, interleaved with finished ones,
    in pages smaller than any one status's share, yields each once, in id order, each
    with its own task."""
    listing = ListingStore(store)
    tasks = [add_task(store, f"S-{n}") for n in range(3)]
    expected: list[int] = []
    with store.transaction() as tx:
        for n in range(12):
            task_id = tasks[n % 3]
            job_id = tx.enqueue_job(
                task_id=task_id, stage="analysis", kind="agent", agent="a", attempt=n + 1
            )
            status = ("queued", "running", "deferred", "finalizing", "done", "failed")[n % 6]
            if status != "queued":
                tx.conn.execute(jobs.update().where(jobs.c.id == job_id).values(status=status))
            if status not in ("done", "failed"):
                expected.append(job_id)

    seen: list[int] = []
    after = None
    while True:
        page = listing.queue_page(after_id=after, limit=3)
        for job, task in page[:3]:
            assert job == store.get_job(job.id)
            assert task == store.get_task(job.task_id)
        seen += [job.id for job, _ in page[:3]]
        if len(page) <= 3:
            break
        after = page[2][0].id
    assert seen == expected
    assert listing.queue_counts() == {"queued": 2, "deferred": 2, "running": 2, "finalizing": 2}


def test_repositories_are_each_name_once_in_order(store: Store) -> None:
    for n, repository in enumerate(["/srv/b", "/srv/a", "/srv/c", "/srv/a", "/srv/b"]):
        with store.transaction() as tx:
            tx.insert_task(
                work_item=f"R-{n}",
                repository=repository,
                title="t",
                description="",
                stage="analysis",
                branch=f"orch/R-{n}",
                base_branch="main",
                base_sha="0" * 40,
                worktree=f"/wt/R-{n}",
            )
    listing = ListingStore(store)

    assert listing.repositories() == ["/srv/a", "/srv/b", "/srv/c"]
    assert listing.repositories(limit=2) == ["/srv/a", "/srv/b"]


def test_metrics_snapshot_counts_in_sql(store: Store) -> None:
    task_id = add_task(store, "M-1")
    run_job(store, task_id, "analysis", run_s=3, cost=0.25, tokens=100)
    run_job(store, task_id, "analysis", run_s=400, cost=0.5, tokens=200)
    cross(store, task_id, "analysis", "brd-approval")
    cross(store, task_id, "brd-approval", "architecture", EventKind.APPROVED)
    set_event_times(store, task_id, [1000.0, 1030.0, 1030.0 + 7200])
    with store.transaction() as tx:
        tx.add_event(
            EventKind.GATE_VERDICT,
            actor="t",
            task_id=task_id,
            data={"gate": "brd", "outcome": "pass"},
        )
        tx.add_event(EventKind.RETRY, actor="t", task_id=task_id, to_stage="development")
        tx.add_event(EventKind.ROLLBACK, actor="t", task_id=task_id, from_stage="testing")
        for n, outcome in enumerate(["ignored: not ours", "created: T-1", "approve by @a", "odd"]):
            tx.conn.execute(
                webhook_deliveries.insert().values(
                    source="github", delivery_id=str(n), outcome=outcome, received_at=1.0
                )
            )

    snap = MetricsStore(store).snapshot()

    assert ("analysis", False, 0) not in snap.tasks
    assert snap.tasks == [("architecture", False, 1)]
    assert sorted(snap.jobs) == [("analysis", "done", 2)]
    [runs] = snap.job_run_times
    assert runs.labels == ("analysis", "claude")
    assert runs.count == 2
    assert runs.total == pytest.approx(403)
    at = dict(zip(JOB_RUN_BUCKETS_S, runs.buckets, strict=True))
    assert (at[1.0], at[5.0], at[300.0], at[600.0]) == (0, 1, 1, 2)
    [dispatch] = snap.dispatch_latencies
    assert (dispatch.labels, dispatch.count) == (("analysis",), 2)
    assert dispatch.buckets[-1] == 2  # started within the second they were enqueued
    durations = {h.labels[0]: h for h in snap.stage_durations}
    assert set(durations) == {"analysis", "brd-approval"}
    assert durations["analysis"].total == pytest.approx(30)
    assert durations["brd-approval"].total == pytest.approx(7200)
    spent = dict(zip(STAGE_DURATION_BUCKETS_S, durations["brd-approval"].buckets, strict=True))
    assert (spent[3600.0], spent[4 * 3600.0]) == (0, 1)
    assert snap.gate_verdicts == [("brd", "pass", 1)]
    assert snap.retries == [("development", 1)]
    assert snap.rollbacks == [("testing", 1)]
    assert snap.agent_usage == [("claude", "opus", 2, 300, 150, pytest.approx(0.75))]
    assert dict(snap.events)[EventKind.STAGE_CHANGED] == 1
    assert sorted(snap.webhooks) == [
        ("github", "approve", 1),
        ("github", "created", 1),
        ("github", "ignored", 1),
        ("github", "other", 1),
    ]
    assert snap.leases_held == 0


def test_an_empty_database_has_an_empty_snapshot(store: Store) -> None:
    snap = MetricsStore(store).snapshot()

    empty: dict[str, Any] = {"tasks": [], "jobs": [], "events": [], "agent_usage": []}
    assert {name: getattr(snap, name) for name in empty} == empty
    assert snap.stage_durations == []
