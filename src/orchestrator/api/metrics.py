"""``GET /metrics``: the pipeline in Prometheus' text format (``prometheus-client``).

A custom collector asks the store at scrape time (:class:`~orchestrator.store.metrics.
MetricsStore`) instead of counting in this process, so every instance, before and after
a restart, exports the same figures. The families (``docs/api.md`` explains each)::

    orch_build_info{version}                          1
    orch_tasks{stage,state}                           gauge  (state: active, waiting_for_human,
                                                              failed, finished)
    orch_jobs{stage,status}                           gauge
    orch_stage_duration_seconds{stage}                histogram (time spent in a stage left)
    orch_job_run_seconds{stage,agent}                 histogram (finished jobs)
    orch_dispatch_latency_seconds{stage}              histogram (ready to started)
    orch_events_total{kind}                           counter (the audit trail: reaper,
                                                              reconciler, effects, ...)
    orch_gate_verdicts_total{gate,result}             counter
    orch_retries_total{stage}                         counter
    orch_rollbacks_total{stage}                       counter (stage rolled back from)
    orch_agent_runs_total{agent,model}                counter
    orch_agent_tokens_total{agent,model,direction}    counter (direction: input, output)
    orch_agent_cost_usd_total{agent,model}            counter
    orch_outbox_messages{channel,status}              gauge (backlog: pending + sending)
    orch_outbox_failed_attempts_total{channel}        counter (delivery attempts that failed)
    orch_transition_leases_held                       gauge
    orch_inbox_intents{status}                        gauge
    orch_webhook_deliveries_total{source,answer}      counter

No SQL here and no clock: the collector maps a snapshot to families.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from orchestrator import __version__
from orchestrator.kernel.stages import HUMAN_GATE_STAGES, STAGE_TRANSITIONS, TERMINAL_STAGES
from orchestrator.store import Store
from orchestrator.store.metrics import (
    DISPATCH_BUCKETS_S,
    INBOX_STATUSES,
    JOB_RUN_BUCKETS_S,
    STAGE_DURATION_BUCKETS_S,
    Histogram,
    MetricsSnapshot,
    MetricsStore,
)

__all__ = [
    "CONTENT_TYPE",
    "HISTOGRAM_NAMES",
    "METRIC_NAMES",
    "StoreCollector",
    "render_metrics",
    "task_state",
]

# What Prometheus expects for the text format 0.0.4.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
TASK_STATES: Final = ("active", "waiting_for_human", "failed", "finished")
# Every family's name as exposed (counters with _total), for docs and the dashboard test.
METRIC_NAMES: Final = (
    "orch_build_info",
    "orch_tasks",
    "orch_jobs",
    "orch_stage_duration_seconds",
    "orch_job_run_seconds",
    "orch_dispatch_latency_seconds",
    "orch_events_total",
    "orch_gate_verdicts_total",
    "orch_retries_total",
    "orch_rollbacks_total",
    "orch_agent_runs_total",
    "orch_agent_tokens_total",
    "orch_agent_cost_usd_total",
    "orch_outbox_messages",
    "orch_outbox_failed_attempts_total",
    "orch_transition_leases_held",
    "orch_inbox_intents",
    "orch_webhook_deliveries_total",
    "orch_db_statements_total",
)

# The histograms among them (each also exposes _bucket, _sum and _count series).
HISTOGRAM_NAMES: Final = (
    "orch_stage_duration_seconds",
    "orch_job_run_seconds",
    "orch_dispatch_latency_seconds",
)


def task_state(stage: str, failed: bool) -> str:
    """The ``state`` label of a task: failed, finished, waiting_for_human or active."""
    if failed:
        return "failed"
    if stage in TERMINAL_STAGES:
        return "finished"
    if stage in HUMAN_GATE_STAGES:
        return "waiting_for_human"
    return "active"


def _histogram(
    name: str, doc: str, labels: list[str], series: list[Histogram], bounds: tuple[float, ...]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for one in series:
        buckets = [(_bound(b), float(n)) for b, n in zip(bounds, one.buckets, strict=True)]
        buckets.append(("+Inf", float(one.count)))
        family.add_metric(list(one.labels), buckets, one.total)
    return family


def _bound(value: float) -> str:
    return f"{value:g}" if value != int(value) else f"{int(value)}.0"


def families(snapshot: MetricsSnapshot) -> Iterator[Metric]:
    """The Prometheus families of one snapshot (see the module docstring)."""
    info = GaugeMetricFamily("orch_build_info", "The orch version serving", labels=["version"])
    info.add_metric([__version__], 1.0)
    yield info

    by_state: dict[tuple[str, str], int] = {
        (stage, state): 0 for stage in STAGE_TRANSITIONS for state in TASK_STATES
    }
    for stage, failed, n in snapshot.tasks:
        key = (stage, task_state(stage, failed))
        by_state[key] = by_state.get(key, 0) + n
    tasks = GaugeMetricFamily("orch_tasks", "Tasks by stage and state", labels=["stage", "state"])
    for (stage, state), n in sorted(by_state.items()):
        tasks.add_metric([stage, state], n)
    yield tasks

    jobs = GaugeMetricFamily("orch_jobs", "Jobs by stage and status", labels=["stage", "status"])
    for stage, status, n in snapshot.jobs:
        jobs.add_metric([stage, status], n)
    yield jobs

    yield _histogram(
        "orch_stage_duration_seconds",
        "Time tasks spent in a stage, from entering it to leaving it",
        ["stage"],
        snapshot.stage_durations,
        STAGE_DURATION_BUCKETS_S,
    )
    yield _histogram(
        "orch_job_run_seconds",
        "Run time of finished jobs, from start to finish",
        ["stage", "agent"],
        snapshot.job_run_times,
        JOB_RUN_BUCKETS_S,
    )
    yield _histogram(
        "orch_dispatch_latency_seconds",
        "From a job being ready (enqueued, not_before come) to its start",
        ["stage"],
        snapshot.dispatch_latencies,
        DISPATCH_BUCKETS_S,
    )

    counters: list[tuple[str, str, list[str], Sequence[tuple[tuple[str, ...], float]]]] = [
        (
            "orch_events",
            "Audit-trail events by kind (reaper, reconciler, effects, deferrals, ...)",
            ["kind"],
            [((kind,), n) for kind, n in snapshot.events],
        ),
        (
            "orch_gate_verdicts",
            "Gate verdicts by gate and result",
            ["gate", "result"],
            [((gate, result), n) for gate, result, n in snapshot.gate_verdicts],
        ),
        (
            "orch_retries",
            "Retries of a stage's job",
            ["stage"],
            [((stage,), n) for stage, n in snapshot.retries],
        ),
        (
            "orch_rollbacks",
            "Rollbacks to development, by the stage rolled back from",
            ["stage"],
            [((stage,), n) for stage, n in snapshot.rollbacks],
        ),
        (
            "orch_agent_runs",
            "Agent runs by agent and model",
            ["agent", "model"],
            [((a, m), runs) for a, m, runs, _i, _o, _c in snapshot.agent_usage],
        ),
        (
            "orch_agent_tokens",
            "Tokens used by agent runs, by agent, model and direction",
            ["agent", "model", "direction"],
            [((a, m, "input"), float(i)) for a, m, _r, i, _o, _c in snapshot.agent_usage]
            + [((a, m, "output"), float(o)) for a, m, _r, _i, o, _c in snapshot.agent_usage],
        ),
        (
            "orch_agent_cost_usd",
            "What agent runs cost, in US dollars, by agent and model",
            ["agent", "model"],
            [((a, m), cost) for a, m, _r, _i, _o, cost in snapshot.agent_usage],
        ),
        (
            "orch_outbox_failed_attempts",
            "Outbox delivery attempts that failed, by channel",
            ["channel"],
            [((channel,), n) for channel, n in snapshot.outbox_attempts],
        ),
        (
            "orch_webhook_deliveries",
            "Inbound webhook deliveries remembered, by source and answer",
            ["source", "answer"],
            [((source, answer), n) for source, answer, n in snapshot.webhooks],
        ),
    ]
    for name, doc, labels, values in counters:
        counter = CounterMetricFamily(name, doc, labels=labels)
        for label_values, value in values:
            counter.add_metric(list(label_values), value)
        yield counter

    outbox = GaugeMetricFamily(
        "orch_outbox_messages",
        "Outbox messages by channel and status (pending and sending are the backlog)",
        labels=["channel", "status"],
    )
    for channel, status, n in snapshot.outbox:
        outbox.add_metric([channel, status], n)
    yield outbox

    yield GaugeMetricFamily(
        "orch_transition_leases_held", "Transition leases held now", value=snapshot.leases_held
    )

    inbox = GaugeMetricFamily("orch_inbox_intents", "Webhook intents by status", labels=["status"])
    counts = dict.fromkeys(INBOX_STATUSES, 0)
    counts.update(dict(snapshot.inbox))
    for status, n in sorted(counts.items()):
        inbox.add_metric([status], n)
    yield inbox


class StoreCollector(Collector):
    """A collector reading :class:`MetricsStore` at every scrape."""

    def __init__(self, store: Store) -> None:
        self.metrics = MetricsStore(store)

    def collect(self) -> Iterator[Metric]:
        # Read before the snapshot's own queries: a scrape's statements count in the next.
        statements = self.metrics.store.statements
        yield from families(self.metrics.snapshot())
        counter = CounterMetricFamily(
            "orch_db_statements",
            "SQL statements this orch process sent to the database since it started",
        )
        counter.add_metric([], float(statements))
        yield counter


def render_metrics(store: Store) -> bytes:
    """One scrape: the store's figures in Prometheus' text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return generate_latest(registry)
