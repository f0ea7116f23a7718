"""The API's lists and task reads: ``/tasks``, a task's events, runs and jobs, ``/queue``
and ``/tokens``, each a page at a time (:mod:`orchestrator.api.pagination`), every moment in
ISO 8601 (:mod:`orchestrator.api.format`).

A list answers ``{"items": [...], "next_cursor": "..." | null}``; ``/queue`` keeps its
``queued`` / ``running`` keys (one page of jobs, oldest first, split by status) and adds
``next_cursor`` and the totals. ``/costs`` is the cost report (:mod:`orchestrator.api.costs`).
Reads only: the guard (:mod:`orchestrator.api.guard`)
asks a viewer token for them, or none with ``public_read``; ``/tokens`` asks an admin.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query

from orchestrator.api.costs import DEFAULT_TOP, MAX_TOP, cost_report, parse_period
from orchestrator.api.format import with_iso_times
from orchestrator.api.pagination import (
    DEFAULT_LIMIT,
    Cursor,
    Limit,
    decode_cursor,
    page_of,
)
from orchestrator.effects.leases import LeaseManager
from orchestrator.errors import UsageError
from orchestrator.kernel.stages import STAGE_TRANSITIONS
from orchestrator.settings import Settings
from orchestrator.store import ACTIVE_JOB_STATUSES, Job, Store, Task
from orchestrator.store.listing import ListingStore, TaskFacts

__all__ = ["queue_entry", "read_router", "task_view"]

# Cursor list names: a cursor of one list is refused by another.
TASKS_LIST: Final = "tasks"
QUEUE_LIST: Final = "queue"
EVENTS_LIST: Final = "events"
RUNS_LIST: Final = "runs"
JOBS_LIST: Final = "jobs"
TOKENS_LIST: Final = "tokens"

RepoQuery = Annotated[str | None, Query(description="Repository path, if ids clash")]
MomentQuery = Annotated[
    str | None,
    Query(description="ISO 8601 date or time (UTC unless it names an offset)."),
]
TopQuery = Annotated[int, Query(ge=1, le=MAX_TOP, description=f"Top tasks by cost (1-{MAX_TOP}).")]


def _current_job(job: Job | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {
        "id": job.id,
        "stage": job.stage,
        "agent": job.agent,
        "status": job.status,
        "attempt": job.attempt,
    }


def _task_with_facts(task: Task, facts: TaskFacts | None) -> dict[str, Any]:
    data = with_iso_times({**task.to_dict(), "failed": task.failed})
    if facts is None:  # not reachable for a task the store just read; keep the shape
        facts = TaskFacts(cost_usd=0.0, current_job=None, stage_entered_at=task.created_at)
    data["cost_usd"] = facts.cost_usd
    data["current_job"] = _current_job(facts.current_job)
    data.update(with_iso_times({"stage_entered_at": facts.stage_entered_at}))
    return data


def task_view(store: Store, task: Task) -> dict[str, Any]:
    """A task as every API answer shows it: its columns, cost, current job, stage entry."""
    return _task_with_facts(task, ListingStore(store).task_facts([task]).get(task.id))


def queue_entry(job: Job, task: Task, now: float) -> dict[str, Any]:
    """One job of ``/queue``; ``age_s`` counts from its start (running) or enqueue."""
    since = (job.started_at or job.enqueued_at) if job.status in ACTIVE_JOB_STATUSES else None
    age_s = now - (since if since is not None else job.enqueued_at)
    return with_iso_times(
        {
            "id": job.id,
            "task_id": task.id,
            "work_item": task.work_item,
            "stage": job.stage,
            "agent": job.agent,
            "kind": job.kind,
            "attempt": job.attempt,
            "status": job.status,
            "age_s": round(max(age_s, 0.0), 3),
            "not_before": job.not_before,
            "enqueued_at": job.enqueued_at,
            "started_at": job.started_at,
            "pid": job.pid,
        }
    )


def read_router(
    store: Store,
    settings: Settings,
    leases: Callable[[], LeaseManager],
    find: Callable[[str, str | None], Task],
) -> APIRouter:
    """The read routes; ``find`` resolves a task reference as the write routes do."""
    router = APIRouter()
    listing = ListingStore(store)

    @router.get("/tasks", summary="Tasks, newest first, a page at a time")
    def list_tasks(
        stage: str | None = None, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
    ) -> dict[str, Any]:
        if stage is not None and stage not in STAGE_TRANSITIONS:
            raise UsageError(
                f"unknown stage {stage[:40]!r}; stages: {', '.join(STAGE_TRANSITIONS)}"
            )
        before = decode_cursor(cursor, TASKS_LIST)
        page = page_of(
            listing.tasks_page(stage=stage, before_id=before, limit=limit),
            limit,
            TASKS_LIST,
            key=lambda task: task.id,
        )
        facts = listing.task_facts(page.items)
        return page.to_dict(lambda task: _task_with_facts(task, facts.get(task.id)))

    @router.get("/tasks/{ref}", summary="One task with its events, agent runs, jobs and cost")
    def get_task(ref: str, repo: RepoQuery = None) -> dict[str, Any]:
        task = find(ref, repo)
        return {
            **task_view(store, task),
            "events": [with_iso_times(event.to_dict()) for event in store.task_events(task.id)],
            "runs": [with_iso_times(run.to_dict()) for run in store.task_runs(task.id)],
            "jobs": [with_iso_times(job.to_dict()) for job in store.task_jobs(task.id)],
        }

    def task_page(
        ref: str,
        repo: str | None,
        limit: int,
        cursor: str | None,
        name: str,
        fetch: Callable[..., Sequence[Any]],
    ) -> dict[str, Any]:
        """One page of a task's rows (events, runs or jobs: records with an ``id``)."""
        after = decode_cursor(cursor, name)
        task = find(ref, repo)
        rows = fetch(task.id, after_id=after, limit=limit)
        page = page_of(rows, limit, name, key=lambda row: row.id)
        return page.to_dict(lambda row: with_iso_times(row.to_dict()))

    @router.get("/tasks/{ref}/events", summary="A task's audit trail, oldest first, paged")
    def task_events(
        ref: str, repo: RepoQuery = None, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
    ) -> dict[str, Any]:
        return task_page(ref, repo, limit, cursor, EVENTS_LIST, listing.task_events_page)

    @router.get("/tasks/{ref}/runs", summary="A task's agent runs, oldest first, paged")
    def task_runs(
        ref: str, repo: RepoQuery = None, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
    ) -> dict[str, Any]:
        return task_page(ref, repo, limit, cursor, RUNS_LIST, listing.task_runs_page)

    @router.get("/tasks/{ref}/jobs", summary="A task's jobs, oldest first, paged")
    def task_jobs(
        ref: str, repo: RepoQuery = None, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
    ) -> dict[str, Any]:
        return task_page(ref, repo, limit, cursor, JOBS_LIST, listing.task_jobs_page)

    @router.get("/queue", summary="Jobs waiting and running (paged), and held transition leases")
    def queue(limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> dict[str, Any]:
        after = decode_cursor(cursor, QUEUE_LIST)
        now = time.time()
        rows = listing.queue_page(after_id=after, limit=limit)
        page = page_of(rows, limit, QUEUE_LIST, key=lambda pair: pair[0].id)
        entries = [queue_entry(job, task, now) for job, task in page.items]
        return {
            "queued": [e for e in entries if e["status"] not in ACTIVE_JOB_STATUSES],
            "running": [e for e in entries if e["status"] in ACTIVE_JOB_STATUSES],
            "next_cursor": page.next_cursor,
            # Jobs in the whole queue (every page), by status.
            "totals": listing.queue_counts(),
            # Read-only: who holds which task's transition lease, and whether it lives.
            "transition_lease": {
                "enabled": settings.transition_lease_enabled,
                "held": [with_iso_times(info.to_dict()) for info in leases().held()],
            },
        }

    @router.get("/costs", summary="Spend over [since, until): per day, repository, agent, stage")
    def costs(
        since: MomentQuery = None, until: MomentQuery = None, top: TopQuery = DEFAULT_TOP
    ) -> dict[str, Any]:
        period = parse_period(since, until, time.time())
        return cost_report(store, settings, period, top).to_dict()

    @router.get("/tokens", summary="API tokens: names, roles, who made them (admin; paged)")
    def list_tokens(limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> dict[str, Any]:
        after = decode_cursor(cursor, TOKENS_LIST)
        rows = listing.api_tokens_page(after_id=after, limit=limit)
        page = page_of(rows, limit, TOKENS_LIST, key=lambda token: token.id)
        return page.to_dict(lambda token: with_iso_times(token.to_dict()))

    return router
