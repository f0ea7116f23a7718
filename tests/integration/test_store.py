"""The store against real SQLite and real PostgreSQL (see ``db_url`` in conftest)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.errors import NotFoundError, UsageError
from orchestrator.kernel.failures import FailureKind
from orchestrator.store import DuplicateError, Store, Tx

RACERS = 8
BARRIER_TIMEOUT_S = 10
# The winner holds its transaction open this long, so the losers really queue behind it.
HOLD_WINNER_S = 0.05


def add_task(
    tx: Tx, work_item: str = "DEMO-1", repository: str = "/repos/a", stage: str = "testing"
) -> int:
    return tx.insert_task(
        work_item=work_item,
        repository=repository,
        title=f"Title of {work_item}",
        description="What to build.",
        stage=stage,
        branch=f"orch/{work_item.lower()}",
        base_branch="main",
        base_sha="0" * 40,
        worktree=f"/worktrees/{work_item.lower()}",
    )


def new_task(store: Store, **kwargs: Any) -> int:
    with store.transaction() as tx:
        return add_task(tx, **kwargs)


def new_job(store: Store, task_id: int, *, delay_s: float = 0.0, stage: str = "testing") -> int:
    with store.transaction() as tx:
        return tx.enqueue_job(
            task_id=task_id, stage=stage, kind="agent", agent="claude", attempt=1, delay_s=delay_s
        )


def race(racers: int, attempt: Callable[[int], bool]) -> list[bool]:
    """Run ``attempt(i)`` in ``racers`` threads released together; returns who won."""
    barrier = threading.Barrier(racers, timeout=BARRIER_TIMEOUT_S)

    def run(i: int) -> bool:
        # The barrier sits before BEGIN: on SQLite, BEGIN IMMEDIATE already serialises
        # the writers, so a racer waiting inside its transaction would hold the lock.
        barrier.wait()
        return attempt(i)

    with ThreadPoolExecutor(max_workers=racers) as pool:
        return list(pool.map(run, range(racers)))


# --- tasks -----------------------------------------------------------------------------


def test_inserted_task_reads_back(store: Store) -> None:
    before = time.time()
    task_id = new_task(store)

    task = store.get_task(task_id)

    assert task.id == task_id
    assert (task.work_item, task.repository, task.stage) == ("DEMO-1", "/repos/a", "testing")
    assert (task.title, task.description) == ("Title of DEMO-1", "What to build.")
    assert (task.branch, task.base_branch, task.base_sha) == ("orch/demo-1", "main", "0" * 40)
    assert task.worktree == "/worktrees/demo-1"
    # Server defaults from the migration.
    assert (task.version, task.attempt, task.rollback_count) == (0, 1, 0)
    assert task.failed_reason is None
    assert not task.failed
    assert before <= task.created_at == task.updated_at <= time.time()
    assert store.list_tasks() == [task]
    assert store.task_exists("/repos/a", "DEMO-1")
    assert store.count_tasks("/repos/a") == 1


def test_list_tasks_newest_first_filtered_by_stage(store: Store) -> None:
    first = new_task(store, work_item="DEMO-1", stage="testing")
    second = new_task(store, work_item="DEMO-2", stage="development")
    third = new_task(store, work_item="DEMO-3", stage="testing")

    assert [t.id for t in store.list_tasks()] == [third, second, first]
    assert [t.id for t in store.list_tasks(stage="testing")] == [third, first]
    assert [t.id for t in store.list_tasks(limit=1)] == [third]
    assert store.counts_by_stage() == {"testing": 2, "development": 1}


def test_work_item_is_unique_per_repository(store: Store) -> None:
    first = new_task(store, work_item="DEMO-1", repository="/repos/a")

    # The store's own error, so callers outside store/ need no SQLAlchemy.
    with pytest.raises(DuplicateError):
        new_task(store, work_item="DEMO-1", repository="/repos/a")
    other = new_task(store, work_item="DEMO-1", repository="/repos/b")

    assert other != first
    assert store.get_task(other).repository == "/repos/b"
    assert store.count_tasks("/repos/a") == 1
    assert store.count_tasks("/repos/b") == 1


def test_stage_cas_wins_once_then_loses(store: Store) -> None:
    task_id = new_task(store, stage="testing")

    with store.transaction() as tx:
        assert tx.update_task_stage_cas(task_id, "testing", "deploy-staging")
    with store.transaction() as tx:
        assert not tx.update_task_stage_cas(task_id, "testing", "development")
    assert not store.update_task_stage_cas(task_id, "testing", "cancelled")

    task = store.get_task(task_id)
    assert task.stage == "deploy-staging"
    assert task.version == 1


def test_stage_cas_sets_counters_and_clears_failure(store: Store) -> None:
    task_id = new_task(store, stage="testing")
    with store.transaction() as tx:
        assert tx.update_task_counters(task_id, expected_stage="testing", failed_reason="boom")
    assert store.get_task(task_id).failed_reason == "boom"
    assert store.count_failed_tasks() == 1

    with store.transaction() as tx:
        assert tx.update_task_stage_cas(
            task_id, "testing", "development", attempt=2, rollback_count=1, clear_failure=True
        )

    task = store.get_task(task_id)
    assert (task.stage, task.attempt, task.rollback_count) == ("development", 2, 1)
    assert task.failed_reason is None
    assert task.version == 2
    assert store.count_failed_tasks() == 0


def test_update_task_counters_needs_the_expected_stage(store: Store) -> None:
    task_id = new_task(store, stage="testing")

    with store.transaction() as tx:
        assert not tx.update_task_counters(task_id, expected_stage="development", attempt=5)
        assert tx.update_task_counters(task_id, expected_stage="testing", attempt=3)

    task = store.get_task(task_id)
    assert (task.attempt, task.version) == (3, 1)


class Boom(Exception):
    """Raised by a test inside a transaction."""


def test_failed_transaction_writes_nothing(store: Store) -> None:
    def write_then_fail() -> None:
        with store.transaction() as tx:
            task_id = add_task(tx)
            tx.enqueue_job(task_id=task_id, stage="testing", kind="agent", agent="x", attempt=1)
            tx.add_event("task.created", actor="test", task_id=task_id)
            raise Boom

    with pytest.raises(Boom):
        write_then_fail()

    assert store.list_tasks() == []
    assert not store.task_exists("/repos/a", "DEMO-1")
    assert store.ready_jobs(time.time() + 1) == []
    assert store.counts_by_stage() == {}


def test_failed_transaction_keeps_earlier_commits(store: Store) -> None:
    task_id = new_task(store, stage="testing")

    def move_then_collide() -> None:
        with store.transaction() as tx:
            assert tx.update_task_stage_cas(task_id, "testing", "deploy-staging")
            add_task(tx, work_item="DEMO-1")  # duplicate: the whole transaction rolls back

    with pytest.raises(sa.exc.IntegrityError):
        move_then_collide()

    task = store.get_task(task_id)
    assert (task.stage, task.version) == ("testing", 0)


def test_stage_cas_race_has_exactly_one_winner(store: Store) -> None:
    task_id = new_task(store, stage="testing")

    def attempt(i: int) -> bool:
        with store.transaction() as tx:
            won = tx.update_task_stage_cas(task_id, "testing", "deploy-staging")
            if won:
                tx.add_event("stage.changed", actor=f"racer-{i}", task_id=task_id)
                time.sleep(HOLD_WINNER_S)
            return won

    results = race(RACERS, attempt)

    assert results.count(True) == 1
    task = store.get_task(task_id)
    assert (task.stage, task.version) == ("deploy-staging", 1)
    assert [e.actor for e in store.task_events(task_id)] == [f"racer-{results.index(True)}"]


def test_job_claim_race_has_exactly_one_winner(store: Store) -> None:
    job_id = new_job(store, new_task(store))

    def attempt(i: int) -> bool:
        with store.transaction() as tx:
            won = tx.set_job_status_cas(job_id, "queued", "running", owner_boot_id=f"boot-{i}")
            if won:
                time.sleep(HOLD_WINNER_S)
            return won

    results = race(RACERS, attempt)

    assert results.count(True) == 1
    job = store.get_job(job_id)
    assert job.status == "running"
    assert job.owner_boot_id == f"boot-{results.index(True)}"


# --- jobs ------------------------------------------------------------------------------


def test_ready_jobs_honour_not_before_and_order(store: Store) -> None:
    task_id = new_task(store, repository="/repos/a")
    later = new_job(store, task_id, delay_s=60)
    first = new_job(store, task_id)
    second = new_job(store, task_id)
    now = time.time()

    ready = store.ready_jobs(now)
    assert [(job.id, task.repository) for job, task in ready] == [
        (first, "/repos/a"),
        (second, "/repos/a"),
    ]
    assert all(task == store.get_task(task_id) for _, task in ready)
    assert all(job.not_before <= now for job, _ in ready)

    # Ordered by when they may start, then by id: the delayed job comes last.
    assert [job.id for job, _ in store.ready_jobs(now + 120)] == [first, second, later]
    assert [job.id for job, _ in store.ready_jobs(now + 120, limit=1)] == [first]
    assert store.get_job(later).not_before == pytest.approx(now + 60, abs=5)

    with store.transaction() as tx:
        assert tx.set_job_status_cas(first, "queued", "running", owner_boot_id="boot")
    assert [job.id for job, _ in store.ready_jobs(now + 120)] == [second, later]


def test_ready_jobs_of_an_instance_s_repositories_only(store: Store) -> None:
    # Names are matched as the end of a path; LIKE's wildcards in a name match only
    # themselves.
    repositories = ["/repos/my_app", "/repos/myXapp", "/repos/100%", "/repos/1000", "/other/a"]
    job_of = {}
    for number, repository in enumerate(repositories, start=1):
        task_id = new_task(store, work_item=f"DEMO-{number}", repository=repository)
        job_of[repository] = new_job(store, task_id)
    now = time.time() + 1

    def ready(*scope: str) -> set[str]:
        return {task.repository for _, task in store.ready_jobs(now, repositories=scope)}

    assert ready() == set(repositories)
    assert ready("my_app") == {"/repos/my_app"}
    assert ready("100%") == {"/repos/100%"}
    assert ready("/other/a", "myXapp") == {"/other/a", "/repos/myXapp"}
    assert ready("a") == {"/other/a"}
    assert ready("repos") == set()
    assert [job.id for job, _ in store.ready_jobs(now, repositories=("my_app",))] == [
        job_of["/repos/my_app"]
    ]


def test_job_lifecycle(store: Store) -> None:
    task_a = new_task(store, work_item="A-1", repository="/repos/a")
    task_b = new_task(store, work_item="B-1", repository="/repos/b")
    job_a = new_job(store, task_a)
    job_b = new_job(store, task_b)

    queued = store.get_job(job_a)
    assert (queued.status, queued.kind, queued.agent, queued.attempt) == (
        "queued",
        "agent",
        "claude",
        1,
    )
    assert queued.started_at is None
    assert queued.finished_at is None

    with store.transaction() as tx:
        assert tx.set_job_status_cas(job_a, "queued", "running", owner_boot_id="boot-1")
        tx.set_job_process(job_a, pid=4242, start_sha="a" * 40)
        assert tx.set_job_status_cas(job_b, ("queued", "deferred"), "running", owner_boot_id="b")
    running = store.get_job(job_a)
    assert (running.status, running.pid, running.start_sha) == ("running", 4242, "a" * 40)
    assert running.owner_boot_id == "boot-1"
    assert running.started_at is not None
    assert store.active_job_counts() == {"/repos/a": 1, "/repos/b": 1}

    with store.transaction() as tx:
        assert tx.set_job_status_cas(job_a, "running", "finalizing")
        assert not tx.set_job_status_cas(
            job_a, "running", "failed", failure_kind=FailureKind.NONZERO_EXIT
        )
    assert [(job.id, task.id) for job, task in store.jobs_by_status(["finalizing"])] == [
        (job_a, task_a)
    ]

    with store.transaction() as tx:
        assert tx.set_job_status_cas(job_a, "finalizing", "done")
        assert tx.set_job_status_cas(
            job_b, "running", "failed", error="exit 1", failure_kind=FailureKind.NONZERO_EXIT
        )
    done, failed = store.get_job(job_a), store.get_job(job_b)
    assert (done.status, done.failure_kind) == ("done", None)
    assert done.finished_at is not None
    assert (failed.status, failed.error, failed.failure_kind) == (
        "failed",
        "exit 1",
        "nonzero_exit",
    )
    assert store.active_job_counts() == {}
    assert [job.id for job in store.task_jobs(task_a)] == [job_a]


def test_cancel_waiting_jobs_fails_only_queued_and_deferred(store: Store) -> None:
    task_id = new_task(store)
    other_task = new_task(store, work_item="DEMO-2")
    queued, deferred, running = (new_job(store, task_id) for _ in range(3))
    elsewhere = new_job(store, other_task)
    with store.transaction() as tx:
        assert tx.set_job_status_cas(deferred, "queued", "deferred")
        assert tx.set_job_status_cas(running, "queued", "running", owner_boot_id="boot")

    with store.transaction() as tx:
        cancelled = tx.cancel_waiting_jobs(task_id, "task cancelled")

    assert sorted(cancelled) == [queued, deferred]
    statuses = {
        job.id: (job.status, job.error, job.failure_kind) for job in store.task_jobs(task_id)
    }
    assert statuses == {
        queued: ("failed", "task cancelled", "cancelled"),
        deferred: ("failed", "task cancelled", "cancelled"),
        running: ("running", None, None),
    }
    assert store.get_job(elsewhere).status == "queued"


def test_a_job_never_fails_without_saying_how(store: Store) -> None:
    """Every failed job carries a failure kind: decisions read it, not the error text."""
    job_id = new_job(store, new_task(store))
    with pytest.raises(ValueError, match="without a failure_kind"), store.transaction() as tx:
        tx.set_job_status_cas(job_id, "queued", "failed", error="no kind")
    assert store.get_job(job_id).status == "queued"


# --- runs ------------------------------------------------------------------------------


def test_task_runs_and_their_sums(store: Store) -> None:
    task_id = new_task(store)
    jobs = [new_job(store, task_id) for _ in range(3)]
    usage = [(100, 20, 0.25), (3_000_000_000, 4_000, 1.5), (0, 0, 0.0)]
    with store.transaction() as tx:
        runs = [
            tx.insert_agent_run(
                job_id=job_id,
                task_id=task_id,
                agent="claude",
                model="",
                effort="high",
                attempt=1,
                log_path=f"/logs/{job_id}.log",
            )
            for job_id in jobs
        ]
        for run_id, (tokens_in, tokens_out, cost) in zip(runs[:2], usage, strict=False):
            tx.record_exit(
                run_id,
                exit_code=0,
                model="sonnet",
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                cost_usd=cost,
                num_turns=7,
            )

    task_runs = store.task_runs(task_id)

    assert [r.id for r in task_runs] == runs
    assert sum(r.input_tokens for r in task_runs) == 3_000_000_100  # needs BIGINT
    assert sum(r.output_tokens for r in task_runs) == 4_020
    assert sum(r.cost_usd for r in task_runs) == pytest.approx(1.75)
    finished, unfinished = task_runs[0], task_runs[2]
    assert (finished.exit_code, finished.model, finished.num_turns) == (0, "sonnet", 7)
    assert finished.exit_recorded_at is not None
    assert (unfinished.exit_code, unfinished.model, unfinished.cost_usd) == (None, "", 0.0)
    assert unfinished.exit_recorded_at is None
    assert store.job_run(jobs[1]) == task_runs[1]


def test_job_run_is_the_latest_run_of_the_job(store: Store) -> None:
    task_id = new_task(store)
    job_id = new_job(store, task_id)
    assert store.job_run(job_id) is None

    with store.transaction() as tx:
        for attempt in (1, 2):
            tx.insert_agent_run(
                job_id=job_id,
                task_id=task_id,
                agent="codex",
                model="m",
                effort="",
                attempt=attempt,
                log_path="/logs/x.log",
            )

    latest = store.job_run(job_id)
    assert latest is not None
    assert latest.attempt == 2


# --- events ----------------------------------------------------------------------------


def test_events_are_appended_in_order_with_json_data(store: Store) -> None:
    task_id = new_task(store)
    other_task = new_task(store, work_item="DEMO-2")
    data: dict[str, Any] = {
        "verdict": "reject",
        "findings": [{"file": "a.py", "line": 3}, {"file": "ü/b.py", "line": None}],
        "score": 0.5,
        "ok": False,
        "nested": {"deep": {"deeper": ["x", 1, True]}},
    }
    with store.transaction() as tx:
        tx.add_event("task.created", actor="cli", task_id=task_id, to_stage="testing")
        tx.add_event("task.created", actor="cli", task_id=other_task)
    first = store.task_events(task_id)

    with store.transaction() as tx:
        tx.add_event(
            "gate.verdict",
            actor="reviewer",
            task_id=task_id,
            job_id=99,
            from_stage="testing",
            to_stage="development",
            reason="tests fail",
            data=data,
        )
        tx.add_event("stage.changed", actor="engine", task_id=task_id, data={"n": 3})

    events = store.task_events(task_id)

    assert [e.kind for e in events] == ["task.created", "gate.verdict", "stage.changed"]
    assert events[0] == first[0]  # appending leaves earlier events as they were
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert all(e.task_id == task_id for e in events)
    verdict = events[1]
    assert verdict.data == data
    assert (verdict.job_id, verdict.from_stage, verdict.to_stage, verdict.reason) == (
        99,
        "testing",
        "development",
        "tests fail",
    )
    assert events[0].data is None
    assert events[0].reason == ""
    assert events[2].data == {"n": 3}
    assert events[0].created_at <= events[1].created_at <= events[2].created_at
    assert [e.task_id for e in store.task_events(other_task)] == [other_task]


# --- lookups ---------------------------------------------------------------------------


def test_find_task_by_work_item_and_by_id(store: Store) -> None:
    task_id = new_task(store, work_item="DEMO-7", repository="/repos/a")

    assert store.find_task("DEMO-7").id == task_id
    assert store.find_task("DEMO-7", repository="/repos/a").id == task_id
    assert store.find_task(str(task_id)).work_item == "DEMO-7"


def test_find_task_needs_repository_when_work_item_is_ambiguous(store: Store) -> None:
    new_task(store, work_item="DEMO-1", repository="/repos/a")
    in_b = new_task(store, work_item="DEMO-1", repository="/repos/b")

    with pytest.raises(UsageError, match="2 repositories"):
        store.find_task("DEMO-1")
    assert store.find_task("DEMO-1", repository="/repos/b").id == in_b


def test_unknown_task_and_job_raise_not_found(store: Store) -> None:
    new_task(store)

    with pytest.raises(NotFoundError, match="no task with id 999"):
        store.get_task(999)
    with pytest.raises(NotFoundError, match="no task 'NOPE-1'"):
        store.find_task("NOPE-1")
    with pytest.raises(NotFoundError):
        store.find_task("999")
    with pytest.raises(NotFoundError):
        store.find_task("DEMO-1", repository="/repos/elsewhere")
    with pytest.raises(NotFoundError, match="no job with id 999"):
        store.get_job(999)
    assert not store.task_exists("/repos/a", "NOPE-1")


def test_find_task_by_id_respects_the_repository(store: Store) -> None:
    task_id = new_task(store, repository="/repos/a")
    assert store.find_task(str(task_id), "/repos/a").id == task_id
    with pytest.raises(NotFoundError):
        store.find_task(str(task_id), "/repos/b")


def test_event_without_data_is_sql_null(store: Store) -> None:
    from orchestrator.store.schema import events

    task_id = new_task(store)
    with store.transaction() as tx:
        tx.add_event("x.none", actor="test", task_id=task_id)
        tx.add_event("x.empty", actor="test", task_id=task_id, data={})
    with store.engine.connect() as conn:
        null_kinds = conn.execute(
            sa.select(events.c.kind).where(events.c.data.is_(None)).order_by(events.c.id)
        ).scalars()
        assert list(null_kinds) == ["x.none"]
    assert [e.data for e in store.task_events(task_id)][-2:] == [None, {}]


def test_task_card_points_at_the_newest_message(store: Store) -> None:
    task_id = new_task(store)
    assert store.task_card(task_id, "chat") is None
    with store.transaction() as tx:
        tx.point_task_card(task_id, "chat", 10, "digest-1")
    with store.transaction() as tx:
        tx.point_task_card(task_id, "chat", 11, "digest-2")  # an upsert, not a second row
    card = store.task_card(task_id, "chat")
    assert card is not None
    assert (card.message_id, card.text_hash) == (11, "digest-2")
    assert store.task_of_card("chat", 11) == task_id
    assert store.task_of_card("chat", 10) is None
    assert store.task_card(task_id, "other chat") is None


def test_get_event(store: Store) -> None:
    task_id = new_task(store)
    with store.transaction() as tx:
        first = tx.add_event("a", actor="t", task_id=task_id, data={"n": 1})
        tx.add_event("b", actor="t", task_id=task_id)
        third = tx.add_event("a", actor="t", task_id=task_id, data={"n": 3})
    event = store.get_event(first)
    assert event is not None
    assert event.data == {"n": 1}
    assert store.get_event(third + 100) is None
