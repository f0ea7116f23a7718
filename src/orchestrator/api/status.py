"""What ``GET /status`` and the dashboard's Health page say about a running orchestrator.

Theory of operation
-------------------
Most facts come from the database, so any instance answers the same: tasks by stage,
failed tasks, running jobs, the outbox backlog, the inbox's intents waiting for a lease,
the transition leases held (and whether their owners live), and the process starts
(``instances``) not marked stopped, each with its last heartbeat and whether it is
alive. Two come from this process: its version and uptime, and its **loops**: the
engine's thread and the loops ``orch serve``'s supervisor runs (reaper, reconciler,
worktree janitor, inbox, heartbeat, outbox), each ``running``, ``restarting`` or
``stopped`` with its restarts and last error (:mod:`orchestrator.maintenance.supervisor`), and the
engine's last tick, and whether it is the **leader** that runs the maintenance that must
run once (decision 0027: an advisory lock on PostgreSQL, the one instance on SQLite). A
supervised loop that dies is restarted, so its restarts and last
error show it; the engine's death stops ``orch serve``, and its last tick is what shows
an engine that is alive but stuck.
"""

from __future__ import annotations

import time
from typing import Any, Final

from orchestrator import __version__
from orchestrator.api.format import iso_utc, with_iso_times
from orchestrator.effects.leases import LeaseManager
from orchestrator.engine.core import Engine
from orchestrator.kernel.stages import STAGE_TRANSITIONS
from orchestrator.store import ACTIVE_JOB_STATUSES, InboxStore, Store
from orchestrator.store.leases import LeaseStore

__all__ = [
    "MAX_INSTANCES_SHOWN",
    "MAX_LEASES_SHOWN",
    "OUTBOX_OPEN_STATUSES",
    "status_report",
]

# Outbox messages /status counts: not sent yet, or never to be.
OUTBOX_OPEN_STATUSES: Final = ("pending", "sending", "failed")
# A status answer stays small whatever happened: the newest instances, the first leases.
MAX_INSTANCES_SHOWN: Final = 20
MAX_LEASES_SHOWN: Final = 100


def status_report(
    store: Store,
    *,
    started_at: float,
    engine: Engine | None,
    loops: list[dict[str, Any]],
    leases: LeaseManager,
    leader: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``GET /status`` answer (docs/api.md lists its fields)."""
    now = time.time()
    counts = dict.fromkeys(STAGE_TRANSITIONS, 0)
    counts.update(store.counts_by_stage())
    held = leases.held()
    instances = LeaseStore(store).open_instances(MAX_INSTANCES_SHOWN)
    leader_boot_id = leader.get("leader_boot_id") if leader is not None else None
    return {
        "version": __version__,
        "started_at": iso_utc(started_at),
        "uptime_s": round(now - started_at, 3),
        "tasks_by_stage": counts,
        "failed_tasks": store.count_failed_tasks(),
        "running_jobs": len(store.jobs_by_status(ACTIVE_JOB_STATUSES)),
        "boot_id": engine.boot_id if engine is not None else None,
        # Undelivered outbound calls (cards, write-back, forge statuses) by status.
        "outbox": store.outbox_counts(OUTBOX_OPEN_STATUSES),
        # Webhook intents not applied yet (waiting for a lease, or retried).
        "inbox": InboxStore(store).inbox_summary(now),
        # This process's supervised loops; the engine's last tick (None before the first).
        "loops": loops,
        # Whether this instance leads the maintenance that runs once (None outside serve).
        "leader": with_iso_times(leader) if leader is not None else None,
        "engine_last_tick_at": iso_utc(engine.last_tick_at) if engine is not None else None,
        "transition_leases": {
            "enabled": leases.settings.transition_lease_enabled,
            "held": len(held),
            "stale": sum(1 for info in held if not info.live),
            "leases": [with_iso_times(info.to_dict()) for info in held[:MAX_LEASES_SHOWN]],
        },
        # Process starts not marked stopped, newest first: alive, or died without a word.
        "instances": [
            with_iso_times(
                {
                    "boot_id": row["boot_id"],
                    "instance": row["instance"],
                    "host": row["host"],
                    "pid": row["pid"],
                    "started_at": row["started_at"],
                    "heartbeat_at": row["heartbeat_at"],
                    "heartbeat_age_s": round(max(now - float(row["heartbeat_at"]), 0.0), 3),
                    "alive": leases.instance_alive(row["boot_id"]),
                    # Whether it leads the maintenance (None: not known here).
                    "leader": None if leader is None else row["boot_id"] == leader_boot_id,
                }
            )
            for row in instances
        ],
    }
