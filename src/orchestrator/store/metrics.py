"""What ``GET /metrics`` reports, read from the database at scrape time.

Every figure is computed from the tables, not counted in a process: several ``orch
serve`` instances and a restart all report the same numbers. One scrape is a fixed
handful of grouped queries (:meth:`MetricsStore.snapshot`), whatever the number of
tasks; histograms are counted in SQL, one ``SUM(CASE ...)`` per bucket, so no row
leaves the database. Turning the snapshot into Prometheus families is
:mod:`orchestrator.api.metrics`'s business.

A stage's duration is the time between the crossing that entered it and the one that
left it (:data:`~orchestrator.store.listing.CROSSING`); the stage a task is in now is
not counted until it leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa

from orchestrator.kernel.events import EventKind
from orchestrator.store.inbox import InboxStatus
from orchestrator.store.listing import CROSSING
from orchestrator.store.schema import (
    agent_runs,
    events,
    inbox,
    jobs,
    outbox,
    tasks,
    transition_lease,
    webhook_deliveries,
)
from orchestrator.store.store import Store

__all__ = [
    "DISPATCH_BUCKETS_S",
    "JOB_RUN_BUCKETS_S",
    "STAGE_DURATION_BUCKETS_S",
    "WEBHOOK_ANSWERS",
    "Histogram",
    "MetricsSnapshot",
    "MetricsStore",
]

# Upper bounds (seconds) of the histograms' buckets; +Inf is implied.
STAGE_DURATION_BUCKETS_S: Final = (
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 24 * 3600.0, 7 * 24 * 3600.0,
)  # fmt: skip
JOB_RUN_BUCKETS_S: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
DISPATCH_BUCKETS_S: Final = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
# The first word of a webhook delivery's recorded outcome (webhooks.py, the Telegram
# webhook): a bounded label; anything else is "other".
WEBHOOK_ANSWERS: Final = (
    "received",
    "ignored",
    "refused",
    "rejected",
    "recorded",
    "exists",
    "created",
    "deferred",
    "applied",
    "approve",
    "reject",
    "retry",
    "cancel",
    "rollback",
)
OTHER: Final = "other"


@dataclass(frozen=True)
class Histogram:
    """One labelled histogram series: cumulative bucket counts, count and sum."""

    labels: tuple[str, ...]
    buckets: tuple[int, ...]  # one per bound, cumulative (<= bound)
    count: int
    total: float


@dataclass(frozen=True)
class MetricsSnapshot:
    """The store's figures at one moment; each list holds (labels..., value) rows."""

    tasks: list[tuple[str, bool, int]] = field(default_factory=list)  # stage, failed, n
    jobs: list[tuple[str, str, int]] = field(default_factory=list)  # stage, status, n
    stage_durations: list[Histogram] = field(default_factory=list)  # (stage,)
    job_run_times: list[Histogram] = field(default_factory=list)  # (stage, agent)
    dispatch_latencies: list[Histogram] = field(default_factory=list)  # (stage,)
    events: list[tuple[str, int]] = field(default_factory=list)  # kind, n
    gate_verdicts: list[tuple[str, str, int]] = field(default_factory=list)  # gate, result, n
    retries: list[tuple[str, int]] = field(default_factory=list)  # stage, n
    rollbacks: list[tuple[str, int]] = field(default_factory=list)  # from stage, n
    # agent, model, runs, input tokens, output tokens, USD
    agent_usage: list[tuple[str, str, int, int, int, float]] = field(default_factory=list)
    outbox: list[tuple[str, str, int]] = field(default_factory=list)  # channel, status, n
    outbox_attempts: list[tuple[str, int]] = field(default_factory=list)  # channel, failed tries
    leases_held: int = 0
    inbox: list[tuple[str, int]] = field(default_factory=list)  # status, n
    webhooks: list[tuple[str, str, int]] = field(default_factory=list)  # source, answer, n


def _bucket_sums(value: sa.ColumnElement[Any], bounds: Sequence[float]) -> list[Any]:
    return [sa.func.sum(sa.case((value <= bound, 1), else_=0)) for bound in bounds]


def _histograms(rows: Sequence[tuple[Any, ...]], n_labels: int, n_buckets: int) -> list[Histogram]:
    found = []
    for row in rows:
        values = row
        labels = tuple(str(v) for v in values[:n_labels])
        count, total = int(values[n_labels]), float(values[n_labels + 1] or 0.0)
        buckets = tuple(int(v or 0) for v in values[n_labels + 2 : n_labels + 2 + n_buckets])
        found.append(Histogram(labels, buckets, count, total))
    return found


def _answer() -> sa.ColumnElement[str]:
    """The first word of a webhook outcome, if it is one of :data:`WEBHOOK_ANSWERS`."""
    outcome = webhook_deliveries.c.outcome
    whens = [
        (sa.or_(outcome == word, outcome.like(f"{word}:%"), outcome.like(f"{word} %")), word)
        for word in WEBHOOK_ANSWERS
    ]
    return sa.case(*whens, else_=OTHER)


class MetricsStore:
    """The grouped reads behind ``GET /metrics`` over one :class:`~orchestrator.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def snapshot(self) -> MetricsSnapshot:
        """Every figure, read in one connection (fifteen grouped queries)."""
        with self.store.engine.connect() as conn:

            def rows(query: sa.Select[Any]) -> list[tuple[Any, ...]]:
                return [tuple(row) for row in conn.execute(query)]

            failed = tasks.c.failed_reason.is_not(None)
            task_rows = rows(
                sa.select(tasks.c.stage, failed.label("failed"), sa.func.count()).group_by(
                    tasks.c.stage, failed
                )
            )
            job_rows = rows(
                sa.select(jobs.c.stage, jobs.c.status, sa.func.count()).group_by(
                    jobs.c.stage, jobs.c.status
                )
            )
            run_s = (jobs.c.finished_at - jobs.c.started_at).label("run_s")
            run_rows = rows(
                sa.select(
                    jobs.c.stage,
                    jobs.c.agent,
                    sa.func.count(),
                    sa.func.sum(run_s),
                    *_bucket_sums(run_s, JOB_RUN_BUCKETS_S),
                )
                .where(jobs.c.started_at.is_not(None), jobs.c.finished_at.is_not(None))
                .group_by(jobs.c.stage, jobs.c.agent)
            )
            # From when a job could start (enqueued, and its not_before come) to its start.
            ready_at = sa.case(
                (jobs.c.not_before > jobs.c.enqueued_at, jobs.c.not_before),
                else_=jobs.c.enqueued_at,
            )
            wait_s = jobs.c.started_at - ready_at
            dispatch_rows = rows(
                sa.select(
                    jobs.c.stage,
                    sa.func.count(),
                    sa.func.sum(wait_s),
                    *_bucket_sums(wait_s, DISPATCH_BUCKETS_S),
                )
                .where(jobs.c.started_at.is_not(None))
                .group_by(jobs.c.stage)
            )
            crossings = (
                sa.select(
                    events.c.from_stage.label("stage"),
                    (
                        events.c.created_at
                        - sa.func.lag(events.c.created_at).over(
                            partition_by=events.c.task_id, order_by=events.c.id
                        )
                    ).label("spent_s"),
                )
                .where(CROSSING, events.c.task_id.is_not(None))
                .subquery()
            )
            spent = crossings.c.spent_s
            stage_rows = rows(
                sa.select(
                    crossings.c.stage,
                    sa.func.count(),
                    sa.func.sum(spent),
                    *_bucket_sums(spent, STAGE_DURATION_BUCKETS_S),
                )
                .where(crossings.c.stage.is_not(None), spent.is_not(None))
                .group_by(crossings.c.stage)
            )
            event_rows = rows(sa.select(events.c.kind, sa.func.count()).group_by(events.c.kind))
            gate = events.c.data["gate"].as_string()
            result = events.c.data["outcome"].as_string()
            verdict_rows = rows(
                sa.select(gate, result, sa.func.count())
                .where(events.c.kind == EventKind.GATE_VERDICT)
                .group_by(gate, result)
            )
            retry_rows = rows(
                sa.select(events.c.to_stage, sa.func.count())
                .where(events.c.kind == EventKind.RETRY)
                .group_by(events.c.to_stage)
            )
            rollback_rows = rows(
                sa.select(events.c.from_stage, sa.func.count())
                .where(events.c.kind == EventKind.ROLLBACK)
                .group_by(events.c.from_stage)
            )
            usage_rows = rows(
                sa.select(
                    agent_runs.c.agent,
                    agent_runs.c.model,
                    sa.func.count(),
                    sa.func.sum(agent_runs.c.input_tokens),
                    sa.func.sum(agent_runs.c.output_tokens),
                    sa.func.sum(agent_runs.c.cost_usd),
                ).group_by(agent_runs.c.agent, agent_runs.c.model)
            )
            outbox_rows = rows(
                sa.select(outbox.c.channel, outbox.c.status, sa.func.count()).group_by(
                    outbox.c.channel, outbox.c.status
                )
            )
            # Delivery attempts that did not deliver: every attempt of an unsent message,
            # every attempt but the last of a sent one.
            failed_tries = sa.case(
                (outbox.c.status == "sent", outbox.c.attempts - 1), else_=outbox.c.attempts
            )
            attempt_rows = rows(
                sa.select(outbox.c.channel, sa.func.sum(failed_tries)).group_by(outbox.c.channel)
            )
            leases = conn.execute(
                sa.select(sa.func.count()).where(transition_lease.c.owner_boot_id.is_not(None))
            ).scalar_one()
            inbox_rows = rows(sa.select(inbox.c.status, sa.func.count()).group_by(inbox.c.status))
            answer = _answer()
            webhook_rows = rows(
                sa.select(webhook_deliveries.c.source, answer, sa.func.count()).group_by(
                    webhook_deliveries.c.source, answer
                )
            )
        return MetricsSnapshot(
            tasks=[(str(s), bool(f), int(n)) for s, f, n in task_rows],
            jobs=[(str(s), str(st), int(n)) for s, st, n in job_rows],
            stage_durations=_histograms(stage_rows, 1, len(STAGE_DURATION_BUCKETS_S)),
            job_run_times=_histograms(run_rows, 2, len(JOB_RUN_BUCKETS_S)),
            dispatch_latencies=_histograms(dispatch_rows, 1, len(DISPATCH_BUCKETS_S)),
            events=[(str(k), int(n)) for k, n in event_rows],
            gate_verdicts=[(str(g or ""), str(r or ""), int(n)) for g, r, n in verdict_rows],
            retries=[(str(s or ""), int(n)) for s, n in retry_rows],
            rollbacks=[(str(s or ""), int(n)) for s, n in rollback_rows],
            agent_usage=[
                (str(a), str(m), int(n), int(i or 0), int(o or 0), float(c or 0.0))
                for a, m, n, i, o, c in usage_rows
            ],
            outbox=[(str(c), str(s), int(n)) for c, s, n in outbox_rows],
            outbox_attempts=[(str(c), max(int(n or 0), 0)) for c, n in attempt_rows],
            leases_held=int(leases),
            inbox=[(str(s), int(n)) for s, n in inbox_rows],
            webhooks=[(str(s), str(a), int(n)) for s, a, n in webhook_rows],
        )


# Every inbox status, so a family reports zeros rather than vanishing.
INBOX_STATUSES: Final = (
    InboxStatus.PENDING,
    InboxStatus.APPLYING,
    InboxStatus.APPLIED,
    InboxStatus.REFUSED,
    InboxStatus.FAILED,
)
