"""The post-deploy monitor: watch a fresh deploy, and roll it back once if it is unhealthy.

Theory of operation
-------------------
``deploy -> done`` merges and deploys (:mod:`orchestrator.side_effects`). When the
repository configures ``post_deploy_health_url``, the actor that holds the transition
lease then watches the deploy before the task is done: :func:`watch_health` GETs the URL
every ``post_deploy_interval_s`` for ``post_deploy_window_s``. A 2xx is healthy; anything
else (a refused connection, a timeout, a 5xx) is a failed check, and
``post_deploy_failures`` failed checks in a row make the deploy unhealthy. Watching is
read-only, so a crash while watching only means the next owner watches again.

An unhealthy deploy is rolled back **once**, by three journaled effects of the same
crossing (each is an intent before it runs, each checks the world first, so a crash at
any point resumes where it stopped and repeats nothing):

1. ``revert``: a commit on the default branch that undoes what the task landed (the merge
   commit, the squash commit or the rebased commits), carrying the trailers
   ``Orch-Rollback: <work item> round <n>`` and ``Orch-Reverts: <landing commit>``;
2. ``redeploy``: the deploy command again, for the default branch's new head (whose tree
   is the one before the task landed, plus whatever other tasks landed since);
3. ``reapply``: on the task branch, the default branch merged in and the task's change put
   back on top (``Orch-Reapply: <work item> round <n>``), so the developer's fix lands the
   whole change again instead of a branch whose commits the default branch has reverted.

Then the task moves ``deploy -> development`` through the stage compare-and-swap, with
the monitor's report as the developer agent's feedback, and one alert.

Which crossing is rolling back is durable: the effects are named with the task's
rollback round (``revert#<n>``), so an actor that re-enters ``deploy -> done`` after a
crash mid-rollback finds the round's intent in the journal and finishes the rollback
instead of watching the now rolled-back deploy, finding it healthy and calling it done.

The rollback works on the repository on disk (the ``local`` forge). With a remote forge
the revert would have to be a pull request of its own: there the task fails closed and a
human rolls back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import sqlalchemy as sa

from orchestrator.errors import RepositoryError
from orchestrator.git import LANDED_ON_TRAILER, Repo, git
from orchestrator.journal import Effect, EffectFailedError, Observation, Seen
from orchestrator.leases import Lease, LeaseManager
from orchestrator.settings import RepoConfig, Settings
from orchestrator.store import Store, Task
from orchestrator.store.schema import effects, events

__all__ = [
    "UNHEALTHY_EVENT",
    "HealthReport",
    "Landing",
    "ReapplyEffect",
    "RevertEffect",
    "find_landing",
    "last_report",
    "rollback_effects",
    "rollback_started",
    "watch_deploy",
    "watch_health",
]

# The event that records an unhealthy deploy, with the report, before the rollback starts.
UNHEALTHY_EVENT: Final = "deploy.unhealthy"
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
) -> HealthReport | None:
    """Watch the task's fresh deploy if its repository has a health URL.

    Returns the report when the deploy is unhealthy (recorded, fenced by the lease, as a
    ``deploy.unhealthy`` event before anything is rolled back), None otherwise.
    """
    report = _watch(settings.repo_config(Path(task.repository)))
    if report is None or report.healthy:
        return None
    with store.transaction() as tx:
        leases.check(tx, lease)
        tx.add_event(
            UNHEALTHY_EVENT,
            actor=actor,
            task_id=task.id,
            reason=f"{report.url}: {report.failed_in_a_row} failed checks in a row "
            f"({report.last_error}); rolling back",
            data={"report": report.render()},
        )
    return report


def last_report(store: Store, task: Task) -> str:
    """The report of the task's latest unhealthy deploy (for a rollback resumed later)."""
    with store.engine.connect() as conn:
        data = conn.execute(
            sa.select(events.c.data)
            .where(events.c.task_id == task.id, events.c.kind == UNHEALTHY_EVENT)
            .order_by(events.c.id.desc())
            .limit(1)
        ).scalar_one_or_none()
    report = (data or {}).get("report")
    return str(report) if report else "The post-deploy monitor found the deploy unhealthy.\n"


# --- the rollback ------------------------------------------------------------------------


@dataclass(frozen=True)
class Landing:
    """The commits that landed a task on the default branch: ``base..tip``."""

    base: str
    tip: str


def find_landing(repo: Repo, task: Task) -> Landing:
    """Where the task branch's head landed on its default branch, from the world.

    The landing commit is the oldest commit along the default branch's first-parent
    chain that contains the task (by ancestry, or by a squash/rebase trailer). Its base
    is the ``Orch-Landed-On`` trailer a squash or rebase landing carries (a rebase made
    one commit per branch commit), or else its first parent (a merge commit).
    """
    head = repo.rev(task.branch)
    chain = git(
        repo.path,
        "rev-list",
        "--first-parent",
        f"--max-count={LANDING_SEARCH_DEPTH}",
        task.base_branch,
    ).stdout.split()
    tip = ""
    for commit in chain:
        if not repo.is_merged(head, commit):
            break
        tip = commit
    if not tip:
        raise RepositoryError(
            f"{task.branch} has not landed on {task.base_branch}: nothing to roll back"
        )
    landed_on = _trailer_value(repo, tip, LANDED_ON_TRAILER)
    if landed_on:
        return Landing(landed_on, tip)
    parents = git(repo.path, "rev-list", "--parents", "-n", "1", tip).stdout.split()[1:]
    if not parents:
        raise RepositoryError(f"{tip[:10]} is a root commit: it cannot be rolled back")
    base = parents[0]
    return Landing(base, tip)


def _find_trailer(repo: Repo, ref: str, trailer: str, value: str) -> str | None:
    """The newest commit on ``ref`` whose message carries ``trailer: value``."""
    found = git(
        repo.path,
        "log",
        "-1",
        "--format=%H",
        "--fixed-strings",
        f"--grep={trailer}: {value}",
        ref,
        check=False,
    ).stdout.strip()
    return found or None


def _trailer_value(repo: Repo, commit: str, trailer: str) -> str:
    message = git(repo.path, "log", "-1", "--format=%B", commit).stdout
    for line in message.splitlines():
        if line.startswith(f"{trailer}: "):
            return line.removeprefix(f"{trailer}: ").strip()
    return ""


def round_marker(task: Task) -> str:
    return f"{task.work_item} round {task.rollback_count + 1}"


@dataclass
class RevertEffect:
    """Undo the task's landing on the default branch with one new commit."""

    repo: Repo
    task: Task
    name: str
    landing: Landing | None = None
    revert_sha: str | None = None

    def observe(self) -> Observation:
        found = _find_trailer(
            self.repo, self.task.base_branch, ROLLBACK_TRAILER, round_marker(self.task)
        )
        if found is None:
            return Observation(Seen.NOT_DONE)
        tip = _trailer_value(self.repo, found, REVERTS_TRAILER)
        base = _trailer_value(self.repo, found, "Orch-Reverts-Base")
        self.landing, self.revert_sha = Landing(base, tip), found
        return Observation(Seen.DONE, {"revert_sha": found, "landing": tip, "base": base})

    def perform(self, on_spawn: Callable[[int], None]) -> Mapping[str, Any]:
        with self.repo.locked():
            landing = find_landing(self.repo, self.task)
            target = self.task.base_branch
            before = self.repo.rev(target)
            message = (
                f"Roll back {self.task.work_item}: post-deploy health check failed\n\n"
                f"{ROLLBACK_TRAILER}: {round_marker(self.task)}\n"
                f"{REVERTS_TRAILER}: {landing.tip}\n"
                f"Orch-Reverts-Base: {landing.base}\n"
            )
            scratch = self.repo.path / ".git" / "orch-rollback" / self.task.work_item
            sha = self.repo.commit_in_scratch(
                scratch, before, lambda tree: _revert(tree, landing, message)
            )
            self.repo.move_branch(target, sha, before)
        self.landing, self.revert_sha = landing, sha
        return {"revert_sha": sha, "landing": landing.tip, "base": landing.base}


def _revert(worktree: Path, landing: Landing, message: str) -> str:
    parents = git(worktree, "rev-list", "--parents", "-n", "1", landing.tip).stdout.split()[1:]
    if len(parents) > 1:
        args = ["revert", "--no-commit", "-m", "1", landing.tip]
    else:
        args = ["revert", "--no-commit", f"{landing.base}..{landing.tip}"]
    if git(worktree, *args, check=False).returncode != 0:
        raise RepositoryError(
            f"cannot revert {landing.tip[:10]}: conflicts with later commits; roll back by hand"
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

    def observe(self) -> Observation:
        found = _find_trailer(self.repo, self.task.branch, REAPPLY_TRAILER, round_marker(self.task))
        if found is None:
            return Observation(Seen.NOT_DONE)
        return Observation(Seen.DONE, {"reapply_sha": found})

    def perform(self, on_spawn: Callable[[int], None]) -> Mapping[str, Any]:
        reverted = self.revert.revert_sha
        if reverted is None:
            raise RepositoryError("the rollback's revert commit is unknown: reapply by hand")
        worktree = Path(self.task.worktree)
        message = (
            f"Reapply {self.task.work_item} after the post-deploy rollback\n\n"
            f"{REAPPLY_TRAILER}: {round_marker(self.task)}\n"
        )
        if git(worktree, "status", "--porcelain").stdout.strip():
            git(worktree, "stash", "--include-untracked", "--quiet")
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
                    f"cannot reapply {self.task.work_item} on {self.task.branch}: "
                    f"git {step[0]} conflicts; reapply by hand"
                )
        git(worktree, "commit", "--quiet", "--no-verify", "--allow-empty", "-m", message)
        return {"reapply_sha": git(worktree, "rev-parse", "HEAD").stdout.strip()}


def effect_name(base: str, task: Task) -> str:
    """Effects of a rollback are named by round: a later rollback is a new effect."""
    return f"{base}#{task.rollback_count + 1}"


def rollback_started(store: Store, task: Task, transition: str) -> bool:
    """Whether this crossing already began rolling back (its revert has a journal row)."""
    with store.engine.connect() as conn:
        found = conn.execute(
            sa.select(effects.c.id)
            .where(
                effects.c.task_id == task.id,
                effects.c.transition == transition,
                effects.c.effect == effect_name("revert", task),
            )
            .limit(1)
        ).first()
    return found is not None


def rollback_effects(
    settings: Settings, task: Task, redeploy: Callable[[str], Effect | None]
) -> list[Effect]:
    """The rollback's effects, in order: revert, redeploy (if there is a deploy command),
    reapply. ``redeploy(name)`` builds the deploy effect under that name."""
    config = settings.repo_config(Path(task.repository))
    if (config.forge or settings.forge) != "local":
        raise EffectFailedError(
            "the post-deploy rollback reverts on the repository on disk; with a remote "
            "forge, revert the merge by hand"
        )
    repo = Repo(Path(task.repository))
    revert = RevertEffect(repo, task, effect_name("revert", task))
    built: list[Effect] = [revert]
    deploy = redeploy(effect_name("redeploy", task))
    if deploy is not None:
        built.append(deploy)
    built.append(ReapplyEffect(repo, task, revert, effect_name("reapply", task)))
    return built
