"""What happens after a job: advance, retry, roll back or fail. Pure; no I/O.

The engine calls :func:`decide_after_job` with what it knows (the job's exit, the gates'
verdict, the task's counters) and applies the returned value in one transaction. This
function does nothing itself, so every rule here is unit-tested as data.

Rules:

* the agent failed (non-zero exit, timeout, could not start) or a gate deferred: the
  same stage runs again as attempt + 1, after a backoff, up to ``max_attempts``;
* a gate failed in analysis, architecture or development: the stage runs again, as above,
  with the verdict as feedback;
* a gate failed in testing, deploy-staging or deploy: the code is wrong, so the task rolls
  back to development (feedback: the report), up to ``max_rollbacks`` times;
* the job failed because of its **environment** (``cause=ENVIRONMENT``: a command that
  cannot start, a setup command or workspace hook that failed, a missing hybrid
  explainer): the task fails at once, for a person, with the reason and the retry
  command: retrying cannot help and the code is not to blame, so no retry and never a
  rollback to development;
* a budget is spent: the task fails with a reason a human can act on;
* everything passed: the task advances to the pipeline's next stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from orchestrator.kernel.gates import Outcome, Verdict
from orchestrator.kernel.stages import ROLLBACK_TARGET, Pipeline

__all__ = [
    "ENVIRONMENT",
    "Advance",
    "Decision",
    "Fail",
    "Limits",
    "Retry",
    "Rollback",
    "decide_after_job",
]

# The cause of a job's failure that a person must fix: the machine or the configuration,
# not the code. A runner reports it as ``defer_cause`` in its ORCH-RESULT line
# (``runners.context.defer_for_environment``); the engine passes it as ``cause``.
ENVIRONMENT: Final = "environment"


@dataclass(frozen=True)
class Limits:
    """The budgets a task's failures are counted against."""

    max_attempts: int = 3
    max_rollbacks: int = 2
    retry_backoff_s: float = 5.0


@dataclass(frozen=True)
class Advance:
    to_stage: str
    reason: str


@dataclass(frozen=True)
class Retry:
    stage: str
    attempt: int
    delay_s: float
    reason: str


@dataclass(frozen=True)
class Rollback:
    to_stage: str
    reason: str


@dataclass(frozen=True)
class Fail:
    reason: str
    # ENVIRONMENT when a person must fix the machine or the configuration first.
    cause: str = ""


Decision = Advance | Retry | Rollback | Fail


def _retry_or_fail(stage: str, attempt: int, limits: Limits, why: str) -> Decision:
    if attempt >= limits.max_attempts:
        return Fail(f"{stage} failed {attempt} time(s) (max_attempts={limits.max_attempts}): {why}")
    # Exponential backoff, so a flapping tool is not hammered.
    delay = limits.retry_backoff_s * (2 ** (attempt - 1))
    return Retry(stage, attempt + 1, delay, why)


def decide_after_job(
    *,
    stage: str,
    pipeline: Pipeline,
    job_error: str | None,
    verdict: Verdict | None,
    attempt: int,
    rollback_count: int,
    limits: Limits,
    cause: str = "",
    work_item: str = "",
) -> Decision:
    """Decide the task's next step once a job of ``stage`` has finished.

    ``job_error`` is set when the job itself failed (exit code, timeout, start failure);
    then ``verdict`` is ignored. Otherwise ``verdict`` is the stage's gates' verdict.
    ``cause`` is :data:`ENVIRONMENT` when the job failed because of its environment;
    ``work_item`` names the task in the retry command a person is given.
    """
    if job_error is not None and cause == ENVIRONMENT:
        retry = f"`orch task retry {work_item}`" if work_item else "`orch task retry`"
        return Fail(
            f"{stage} needs a person: {job_error}. This is the environment or the "
            f"configuration, not the code: fix it, then run {retry}",
            cause=ENVIRONMENT,
        )
    if job_error is not None:
        return _retry_or_fail(stage, attempt, limits, job_error)
    if verdict is None:
        return _retry_or_fail(stage, attempt, limits, "no verdict from the gates")
    if verdict.outcome is Outcome.PASS:
        return Advance(pipeline.next_stage(stage), verdict.reason)
    if verdict.outcome is Outcome.DEFER:
        return _retry_or_fail(stage, attempt, limits, f"gate deferred: {verdict.reason}")
    target = ROLLBACK_TARGET.get(stage)
    if target is None:
        return _retry_or_fail(stage, attempt, limits, verdict.reason)
    if rollback_count >= limits.max_rollbacks:
        return Fail(
            f"{stage} gate failed after {rollback_count} rollback(s) "
            f"(max_rollbacks={limits.max_rollbacks}): {verdict.reason}"
        )
    return Rollback(target, verdict.reason)
