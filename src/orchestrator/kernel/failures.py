"""Why a job failed, as data: the ``jobs.failure_kind`` vocabulary. Pure; no I/O.

Every write that fails a job names one :class:`FailureKind` (the store refuses a failed
job without one), and every decision about a failed job reads the kind, never the
human-readable ``jobs.error`` text beside it (decision 0023):

* :data:`SUPERSEDED` kinds were given up because the task went elsewhere on purpose (a
  cancel, another actor's move): the reconciler has nothing to repair;
* :func:`cause_of` gives the kernel's ``cause`` for :func:`~orchestrator.kernel.decisions.
  decide_after_job`: an :attr:`FailureKind.ENVIRONMENT` failure goes to a person at once,
  also when the reconciler re-decides it after a crash.

The values are stored; never rename one. A leaf module: the store and the migrations
may import it.
"""

from __future__ import annotations

import enum
from typing import Final

from orchestrator.kernel.decisions import ENVIRONMENT
from orchestrator.kernel.gates import Outcome

__all__ = [
    "SUPERSEDED",
    "FailureKind",
    "cause_of",
    "parse_failure_kind",
    "verdict_failure_kind",
]


class FailureKind(enum.StrEnum):
    """How a job failed (``jobs.failure_kind``)."""

    # The job ran and ended badly.
    NONZERO_EXIT = "nonzero_exit"  # its process exited with a non-zero code
    AGENT_ERROR = "agent_error"  # the agent reported an error (its result, an API error)
    TIMEOUT = "timeout"  # stopped at its timeout
    BUDGET = "budget"  # stopped at its run budget (budget_usd)
    KILLED = "killed"  # stopped otherwise (engine shutdown) or ended with no exit code
    REAPED = "reaped"  # killed by the reaper's backstop (reaper_max_running_s)
    LOST = "lost"  # its orchestrator process died and left no exit code
    # The job could not run.
    LAUNCH_FAILED = "launch_failed"  # its command could not be started
    ENVIRONMENT = "environment"  # the machine or the configuration: a person fixes it
    TASK_BUDGET = "task_budget"  # not started: the task's cost budget is spent
    # The job's work was judged.
    COMMIT_REFUSED = "commit_refused"  # its work is over the commit limits
    GATE_FAILED = "gate_failed"
    GATE_DEFERRED = "gate_deferred"  # a gate could not judge (a tool error)
    FINALIZE_ERROR = "finalize_error"  # finalizing it raised; its task failed with it
    # The task went elsewhere.
    LOST_RACE = "lost_race"  # the task moved on under it (stale at launch, or while it ran)
    CANCELLED = "cancelled"  # a waiting job of a task cancelled or rolled back by a person
    # Migration 0009 found an error text it could not place (a job failed before it).
    UNKNOWN = "unknown"


# Failures nobody needs to repair: the job was given up because its task moved on.
SUPERSEDED: Final = frozenset({FailureKind.LOST_RACE, FailureKind.CANCELLED})


def parse_failure_kind(value: str | None) -> FailureKind | None:
    """The kind stored as ``value``; None for None; UNKNOWN for a value not (or no
    longer) in the vocabulary, so a row written by a newer version still reads."""
    if value is None:
        return None
    try:
        return FailureKind(value)
    except ValueError:
        return FailureKind.UNKNOWN


def cause_of(kind: str | None) -> str:
    """The kernel's ``cause`` for a job that failed with ``kind``."""
    return ENVIRONMENT if parse_failure_kind(kind) is FailureKind.ENVIRONMENT else ""


def verdict_failure_kind(outcome: Outcome) -> FailureKind | None:
    """The kind of a job whose gates returned ``outcome``; None when it passed."""
    if outcome is Outcome.PASS:
        return None
    return FailureKind.GATE_DEFERRED if outcome is Outcome.DEFER else FailureKind.GATE_FAILED
