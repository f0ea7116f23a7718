"""The finalizer: judge a finished job, claim its end, apply the decision.

Theory of operation
-------------------
Every actor that finishes a job comes through here: the engine's watch pass when a job
exits, restart recovery for the jobs of a dead engine, the reaper's tier 2 for a job
whose finalizer died, and the reconciler for a decision that was never applied. The
steps are always the same:

1. **facts**: read what the stage's gates may look at (:meth:`Finalizer.collect_facts`,
   a frozen :class:`~orchestrator.kernel.gates.StageFacts`; nothing is written);
2. **kernel**: run the gates and ask :func:`decide_after_job` what next (pure);
3. **claim**: compare-and-swap the job's terminal status (``finalizing -> done |
   failed``); an actor that loses the claim does nothing more;
4. **apply**: commit the stage's artifacts, then apply the decision through
   :mod:`orchestrator.lifecycle.moves` in one transaction, or, for a move with side effects
   (``deploy -> done``), hand :func:`enter_transition` to the crossing pool.

The finalizer depends on the runtime (store, settings, lease, journal) and the crossing
pool only, never on the engine, so the maintenance services can use it without one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from orchestrator.kernel.decisions import (
    ENVIRONMENT,
    Advance,
    Decision,
    Rollback,
    decide_after_job,
)
from orchestrator.kernel.events import EventKind
from orchestrator.kernel.failures import FailureKind, cause_of, verdict_failure_kind
from orchestrator.kernel.gates import (
    COSTLY_FACTS,
    GATES,
    QG_CHECKS,
    STAGE_REPORT_FILES,
    Gate,
    Outcome,
    StageFacts,
    Verdict,
    facts_needed,
    run_gates,
)
from orchestrator.kernel.stages import JOB_STAGES, TRANSITION_EFFECTS
from orchestrator.lifecycle import moves as lifecycle
from orchestrator.lifecycle.crossings import CrossingPool
from orchestrator.lifecycle.feedback import rollback_feedback
from orchestrator.lifecycle.transitions import Crossing, Runtime, artifact_dir, enter_transition
from orchestrator.runners.context import RESULT_PREFIX
from orchestrator.store import Job, Task, Tx
from orchestrator.store.leases import LeaseStore
from orchestrator.workspace.commit_policy import (
    CommitPlan,
    CommitPolicy,
    commit_work,
    plan_commit,
    repository_policy,
)
from orchestrator.workspace.git import git
from orchestrator.workspace.remote import open_repo, push_task_branch
from orchestrator.workspace.worktrees import release_quietly

__all__ = ["ACTOR", "Finalizer", "runner_facts", "tail_line"]

log = logging.getLogger("orchestrator.lifecycle.finalizer")

ACTOR: Final = "engine"
MAX_ARTIFACT_BYTES: Final = 1_000_000
MAX_ARTIFACT_FILES: Final = 200


def tail_line(text: str) -> str:
    """The last line of a job's output worth showing (not JSON, not a runner result)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("{", RESULT_PREFIX))]
    return lines[-1][:300] if lines else ""


def runner_facts(output: str) -> dict[str, Any]:
    """The facts a deterministic runner printed on its result lines, merged."""
    facts: dict[str, Any] = {}
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            try:
                parsed = json.loads(line.removeprefix(RESULT_PREFIX))
            except ValueError:
                continue
            if isinstance(parsed, dict):
                facts.update(parsed)
    return facts


class Finalizer:
    """Facts, kernel, claim, apply: how every actor finishes a job."""

    def __init__(self, runtime: Runtime, crossings: CrossingPool) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.settings = runtime.settings
        self.crossings = crossings

    def finalize_orphan(
        self,
        job: Job,
        exit_code: int | None,
        output: str,
        *,
        actor: str = "recovery",
        lost: str | None = None,
    ) -> None:
        """Finalize a job whose engine died: claim it ``running -> finalizing`` (a
        ``finalizing`` one is left as it is), then judge it as any finished job; with
        no exit code it failed, ``lost`` saying why (default: its engine died)."""
        error = None if exit_code is not None else lost or "the job's engine died before it ended"
        with self.store.transaction() as tx:
            tx.set_job_status_cas(job.id, "running", "finalizing")
        failure = FailureKind.LOST if error is not None else None
        self.finalize(job, exit_code, error, output, actor=actor, failure=failure)

    def finalize(
        self,
        job: Job,
        exit_code: int | None,
        error: str | None,
        output: str,
        *,
        actor: str = ACTOR,
        failure: FailureKind | None = None,
    ) -> bool:
        """Judge a finished job and apply the decision; False if another actor won.

        ``failure`` is how the job failed when the caller knows (stopped at its timeout,
        could not start...); it is stored as the job's ``failure_kind`` and the kernel's
        cause is read from it: ENVIRONMENT (or a runner's ``defer_cause``) marks a
        failure a person must fix, so the task fails at once instead of retrying."""
        try:
            task = self.store.get_task(job.task_id)
            if task.stage != job.stage or task.failed:
                self.lost(job, task, f"task moved to {task.stage} while the job ran", actor)
                # E.g. cancelled while the job ran: its worktree was kept for the job.
                release_quietly(self.store, self.settings, task.id, actor=actor)
                return False
            job_error = error
            elsewhere = self.ran_elsewhere(task, job)
            if elsewhere is not None and job_error is None:
                # Its result is in a worktree on that host: judged here, from this
                # host's copy, it would be a stage nobody ran. Run it again instead.
                job_error, failure = elsewhere, FailureKind.LOST
            facts = runner_facts(output)
            if exit_code != 0 and facts.get("defer_cause") == ENVIRONMENT:
                # The runner says a person must fix its environment (runners/context.py).
                failure = FailureKind.ENVIRONMENT
                job_error = str(facts.get("defer_reason") or "") or job_error
            if job_error is None and exit_code != 0:
                detail = tail_line(output)
                job_error = f"{job.agent} exited with code {exit_code}" + (
                    f": {detail}" if detail else ""
                )
                failure = FailureKind.NONZERO_EXIT
            verdict = None
            plan = None
            if job_error is None:
                job_error, verdict, plan = self._judge(task, job)
                if job_error is not None:
                    failure = FailureKind.COMMIT_REFUSED
            elif failure is None:
                failure = FailureKind.AGENT_ERROR  # an error its caller did not classify
            decision = self.decide(task, job, job_error, verdict, cause_of(failure))
            return self.apply_decision(
                task,
                job,
                verdict,
                job_error,
                decision,
                actor=actor,
                failure_kind=failure,
                plan=plan,
            )
        except Exception as exc:  # finalization must not kill the loop
            if self.store.is_outage(exc):
                # Not the job's fault: it stays finalizing, and the engine finishes it
                # once the database is back (Engine.recover_after_outage).
                raise
            current = self.store.get_task(job.task_id)
            if current.stage != job.stage or current.failed:
                # Another actor finished the task while this one judged or committed,
                # and the worktree went with it: this actor lost the race, quietly.
                self.lost(job, current, f"task moved to {current.stage} meanwhile", actor)
                return False
            log.exception("finalizing job %s failed", job.id)
            self.fail_finalization(job, exc, actor)
            return False

    def fail_finalization(self, job: Job, exc: Exception, actor: str) -> None:
        """Finalizing ``job`` raised: the job fails and so does its task, for a person
        (retrying a finalization that raises would raise again); every listener hears
        it. A task that moved on meanwhile is left alone."""
        reason = f"finalizing {job.stage} failed: {type(exc).__name__}: {exc}"
        with self.store.transaction() as tx:
            tx.set_job_status_cas(
                job.id,
                "finalizing",
                "failed",
                error=f"finalize failed: {exc}",
                failure_kind=FailureKind.FINALIZE_ERROR,
            )
            task = tx.get_task(job.task_id)
            change = None
            if task.stage == job.stage and not task.failed:
                change = lifecycle.fail(tx, self.settings, task, reason, actor=actor, job_id=job.id)
        lifecycle.after_commit(self.runtime, change)

    def decide(
        self,
        task: Task,
        job: Job,
        job_error: str | None,
        verdict: Verdict | None,
        cause: str = "",
    ) -> Decision:
        return decide_after_job(
            stage=job.stage,
            pipeline=self.settings.pipeline_for(Path(task.repository)),
            job_error=job_error,
            verdict=verdict,
            attempt=task.attempt,
            rollback_count=task.rollback_count,
            limits=self.settings.limits,
            cause=cause,
            work_item=task.work_item,
        )

    def evaluate(self, task: Task, job: Job, plan: CommitPlan | None = None) -> Verdict:
        """The stage's gates over the worktree as it is (and, given ``plan``, as the
        commit would take it): read-only, nothing committed. Every judgement of a job
        comes through here, the reaper's and the finalizer's alike."""
        gates = self._gates(task, job.stage)
        return run_gates(gates, self.collect_facts(task, job, plan, facts_needed(gates)))

    def judge(self, task: Task, job: Job) -> tuple[str | None, Verdict | None]:
        """A successful job's (error, verdict): a commit over the size limits is the
        job's error (nothing will be committed), and so is a job that ran on another
        host (:meth:`ran_elsewhere`); otherwise the gates judge. Read-only."""
        if (elsewhere := self.ran_elsewhere(task, job)) is not None:
            return elsewhere, None
        error, verdict, _plan = self._judge(task, job)
        return error, verdict

    def ran_elsewhere(self, task: Task, job: Job) -> str | None:
        """Why ``job`` cannot be judged here: with a ``remote`` (hosts that share no
        disk, decision 0031), it ran on another host, whose worktree holds its result.
        None when it ran here, or when every host sees the same files (no remote)."""
        if job.owner_boot_id is None or not self.settings.repo_config(Path(task.repository)).remote:
            return None
        owner = LeaseStore(self.store).instance(job.owner_boot_id)
        if owner is None or owner["host"] == self.runtime.owner.host:
            return None
        return f"the job ran on host {owner['host']}; its result is not visible from here"

    def _judge(self, task: Task, job: Job) -> tuple[str | None, Verdict | None, CommitPlan]:
        """:meth:`judge`, with the commit plan it made (the commit that follows uses it)."""
        plan = self.plan_commit(task, job)
        if plan.problem is not None:
            return plan.problem, None, plan
        return None, self.evaluate(task, job, plan), plan

    def commit_policy(self, task: Task, job: Job) -> CommitPolicy:
        """What the commit after ``job`` may take: a runner only its own reports."""
        policy = repository_policy(self.settings, Path(task.repository), Path(task.worktree))
        if job.kind != "runner":
            return policy
        return replace(policy, only=(artifact_dir(task.work_item),))

    def plan_commit(self, task: Task, job: Job) -> CommitPlan:
        worktree = Path(task.worktree)
        if not worktree.is_dir():
            return CommitPlan()
        return plan_commit(worktree, self.commit_policy(task, job), f"the {job.stage} job")

    def _gates(self, task: Task, stage: str) -> tuple[Gate, ...]:
        names = self.settings.stage_config(Path(task.repository), stage).gates
        if names is None:
            return QG_CHECKS.get(stage, ())
        return tuple(GATES[name] for name in names)

    def collect_facts(
        self,
        task: Task,
        job: Job,
        plan: CommitPlan | None = None,
        needed: frozenset[str] = COSTLY_FACTS,
    ) -> StageFacts:
        """Read what the gates may look at; a snapshot, so gates stay pure.

        Changed paths are those the job committed itself and those the engine's commit
        will take (``plan``): the gates judge a job before the commit, and files the
        commit policy leaves out (a venv, ``.env``) never count as work. The facts that
        cost git processes (changed paths, merged) are read only when ``needed``.
        """
        worktree = Path(task.worktree)
        root = worktree / artifact_dir(task.work_item)
        artifacts: dict[str, str] = {}
        if root.is_dir():
            for path in sorted(root.rglob("*"))[:MAX_ARTIFACT_FILES]:
                if path.is_file() and path.stat().st_size <= MAX_ARTIFACT_BYTES:
                    relative = path.relative_to(root).as_posix()
                    artifacts[relative] = path.read_text(encoding="utf-8", errors="replace")
        paths: tuple[str, ...] = ()
        if "changed_paths" in needed:
            since = job.start_sha or task.base_sha
            changed = set(git(worktree, "diff", "--name-only", since, "HEAD").stdout.split("\n"))
            changed |= set((plan or self.plan_commit(task, job)).paths)
            paths = tuple(sorted(path for path in changed if path))
        merged = "merged" in needed and open_repo(self.settings, task.repository).is_merged(
            task.branch, task.base_branch
        )
        return StageFacts(task.work_item, job.stage, artifacts, paths, merged)

    def lost(self, job: Job, task: Task, why: str, actor: str) -> None:
        with self.store.transaction() as tx:
            if tx.set_job_status_cas(
                job.id,
                ("finalizing", "running"),
                "failed",
                error=why,
                failure_kind=FailureKind.LOST_RACE,
            ):
                tx.add_event(
                    EventKind.JOB_LOST_RACE,
                    actor=actor,
                    task_id=task.id,
                    job_id=job.id,
                    reason=why,
                )

    def apply_decision(
        self,
        task: Task,
        job: Job,
        verdict: Verdict | None,
        job_error: str | None,
        decision: Decision,
        *,
        actor: str = ACTOR,
        claim_from: str | None = "finalizing",
        failure_kind: FailureKind | None = None,
        plan: CommitPlan | None = None,
    ) -> bool:
        """Claim the job's terminal status, then (only if we won) act on the decision.

        ``claim_from=None`` skips the claim: the reconciler repairing a job that is
        already terminal. A failed job is stored with ``failure_kind`` (how its caller
        saw it fail) or, when its gates judged it, the kind of their verdict. ``plan``
        is the commit plan the judgement made: when it is empty there is nothing to
        commit (the job has ended and its tree with it, so nothing writes the worktree
        meanwhile) and no git process is spent on planning it again.

        When nothing happens between the claim and the move (nothing to commit, no
        remote to push to, no crossing), both are one transaction.
        """
        # Only a job that ended well and got a verdict is committed: an agent's failure
        # and a DEFER (a tool error) leave the worktree as it is, for the next attempt.
        judged = verdict is not None and verdict.outcome is not Outcome.DEFER
        nothing_planned = plan is not None and not plan.paths
        may_commit = job_error is None and judged and not nothing_planned
        repo = open_repo(self.settings, task.repository)
        if claim_from is not None and not (
            may_commit or repo.remote or self._crosses(job, decision)
        ):
            feedback = self._feedback(task, job, decision)
            with self.store.transaction() as tx:
                if not self._claim_end(
                    tx, task, job, verdict, job_error, claim_from, failure_kind, actor
                ):
                    return False  # a loser performs no side effect
                change = self._move(tx, task, job, decision, actor, feedback)
            lifecycle.after_commit(self.runtime, change)
            return change is not None
        if claim_from is not None:
            with self.store.transaction() as tx:
                if not self._claim_end(
                    tx, task, job, verdict, job_error, claim_from, failure_kind, actor
                ):
                    return False  # a loser performs no side effect
        worktree = Path(task.worktree)
        if worktree.is_dir() and may_commit:
            message = f"{task.work_item}: {job.stage} (attempt {job.attempt})"
            # A worktree removed meanwhile (another actor finished the task) raises here;
            # the callers (finalize, the reconciler's repair) count that as a lost race.
            _, plan = commit_work(
                worktree, self.commit_policy(task, job), message, f"the {job.stage} job"
            )
            if plan.problem is not None:
                log.warning("job %s: nothing committed: %s", job.id, plan.problem)
        if repo.remote and worktree.is_dir() and self.ran_elsewhere(task, job) is None:
            # Hosts share no disk: the stage's commits reach the remote before the task
            # moves on (a failure raises: the move is not recorded on this host alone).
            # Only the host that ran the job pushes: another's copy is not its result.
            push_task_branch(repo, task.branch)
        return self._act(task, job, decision, actor)

    def _claim_end(
        self,
        tx: Tx,
        task: Task,
        job: Job,
        verdict: Verdict | None,
        job_error: str | None,
        claim_from: str,
        failure_kind: FailureKind | None,
        actor: str,
    ) -> bool:
        """The job's terminal status, claimed from ``claim_from``, with the gates'
        verdict; False if another actor claimed it first."""
        passed = verdict is not None and verdict.passed
        error = None if passed else (job_error or (verdict.reason if verdict else None))
        kind = None
        if not passed:
            by_gates = verdict_failure_kind(verdict.outcome) if verdict else None
            kind = failure_kind or by_gates or FailureKind.UNKNOWN
        if not tx.set_job_status_cas(
            job.id, claim_from, "done" if passed else "failed", error=error, failure_kind=kind
        ):
            return False
        if verdict is not None:
            tx.add_event(
                EventKind.GATE_VERDICT,
                actor=actor,
                task_id=task.id,
                job_id=job.id,
                to_stage=job.stage,
                reason=verdict.reason,
                data={"outcome": str(verdict.outcome), "gate": verdict.gate},
            )
        return True

    def _rollback_feedback(self, task: Task, stage: str, reason: str) -> str:
        """What development is told after ``stage`` failed: the report, made usable."""
        path = f"{artifact_dir(task.work_item)}/{STAGE_REPORT_FILES.get(stage, '')}"
        report: str | None = None
        try:
            with (Path(task.worktree) / path).open(encoding="utf-8", errors="replace") as file:
                report = file.read(MAX_ARTIFACT_BYTES)
        except OSError:
            report = None
        return rollback_feedback(stage=stage, reason=reason, report_path=path, report=report)

    def _cross(self, task: Task, expected: str, new: str, actor: str, reason: str) -> bool:
        """Hand a side-effectful crossing to the pool; False if this engine is crossing
        the task already. Its outcome (done, rolled back, deferred, lost, failed closed)
        is written by :func:`enter_transition` in the pool's thread, as it was inline."""

        def cross() -> Crossing:
            return enter_transition(self.runtime, task, expected, new, actor=actor, reason=reason)

        if self.crossings.submit(task.id, cross, key=task.repository) is None:
            log.info("task %s: its %s->%s crossing is in flight already", task.id, expected, new)
            return False
        return True

    @staticmethod
    def _crosses(job: Job, decision: Decision) -> bool:
        """Whether ``decision`` is a side-effectful crossing (the crossing pool's)."""
        return (
            isinstance(decision, Advance) and (job.stage, decision.to_stage) in TRANSITION_EFFECTS
        )

    def _feedback(self, task: Task, job: Job, decision: Decision) -> str:
        if not isinstance(decision, Rollback):
            return ""
        return self._rollback_feedback(task, job.stage, decision.reason)

    def _move(
        self, tx: Tx, task: Task, job: Job, decision: Decision, actor: str, feedback: str
    ) -> lifecycle.Change | None:
        """The task moved as ``decision`` says; None (and a ``lost`` event) when another
        actor moved it first."""
        change = lifecycle.apply_decision(
            tx, self.settings, task, job.id, job.stage, decision, actor=actor, feedback=feedback
        )
        if change is None:
            tx.add_event(
                EventKind.LOST,
                actor=actor,
                task_id=task.id,
                job_id=job.id,
                reason="another actor moved the task first",
            )
        return change

    def _act(self, task: Task, job: Job, decision: Decision, actor: str) -> bool:
        if self._crosses(job, decision):
            assert isinstance(decision, Advance)
            return self._cross(task, job.stage, decision.to_stage, actor, decision.reason)
        feedback = self._feedback(task, job, decision)
        with self.store.transaction() as tx:
            change = self._move(tx, task, job, decision, actor, feedback)
        if change is None:
            return False
        lifecycle.after_commit(self.runtime, change)
        return True


# Keep the stage list honest: every job stage has gates.
assert set(QG_CHECKS) == set(JOB_STAGES)
