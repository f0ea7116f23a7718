"""What the engine commits after a job: the commit policy.

Theory of operation
-------------------
After a job the engine commits the agent's work on the task branch, on the agent's
behalf. It used to run ``git add --all``, which committed whatever a tool had left in
the worktree (a virtualenv, ``node_modules/``, a ``.env`` with keys). Now it commits a
*planned* list of paths, and nothing else is ever staged:

1. the plan is made in a **scratch index** (a copy of the worktree's index, reset to
   ``HEAD``), so what an agent staged itself counts as new, and the real index is not
   touched until the commit;
2. **new paths** are the untracked files git lists with ``--exclude-standard`` (the
   repository's ``.gitignore`` files, ``.git/info/exclude``, ``core.excludesFile``) and
   the policy's own patterns given as ``--exclude`` (:data:`DEFAULT_COMMIT_EXCLUDE` plus
   the repository's ``commit_exclude``, gitignore syntax, evaluated by git itself: an
   excluded directory is never even read). A directory holding a ``pyvenv.cfg`` is a
   virtualenv, whatever its name, and is left out too;
3. **changed tracked paths** (modified, deleted) are committed: a file the repository
   tracks is the repository's business, even when a pattern matches it;
4. a **scope** (``only``) keeps just the paths under some directories: a runner stage
   commits only its own reports under ``docs/work-items/<ID>/``;
5. a plan over ``max_files`` files or ``max_bytes`` bytes is not committed: it has a
   ``problem`` naming the biggest paths, which the engine turns into the stage's failure.

The commit is made from the scratch index (``git add`` of exactly the planned paths,
``git commit``), then the real index is reset to the new ``HEAD``. Excluded files stay
in the worktree, untracked.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Final

from orchestrator.settings import DEFAULT_COMMIT_EXCLUDE, Settings
from orchestrator.workspace.git import git, git_dir
from orchestrator.workspace.setup import recorded_patterns

__all__ = [
    "DEFAULT_COMMIT_EXCLUDE",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_FILES",
    "CommitPlan",
    "CommitPolicy",
    "commit_work",
    "effective_excludes",
    "new_files",
    "plan_commit",
    "remove_new_files",
    "repository_policy",
]

DEFAULT_MAX_BYTES: Final = 20_000_000
DEFAULT_MAX_FILES: Final = 2_000
# A directory holding this file is a Python virtualenv (PEP 405).
VENV_MARKER: Final = "pyvenv.cfg"
BIGGEST_SHOWN: Final = 5
_LITERAL: Final = {"GIT_LITERAL_PATHSPECS": "1"}


def effective_excludes(configured: Sequence[str]) -> tuple[str, ...]:
    """The built-in patterns plus a repository's ``commit_exclude``.

    An entry ``!<pattern>`` drops that exact pattern from the built-in list (say
    ``!build/`` in a repository whose sources live in ``build/``).
    """
    dropped = {entry[1:] for entry in configured if entry.startswith("!")}
    added = tuple(entry for entry in configured if not entry.startswith("!"))
    return (*(p for p in DEFAULT_COMMIT_EXCLUDE if p not in dropped), *added)


@dataclass(frozen=True)
class CommitPolicy:
    """Which paths a commit may take, and how much."""

    exclude: tuple[str, ...] = DEFAULT_COMMIT_EXCLUDE
    # Directories (relative to the worktree, "/"-separated) the commit is limited to;
    # empty = the whole worktree.
    only: tuple[str, ...] = ()
    max_bytes: int = DEFAULT_MAX_BYTES
    max_files: int = DEFAULT_MAX_FILES


def repository_policy(settings: Settings, repository: Path, worktree: Path) -> CommitPolicy:
    """What a commit in ``worktree`` (of ``repository``) may take, whatever the job: not
    the built-in and the repository's excludes, nor what its setup made; the limits."""
    config = settings.repo_config(repository)
    return CommitPolicy(
        exclude=(*effective_excludes(config.commit_exclude), *recorded_patterns(worktree)),
        max_bytes=settings.commit_max_bytes,
        max_files=settings.commit_max_files,
    )


@dataclass(frozen=True)
class CommitPlan:
    """The paths a commit would stage, their sizes, and why it must not happen (if so)."""

    paths: tuple[str, ...] = ()
    sizes: tuple[tuple[str, int], ...] = field(default=(), repr=False)
    problem: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.sizes)


@contextmanager
def _scratch_index(worktree: Path) -> Iterator[dict[str, str]]:
    """A private copy of the worktree's index, reset to HEAD (stat data kept, so
    unchanged files are not hashed again)."""
    real = git_dir(worktree) / "index"  # a linked worktree's index is its own
    scratch_dir = Path(tempfile.mkdtemp(prefix="orch-index-"))
    try:
        env = {"GIT_INDEX_FILE": str(scratch_dir / "index")}
        if real.is_file():
            shutil.copyfile(real, scratch_dir / "index")
            git(worktree, "reset", "--quiet", "HEAD", env=env)
        else:
            git(worktree, "read-tree", "HEAD", env=env)
        git(worktree, "update-index", "-q", "--refresh", env=env, check=False)
        yield env
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)


def _split(output: str) -> list[str]:
    return [path for path in output.split("\0") if path]


def _under(path: str, directory: str) -> bool:
    directory = directory.strip("/")
    return not directory or path == directory or path.startswith(f"{directory}/")


def _drop_virtualenvs(paths: list[str]) -> list[str]:
    """Leave out every directory holding a ``pyvenv.cfg`` (the top level excepted)."""
    venvs = {
        str(PurePosixPath(path).parent)
        for path in paths
        if PurePosixPath(path).name == VENV_MARKER and "/" in path
    }
    if not venvs:
        return paths
    return [path for path in paths if not any(_under(path, venv) for venv in venvs)]


def _untracked(worktree: Path, policy: CommitPolicy, env: dict[str, str]) -> list[str]:
    """The new files a commit under ``policy`` would take (virtualenvs left out)."""
    scope = [f"{directory.strip('/')}/" for directory in policy.only]
    excludes = [arg for pattern in policy.exclude for arg in ("--exclude", pattern)]
    untracked = _split(
        git(
            worktree,
            "ls-files",
            "-z",
            "--others",
            "--exclude-standard",
            *excludes,
            "--",
            *scope,
            env={**env, **_LITERAL},
        ).stdout
    )
    return _drop_virtualenvs(untracked)


def new_files(worktree: Path, policy: CommitPolicy) -> list[str]:
    """The files git does not track in ``worktree`` that a commit under ``policy`` would
    take: not ignored ones, a virtualenv, or what ``policy`` excludes."""
    return _untracked(worktree, policy, {})


def remove_new_files(worktree: Path, policy: CommitPolicy) -> list[str]:
    """Delete :func:`new_files` (and the directories they leave empty); what went.
    Raises OSError when one cannot be deleted."""
    paths = new_files(worktree, policy)
    for path in paths:
        (worktree / path).unlink(missing_ok=True)
        parent = PurePosixPath(path).parent
        while parent.name:  # up to the worktree, while each one is left empty
            try:
                (worktree / parent).rmdir()
            except OSError:
                break
            parent = parent.parent
    return paths


def _candidates(worktree: Path, policy: CommitPolicy, env: dict[str, str]) -> list[str]:
    scope = [f"{directory.strip('/')}/" for directory in policy.only]
    untracked = _untracked(worktree, policy, env)
    tracked = _split(
        git(
            worktree, "diff-files", "-z", "--name-only", "--", *scope, env={**env, **_LITERAL}
        ).stdout
    )
    return sorted(set(untracked) | set(tracked))


def _size(worktree: Path, path: str) -> int:
    try:
        return (worktree / path).lstat().st_size
    except OSError:
        return 0  # deleted: staging the deletion costs nothing


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def _top_directories(paths: Sequence[str]) -> str:
    counts: Counter[str] = Counter()
    for path in paths:
        parts = PurePosixPath(path).parts[:-1]
        counts["/".join(parts[:2]) + "/" if parts else "(top level)"] += 1
    return ", ".join(f"{name} ({count:,} files)" for name, count in counts.most_common(3))


def _problem(what: str, policy: CommitPolicy, sizes: list[tuple[str, int]]) -> str | None:
    total = sum(size for _, size in sizes)
    fix = "delete them, or add them to .gitignore or the repository's commit_exclude"
    if len(sizes) > policy.max_files:
        where = _top_directories([path for path, _ in sizes])
        return (
            f"{what} would commit {len(sizes):,} files, more than commit_max_files = "
            f"{policy.max_files:,}; most are under {where}: {fix}"
        )
    if total > policy.max_bytes:
        biggest = sorted(sizes, key=lambda item: (-item[1], item[0]))[:BIGGEST_SHOWN]
        shown = ", ".join(f"{path} ({_megabytes(size)})" for path, size in biggest)
        return (
            f"{what} would commit {_megabytes(total)}, more than commit_max_bytes = "
            f"{_megabytes(policy.max_bytes)}; the biggest: {shown}: {fix}"
        )
    return None


def _plan(worktree: Path, policy: CommitPolicy, env: dict[str, str], what: str) -> CommitPlan:
    paths = _candidates(worktree, policy, env)
    sizes = [(path, _size(worktree, path)) for path in paths]
    return CommitPlan(tuple(paths), tuple(sizes), _problem(what, policy, sizes))


def untouched(worktree: Path) -> bool:
    """Whether ``worktree`` is exactly its HEAD: nothing staged, changed, deleted or
    untracked (ignored files aside). One git process, which takes no optional lock."""
    result = git(
        worktree,
        "status",
        "--porcelain",
        "-z",
        "--untracked-files=normal",
        env={"GIT_OPTIONAL_LOCKS": "0"},
        check=False,
    )
    return result.returncode == 0 and not result.stdout


def plan_commit(
    worktree: Path, policy: CommitPolicy, what: str = "the job", *, quick: bool = True
) -> CommitPlan:
    """What :func:`commit_work` would commit; reads only (the real index is untouched).

    ``quick``: a worktree that is exactly its HEAD (:func:`untouched`, one git
    process) has nothing to commit, so the four processes of a plan are not spent.
    Anything else, ignored junk included, gets the whole plan."""
    if quick and untouched(worktree):
        return CommitPlan()
    with _scratch_index(worktree) as env:
        return _plan(worktree, policy, env, what)


def commit_work(
    worktree: Path, policy: CommitPolicy, message: str, what: str = "the job"
) -> tuple[str | None, CommitPlan]:
    """Commit the planned paths of ``worktree``; (the new commit or None, the plan).

    Nothing is committed when the plan is empty or has a problem (over a limit).
    """
    if untouched(worktree):
        return None, CommitPlan()
    with _scratch_index(worktree) as env:
        plan = _plan(worktree, policy, env, what)
        if plan.problem is not None or not plan.paths:
            return None, plan
        git(
            worktree,
            "add",
            "--all",
            "--pathspec-from-file=-",
            "--pathspec-file-nul",
            env={**env, **_LITERAL},
            stdin="\0".join(plan.paths) + "\0",
        )
        if git(worktree, "diff", "--cached", "--quiet", env=env, check=False).returncode == 0:
            return None, plan
        git(worktree, "commit", "--quiet", "--no-verify", "-m", message, env=env)
    # The real index follows HEAD; anything an agent staged outside the plan is unstaged.
    git(worktree, "reset", "--quiet")
    return git(worktree, "rev-parse", "HEAD").stdout.strip(), plan
