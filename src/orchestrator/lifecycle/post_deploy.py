"""The post-deploy monitor: watch a fresh deploy, and roll it back once if it is unhealthy.

Theory of operation
-------------------
``deploy -> done`` merges and deploys (:mod:`orchestrator.effects.merge_deploy`). When the
repository configures ``post_deploy_health_url``, the actor that holds the transition
lease then watches the deploy before the task is done: :func:`watch_health` GETs the URL
every ``post_deploy_interval_s`` for ``post_deploy_window_s``. A 2xx is healthy; anything
else (a refused connection, a timeout, a 5xx) is a failed check, and
``post_deploy_failures`` failed checks in a row make the deploy unhealthy. Watching is
read-only, so a crash while watching only means the next owner watches again.

An unhealthy verdict is first made durable: a ``deploy.unhealthy`` event with the report,
written under the lease. Its id names the **rollback**: from then on, until the task
leaves ``deploy`` (``task.rollback``) or is cancelled, every actor that enters
``deploy -> done`` finishes that rollback instead of merging, deploying or watching
again (:func:`pending_rollback`: the task's ``pending_rollback`` column, written with the
verdict by :func:`orchestrator.lifecycle.moves.record_unhealthy_deploy` and cleared by the
stage compare-and-swap), so a crash anywhere after the verdict can neither
repeat the rollback nor end in "done" with the change reverted. A retry does not clear
it: it resumes it.

The rollback is three journaled effects, each an intent before it runs, each checking
the world first (and the revert and the reapply once more under the repository lock):

1. ``revert#<id>``: a commit on the default branch that undoes exactly what the task
   landed (its merge commit, its squash commit, or its rebased commits, found by the
   ``Orch-Merged-Head`` / ``Orch-Landed-On`` trailers or the merge's second parent),
   carrying ``Orch-Rollback: <work item> #<id>``;
2. ``redeploy#<id>``: the deploy command again, for the default branch's new head;
3. ``reapply#<id>``: on the task branch, the default branch merged in and the revert
   reverted (``Orch-Reapply: <work item> #<id>``), so the developer's fix lands the
   whole change again instead of a branch whose commits the default branch reverted.

Then the task moves ``deploy -> development`` through the stage compare-and-swap with
the report as the developer's feedback and one alert, or, when it has used up
``max_rollbacks``, it fails in ``deploy`` for a human (the rollback is done either way).

The rollback reverts on the repository on disk (the ``local`` forge). With a remote forge
it fails closed: a human reverts there, then ``orch task rollback <ID>``. Health windows
of two tasks of one repository may overlap; a failure is blamed on the task whose window
saw it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from orchestrator.effects.journal import Effect, EffectFailedError, Observation, Seen
from orchestrator.effects.leases import Lease, LeaseLostError, LeaseManager
from orchestrator.errors import RepositoryError
from orchestrator.kernel.events import EventKind
from orchestrator.lifecycle import moves as lifecycle
from orchestrator.settings import RepoConfig, Settings
from orchestrator.store import Store, Task
from orchestrator.workspace.commit_policy import CommitPolicy, commit_work, effective_excludes
from orchestrator.workspace.git import LANDED_ON_TRAILER, MERGED_HEAD_TRAILER, Repo, git
from orchestrator.workspace.remote import open_repo, push_task_branch
from orchestrator.workspace.setup import recorded_patterns

__all__ = [
    "UNHEALTHY_EVENT",
    "HealthReport",
    "Landing",
    "ReapplyEffect",
    "RevertEffect",
    "find_landing",
    "pending_rollback",
    "report_of",
    "rollback_effects",
    "watch_deploy",
    "watch_health",
]

# The event that records an unhealthy deploy, with the report, before the rollback starts.
UNHEALTHY_EVENT: Final = EventKind.DEPLOY_UNHEALTHY
ROLLBACK_TRAILER: Final = "Orch-Rollback"
REVERTS_TRAILER: Final = "Orch-Reverts"
REAPPLY_TRAILER: Final = "Orch-Reapply"
# A health check never waits longer than this, whatever the interval.
CHECK_TIMEOUT_CAP_S: Final = 10.0
# How far back along the default branch the landing commit is looked for.
LANDING_SEARCH_DEPTH: Final = 500


@dataclass(frozen=True)
class HealthReport:
    """What the monitor saw."""

    url: str
    healthy: bool
    checks: int
    failed_in_a_row: int
    last_error: str
    window_s: float

    def render(self) -> str:
        """The report, as the developer agent and the events trail read it."""
        verdict = "healthy" if self.healthy else "UNHEALTHY"
        lines = [
            "# Post-deploy monitor report",
            "",
            f"result: {verdict}",
            f"health_url: {self.url}",
            f"checks: {self.checks} over a {self.window_s:g}s window",
            f"failed_in_a_row: {self.failed_in_a_row}",
        ]
        if self.last_error:
            lines.append(f"last_error: {self.last_error}")
        if not self.healthy:
            lines += [
                "",
                "The deploy was rolled back: the default branch reverted your change and the "
                "previous state was redeployed. Your change is back on the task branch; fix "
                "what made the service unhealthy.",
            ]
        return "\n".join(lines) + "\n"


def _check(client: httpx.Client, url: str) -> str:
    """One GET: "" if it answered 2xx, else what went wrong."""
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if 200 <= response.status_code < 300:
        return ""
    return f"HTTP {response.status_code}"


def watch_health(
    url: str,
    *,
    window_s: float,
    interval_s: float,
    failures: int,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> HealthReport:
    """Poll ``url`` for ``window_s``; unhealthy after ``failures`` failed checks in a row.

    A streak of failures still short of ``failures`` when the window ends is watched to
    its end: the verdict is never "healthy" while the last check failed.
    """
    deadline = clock() + window_s
    checks = streak = 0
    last_error = ""
    # trust_env=False: a health check of a local service never goes through a proxy.
    timeout = min(interval_s, CHECK_TIMEOUT_CAP_S)
    with httpx.Client(timeout=timeout, trust_env=False, follow_redirects=True) as client:
        while True:
            checks += 1
            error = _check(client, url)
            if error:
                streak += 1
                last_error = error
                if streak >= failures:
                    return HealthReport(url, False, checks, streak, last_error, window_s)
            else:
                streak = 0
            if clock() >= deadline and streak == 0:
                return HealthReport(url, True, checks, 0, last_error, window_s)
            sleep(interval_s)


def _watch(config: RepoConfig) -> HealthReport | None:
    if config.post_deploy_health_url is None:
        return None
    return watch_health(
        config.post_deploy_health_url,
        window_s=config.post_deploy_window_s,
        interval_s=config.post_deploy_interval_s,
        failures=config.post_deploy_failures,
    )


def watch_deploy(
    store: Store,
    settings: Settings,
    leases: LeaseManager,
    lease: Lease,
    task: Task,
    *,
    actor: str,
) -> int | None:
    """Watch the task's fresh deploy if its repository has a health URL.

    Unhealthy: the verdict is recorded (fenced by the lease) as a ``deploy.unhealthy``
    event carrying the report, and its id, the rollback's name, is returned. Healthy or
    not watched: None.
    """
    report = _watch(settings.repo_config(Path(task.repository)))
    if report is None or report.healthy:
        return None
    with store.transaction() as tx:
        leases.check(tx, lease)
        rollback = lifecycle.record_unhealthy_deploy(
            tx,
            task,
            actor=actor,
            reason=f"{report.url}: {report.failed_in_a_row} failed checks in a row "
            f"({report.last_error}); rolling back",
            report=report.render(),
        )
        if rollback is None:
            # Not ours any more (nothing of the verdict is committed).
            raise LeaseLostError(f"task {task.work_item} left {task.stage} while watched")
        return rollback


def pending_rollback(store: Store, task: Task) -> int | None:
    """The id of the unhealthy verdict this task is still rolling back, if any: its
    ``pending_rollback`` column, set with the verdict and cleared when it leaves the
    stage (read afresh: ``task`` may be older than the verdict)."""
    return store.get_task(task.id).pending_rollback


def report_of(store: Store, rollback: int) -> str:
    """The monitor's report recorded with the unhealthy verdict ``rollback``."""
    event = store.get_event(rollback)
    report = ((event.data if event else None) or {}).get("report")
    return str(report) if report else "The post-deploy monitor found the deploy unhealthy.\n"


# --- the rollback ------------------------------------------------------------------------


@dataclass(frozen=True)
class Landing:
    """The commits that landed a task on the default branch: ``base..tip``."""

    base: str
    tip: str


def _parents(repo: Repo, commit: str) -> list[str]:
    return git(repo.path, "rev-list", "--parents", "-n", "1", commit).stdout.split()[1:]


def find_landing(repo: Repo, task: Task) -> Landing:
    """The commits orch made to land the task branch's head, from the world.

    The landing commit is, along the default branch's first-parent chain, the merge
    commit whose second parent is the head, or the squash / rebase commit whose
    ``Orch-Merged-Head`` trailer names it. Its base is the ``Orch-Landed-On`` trailer (a
    rebase made one commit per branch commit) or its first parent. Anything else (the
    head reached the default branch some other way) is not ours to revert.
    """
    head = repo.rev(task.branch)
    chain = git(
        repo.path,
        "rev-list",
        "--first-parent",
        f"--max-count={LANDING_SEARCH_DEPTH}",
        task.base_branch,
    ).stdout.split()
    for commit in chain:
        parents = _parents(repo, commit)
        if parents[1:2] == [head]:
            return Landing(parents[0], commit)
        if parents and _trailer_value(repo, commit, MERGED_HEAD_TRAILER) == head:
            landed_on = _trailer_value(repo, commit, LANDED_ON_TRAILER)
            return Landing(landed_on or parents[0], commit)
    raise RepositoryError(
        f"no landing of {task.branch} ({head[:10]}) by orch in the last "
        f"{LANDING_SEARCH_DEPTH} commits of {task.base_branch}: revert it by hand, then "
        f"`orch task rollback {task.work_item}`"
    )


def _find_trailer(repo: Repo, ref: str, trailer: str, value: str) -> str | None:
    """The newest commit on ``ref`` carrying exactly ``trailer: value``."""
    candidates = git(
        repo.path,
        "log",
        "--format=%H",
        "--fixed-strings",
        f"--grep={trailer}: {value}",
        ref,
        check=False,
    ).stdout.split()
    for commit in candidates:
        if _trailer_value(repo, commit, trailer) == value:
            return commit
    return None


def _trailer_value(repo: Repo, commit: str, trailer: str) -> str:
    message = git(repo.path, "log", "-1", "--format=%B", commit).stdout
    for line in message.splitlines():
        if line.startswith(f"{trailer}: "):
            return line.removeprefix(f"{trailer}: ").strip()
    return ""


@dataclass
class RevertEffect:
    """Undo the task's landing on the default branch with one new commit."""

    repo: Repo
    task: Task
    rollback: int
    name: str
    revert_sha: str | None = None

    @property
    def marker(self) -> str:
        return f"{self.task.work_item} #{self.rollback}"

    def _found(self) -> str | None:
        # With a remote, on the default branch as it is there (another host may have
        # reverted it before it died).
        target = self.repo.current(self.task.base_branch)
        found = _find_trailer(self.repo, target, ROLLBACK_TRAILER, self.marker)
        self.revert_sha = found or self.revert_sha
        return found

    def observe(self) -> Observation:
        found = self._found()
        if found is None:
            return Observation(Seen.NOT_DONE)
        return Observation(Seen.DONE, {"revert_sha": found})

    def perform(self, on_spawn: Callable[[int], None]) -> Mapping[str, Any]:
        with self.repo.locked():
            # Once more under the lock: an actor fenced out too late must not revert twice.
            if (found := self._found()) is not None:
                return {"revert_sha": found, "already_reverted": True}
            landing = find_landing(self.repo, self.task)
            target = self.task.base_branch
            before = self.repo.current(target)
            message = (
                f"Roll back {self.task.work_item}: post-deploy health check failed\n\n"
                f"{ROLLBACK_TRAILER}: {self.marker}\n"
                f"{REVERTS_TRAILER}: {landing.tip}\n"
            )
            scratch = self.repo.path / ".git" / "orch-rollback" / self.task.work_item
            sha = self.repo.commit_in_scratch(
                scratch, before, lambda tree: _revert(tree, landing, message)
            )
            self.repo.publish(target, sha, before)
        self.revert_sha = sha
        return {"revert_sha": sha, "landing": landing.tip, "base": landing.base}


def _revert(worktree: Path, landing: Landing, message: str) -> str:
    if len(git(worktree, "rev-list", "--parents", "-n", "1", landing.tip).stdout.split()) > 2:
        args = ["revert", "--no-commit", "-m", "1", landing.tip]
    else:
        args = ["revert", "--no-commit", f"{landing.base}..{landing.tip}"]
    if git(worktree, *args, check=False).returncode != 0:
        raise RepositoryError(
            f"cannot revert {landing.tip[:10]}: it conflicts with later commits; revert it "
            "by hand, then `orch task rollback <ID>`"
        )
    git(worktree, "commit", "--quiet", "--no-verify", "--allow-empty", "-m", message)
    return git(worktree, "rev-parse", "HEAD").stdout.strip()


@dataclass
class ReapplyEffect:
    """Put the task's change back on top of the task branch, after the revert."""

    repo: Repo
    task: Task
    revert: RevertEffect
    name: str
    # What the commit of work left in the worktree may take (the engine's policy).
    policy: CommitPolicy = CommitPolicy()  # noqa: RUF009 - frozen, immutable

    def _found(self) -> str | None:
        if self.repo.remote:
            self.repo.fetch(self.task.branch)
        return _find_trailer(
            self.repo, self.repo.tip(self.task.branch), REAPPLY_TRAILER, self.revert.marker
        )

    def observe(self) -> Observation:
        found = self._found()
        if found is None:
            return Observation(Seen.NOT_DONE)
        return Observation(Seen.DONE, {"reapply_sha": found})

    def perform(self, on_spawn: Callable[[int], None]) -> Mapping[str, Any]:
        with self.repo.locked():
            if (found := self._found()) is not None:
                return {"reapply_sha": found, "already_reapplied": True}
            return {"reapply_sha": self._reapply()}

    def _reapply(self) -> str:
        reverted = self.revert.revert_sha or self.revert._found()
        if reverted is None:
            raise RepositoryError("the rollback's revert commit is not on the default branch")
        worktree = Path(self.task.worktree)
        # Work left in the worktree is kept, as the engine keeps it after every job, under
        # the same commit policy (never a venv, node_modules or .env).
        _, plan = commit_work(
            worktree,
            self.policy,
            f"{self.task.work_item}: work in progress before the rollback",
            "the work left in the task worktree",
        )
        if plan.problem is not None:
            raise RepositoryError(
                f"cannot reapply {self.task.work_item}: {plan.problem}; then `orch task "
                f"rollback {self.task.work_item}`"
            )
        # The default branch (with the revert) first, then the revert reverted: the
        # branch holds the whole change again on top of what the default branch has.
        steps = (
            ("merge", "--no-edit", "--quiet", self.task.base_branch),
            ("revert", "--no-commit", reverted),
        )
        for step in steps:
            if git(worktree, *step, check=False).returncode != 0:
                git(worktree, step[0], "--abort", check=False)
                raise RepositoryError(
                    f"cannot reapply {self.task.work_item} on {self.task.branch}: git "
                    f"{step[0]} conflicts; reapply by hand, then `orch task rollback "
                    f"{self.task.work_item}`"
                )
        message = (
            f"Reapply {self.task.work_item} after the post-deploy rollback\n\n"
            f"{REAPPLY_TRAILER}: {self.revert.marker}\n"
        )
        git(worktree, "commit", "--quiet", "--no-verify", "--allow-empty", "-m", message)
        # With a remote, on it before the effect is journaled done: the next job may
        # run on another host.
        push_task_branch(self.repo, self.task.branch)
        return git(worktree, "rev-parse", "HEAD").stdout.strip()


def rollback_effects(
    settings: Settings, task: Task, rollback: int, redeploy: Callable[[str], Effect | None]
) -> list[Effect]:
    """The effects of rollback ``rollback``, in order: revert, redeploy (if there is a
    deploy command), reapply. ``redeploy(name)`` builds the deploy effect by that name."""
    config = settings.repo_config(Path(task.repository))
    if (config.forge or settings.forge) != "local":
        raise EffectFailedError(
            "the deploy is unhealthy and the post-deploy rollback reverts only on the "
            "repository on disk: revert the merge on the forge by hand, then "
            f"`orch task rollback {task.work_item}`"
        )
    repo = open_repo(settings, task.repository)
    revert = RevertEffect(repo, task, rollback, f"revert#{rollback}")
    built: list[Effect] = [revert]
    deploy = redeploy(f"redeploy#{rollback}")
    if deploy is not None:
        built.append(deploy)
    policy = CommitPolicy(
        exclude=(
            *effective_excludes(config.commit_exclude),
            *recorded_patterns(Path(task.worktree)),
        ),
        max_bytes=settings.commit_max_bytes,
        max_files=settings.commit_max_files,
    )
    built.append(ReapplyEffect(repo, task, revert, f"reapply#{rollback}", policy))
    return built
