"""Git, driven as a subprocess: the repository, the task worktrees, merges.

Every task works in its own worktree on branch ``orch/<work-item>``, created from the
repository's default branch. A failed git command becomes a :class:`RepositoryError`
carrying git's own first line of complaint.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from orchestrator.errors import RepositoryError

__all__ = [
    "GIT_ENV",
    "LANDED_ON_TRAILER",
    "MERGED_HEAD_TRAILER",
    "MERGE_METHODS",
    "MergeResult",
    "RemoteMovedError",
    "Repo",
    "git",
    "git_dir",
    "head_commit",
    "remove_tree",
]

log = logging.getLogger("orchestrator.workspace.git")

GIT_TIMEOUT_S: Final = 120
# Deterministic identity and no prompts: the orchestrator commits on the agents' behalf.
GIT_ENV: Final = {
    "GIT_AUTHOR_NAME": "orchestrator",
    "GIT_AUTHOR_EMAIL": "orchestrator@localhost",
    "GIT_COMMITTER_NAME": "orchestrator",
    "GIT_COMMITTER_EMAIL": "orchestrator@localhost",
    "GIT_TERMINAL_PROMPT": "0",
}
# A squash or rebase merge leaves the branch head outside the target's history; the
# commit that lands it carries this trailer, so "is merged" stays answerable.
MERGED_HEAD_TRAILER: Final = "Orch-Merged-Head"
# On the same commit: the default branch's head the landing started from, so a rollback
# knows which commits the landing made (a rebase makes one per branch commit).
LANDED_ON_TRAILER: Final = "Orch-Landed-On"
MERGE_METHODS: Final = ("merge", "squash", "rebase")
# Where a fetch keeps a remote's branch tips (``refs/orch/remote/<branch>``): orch's
# own namespace, whatever the remote is called or if it is a bare URL.
TRACKING_PREFIX: Final = "refs/orch/remote/"
# A merge whose push lost the race to another host's is made again on the new tip.
PUBLISH_ATTEMPTS: Final = 5


class RemoteMovedError(RepositoryError):
    """A push's compare-and-swap failed: the remote's branch was not where we saw it."""


def git(
    cwd: Path,
    *args: str,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``git args`` in ``cwd``; raise :class:`RepositoryError` on failure if ``check``.

    ``env`` adds variables (e.g. ``GIT_INDEX_FILE``); ``stdin`` is written to git's input.
    """
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            env={**os.environ, **GIT_ENV, **(env or {})},
            input=stdin,
            check=False,
        )
    except FileNotFoundError:
        if not Path(cwd).is_dir():  # the same error as a missing git binary
            raise RepositoryError(
                f"{cwd}: no such directory; is the repository or worktree still there?"
            ) from None
        raise RepositoryError("git is not installed or not on PATH; install git") from None
    except subprocess.TimeoutExpired:
        raise RepositoryError(f"git {args[0]} timed out after {GIT_TIMEOUT_S}s in {cwd}") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        first = detail[0] if detail else f"exit code {result.returncode}"
        raise RepositoryError(f"git {' '.join(args[:2])} failed in {cwd}: {first}")
    return result


def git_dir(worktree: Path) -> Path:
    """The git directory of the checkout whose top level is ``worktree``.

    Read from its ``.git`` as git itself does (a directory, or a file ``gitdir: <path>``
    in a linked worktree), so the engine spends no git process on it per job; git is
    asked only when that entry says nothing usable (a subdirectory, an odd layout).
    """
    return Path(_git_dir(os.fspath(worktree)))


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read().strip()


def _git_dir(worktree: str, *, resolve: bool = True) -> str:
    # os.path on strings, not pathlib: a job's start asks this once or twice, and
    # pathlib's objects cost about as much as the reads themselves. ``resolve=False``:
    # a path to read files through, symbolic links left in it.
    dot_git = os.path.join(worktree, ".git")
    try:
        if os.path.isdir(dot_git):
            return os.path.realpath(dot_git) if resolve else dot_git
        pointer = _read(dot_git)
    except (OSError, UnicodeDecodeError):
        pointer = ""
    if pointer.startswith("gitdir:"):
        target = os.path.join(worktree, pointer.removeprefix("gitdir:").strip())
        if os.path.isfile(os.path.join(target, "HEAD")):
            return os.path.realpath(target) if resolve else target
    return git(Path(worktree), "rev-parse", "--absolute-git-dir").stdout.strip()


_SHA: Final = re.compile(r"[0-9a-f]{40}")


def head_commit(worktree: Path) -> str:
    """The commit ``worktree``'s HEAD points at, read from the files as git reads them
    (HEAD, then the loose ref or ``packed-refs`` in the common directory), so a job's
    start spends no git process on it; git is asked whenever they say nothing usable (a
    symbolic ref elsewhere, another ref format)."""
    try:
        private = _git_dir(os.fspath(worktree), resolve=False)
        head = _read(os.path.join(private, "HEAD"))
        sha = head
        if head.startswith("ref: refs/heads/"):
            ref = head.removeprefix("ref: ")
            pointer = os.path.join(private, "commondir")
            common = private
            if os.path.isfile(pointer):
                common = os.path.join(private, _read(pointer))
            loose = os.path.join(common, ref)
            if os.path.isfile(loose):
                sha = _read(loose)
            else:
                sha = _packed(Path(common) / "packed-refs", ref)
        if _SHA.fullmatch(sha):
            return sha
    except (OSError, UnicodeDecodeError):
        pass
    return git(worktree, "rev-parse", "HEAD").stdout.strip()


def _packed(packed_refs: Path, ref: str) -> str:
    """``ref``'s commit in a ``packed-refs`` file; "" when it is not there."""
    if not packed_refs.is_file():
        return ""
    suffix = f" {ref}"
    with packed_refs.open(encoding="utf-8") as lines:
        for line in lines:
            if line.rstrip("\n").endswith(suffix) and not line.startswith(("#", "^")):
                return line.split(" ", 1)[0]
    return ""


@dataclass(frozen=True)
class MergeResult:
    merge_sha: str
    already_merged: bool


@dataclass(frozen=True)
class Repo:
    """A repository on disk: the local forge.

    With ``remote`` (a git remote of this clone, or a URL) the repository is shared by
    hosts that share no disk (decision 0031): the remote holds the truth of the default
    branch and of every task branch, :meth:`fetch` reads it, :meth:`push` moves it by a
    compare-and-swap, and the local branches follow it.
    """

    path: Path
    remote: str = ""

    @classmethod
    def at(cls, path: Path) -> Repo:
        """Open the repository at ``path``, or raise one clear :class:`RepositoryError`."""
        if not path.is_dir():
            raise RepositoryError(f"{path}: no such directory; give --repo the repository path")
        result = git(path, "rev-parse", "--show-toplevel", check=False)
        if result.returncode != 0:
            raise RepositoryError(
                f"{path} is not a git repository; run `git init` there or pass another --repo"
            )
        top = Path(result.stdout.strip()).resolve()
        if git(top, "rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode != 0:
            raise RepositoryError(f"{top} has no commits yet; commit something first")
        return cls(top)

    def default_branch(self, configured: str | None = None) -> str:
        """The configured default branch, else the branch HEAD points at."""
        if configured:
            if not self.has_branch(configured):
                raise RepositoryError(f"{self.path}: default branch '{configured}' does not exist")
            return configured
        result = git(self.path, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
        if result.returncode != 0:
            raise RepositoryError(
                f"{self.path}: HEAD is detached; set default_branch for this repository"
            )
        return result.stdout.strip()

    def has_branch(self, branch: str) -> bool:
        ref = f"refs/heads/{branch}"
        return git(self.path, "show-ref", "--verify", "--quiet", ref, check=False).returncode == 0

    def rev(self, ref: str) -> str:
        return git(self.path, "rev-parse", "--verify", f"{ref}^{{commit}}").stdout.strip()

    # --- the remote (hosts that share no disk) --------------------------------------------
    def fetch(self, *branches: str) -> dict[str, str | None]:
        """Fetch ``branches`` from the remote into orch's tracking refs; each one's tip
        there, None where the remote lacks it. Without a remote: every tip None."""
        if not self.remote:
            return dict.fromkeys(branches)
        with self._remote_lock():
            specs = [f"+refs/heads/{b}:{TRACKING_PREFIX}{b}" for b in branches]
            result = git(self.path, *_FETCH, self.remote, *specs, check=False, env=_C_LOCALE)
            if result.returncode != 0:
                if "couldn't find remote ref" not in result.stderr:
                    raise RepositoryError(_remote_failure("fetch from", self.remote, result))
                for branch in branches:  # one is missing there: learn which, one by one
                    spec = f"+refs/heads/{branch}:{TRACKING_PREFIX}{branch}"
                    one = git(self.path, *_FETCH, self.remote, spec, check=False, env=_C_LOCALE)
                    if one.returncode == 0:
                        continue
                    if "couldn't find remote ref" not in one.stderr:
                        raise RepositoryError(_remote_failure("fetch from", self.remote, one))
                    git(self.path, "update-ref", "-d", f"{TRACKING_PREFIX}{branch}", check=False)
            return {branch: self.tracked(branch) for branch in branches}

    def tracked(self, branch: str) -> str | None:
        """The remote's tip of ``branch`` as last fetched or pushed; None if unknown."""
        ref = f"{TRACKING_PREFIX}{branch}"
        found = git(self.path, "rev-parse", "--verify", "--quiet", ref, check=False)
        return found.stdout.strip() or None

    def tip(self, branch: str) -> str:
        """Where ``branch`` is: the remote's tip as last fetched, else the local one."""
        return (self.tracked(branch) if self.remote else None) or self.rev(branch)

    def push(self, branch: str, new: str | None, expected: str | None) -> None:
        """Move the remote's ``branch`` from ``expected`` (None: it must not exist) to
        ``new`` (None: delete it): a compare-and-swap (``--force-with-lease``). Raises
        :class:`RemoteMovedError` when the remote's branch was elsewhere."""
        lease = f"--force-with-lease=refs/heads/{branch}:{expected or ''}"
        with self._remote_lock():
            result = git(
                self.path,
                "push", "--quiet", "--no-verify", "--porcelain", lease,
                self.remote, f"{new or ''}:refs/heads/{branch}",
                check=False, env=_C_LOCALE,
            )  # fmt: skip
            if result.returncode != 0:
                said = result.stdout + result.stderr
                # Only a lost compare-and-swap is "moved"; a hook's or a protected
                # branch's refusal is the remote's own complaint, said as it is.
                if any(mark in said for mark in _MOVED_MARKS):
                    raise RemoteMovedError(
                        f"{self.remote}'s {branch} moved (expected "
                        f"{(expected or 'none')[:10]}): another host changed it"
                    )
                raise RepositoryError(_remote_failure("push to", self.remote, result))
            if new is None:
                git(self.path, "update-ref", "-d", f"{TRACKING_PREFIX}{branch}")
            else:
                git(self.path, "update-ref", f"{TRACKING_PREFIX}{branch}", new)

    def follow(self, branch: str, new: str) -> None:
        """Bring the local ``branch`` to the remote's tip ``new`` where that loses
        nothing: create it, or fast-forward it (a checkout that has it moves too). A
        local branch that went its own way is left as it is, and so is one that cannot
        move now (a checkout with changes in the way, another thread moving it): the
        remote holds the truth, this copy is a convenience, so nothing fails here."""
        local = git(self.path, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}",
                    check=False).stdout.strip()  # fmt: skip
        if local == new:
            return
        try:
            if not local:
                git(self.path, "update-ref", f"refs/heads/{branch}", new, "")
            elif self.is_ancestor(local, new):
                self.move_branch(branch, new, local)
        except RepositoryError as exc:
            log.warning("%s: local %s not moved to %s's %s: %s", self.path, branch,
                        self.remote, new[:10], exc)  # fmt: skip

    def current(self, branch: str) -> str:
        """``branch``'s tip now: fetched first when there is a remote (the local branch
        follows), else the local one."""
        if self.remote and (fetched := self.fetch(branch)[branch]) is not None:
            self.follow(branch, fetched)
            return fetched
        return self.rev(branch)

    def publish(self, branch: str, new: str, expected: str) -> None:
        """Move ``branch`` from ``expected`` to its descendant ``new`` where it lives:
        on the remote (then the local branch follows), else here (:meth:`move_branch`,
        under :meth:`locked`)."""
        if not self.remote:
            self.move_branch(branch, new, expected)
            return
        self.push(branch, new, expected)
        self.follow(branch, new)

    @contextmanager
    def _remote_lock(self) -> Iterator[None]:
        # Fetches and pushes of one clone never interleave (ref locks; every process
        # of this host).
        with _reentrant_flock(self.common_dir() / "orch-remote.lock"):
            yield

    def add_worktree(self, worktree: Path, branch: str, base: str) -> None:
        """Create ``worktree`` on a new ``branch`` from ``base``; reuse it if it exists."""
        if worktree.is_dir() and (worktree / ".git").exists():
            return
        worktree.parent.mkdir(parents=True, exist_ok=True)
        with self.worktree_lock():
            if self.has_branch(branch):
                git(self.path, "worktree", "add", "--quiet", str(worktree), branch)
            else:
                git(self.path, "worktree", "add", "--quiet", "-b", branch, str(worktree), base)

    def remove_worktree(self, worktree: Path) -> None:
        with self.worktree_lock():
            if worktree.exists():
                git(self.path, "worktree", "remove", "--force", str(worktree), check=False)
            git(self.path, "worktree", "prune", check=False)

    def release_worktree(self, worktree: Path, *, owned_root: Path | None = None) -> None:
        """Remove a task's worktree and its administrative entry; idempotent.

        Uncommitted changes in it are discarded (the branch keeps every commit). What
        ``git worktree remove`` refuses (a directory a crash left half-deleted, no longer
        a worktree) is deleted only when it is ours: under ``owned_root`` (the data
        directory's worktrees) or still pointing at this repository's worktree entries.
        Anything else raises :class:`RepositoryError` for a person.
        """
        with self.worktree_lock():
            if worktree.exists() or worktree.is_symlink():
                # Twice --force: also a worktree someone locked (`git worktree lock`).
                force = ("--force", "--force")
                removed = git(self.path, "worktree", "remove", *force, str(worktree), check=False)
                if removed.returncode == 0:
                    return  # its entry went with it: nothing is left to prune
                if worktree.exists() or worktree.is_symlink():
                    if not self._owns(worktree, owned_root):
                        detail = (removed.stderr or removed.stdout).strip().splitlines()
                        raise RepositoryError(
                            f"cannot remove worktree {worktree}: "
                            f"{detail[0] if detail else 'git refused'}; remove it by hand"
                        )
                    remove_tree(worktree)
            git(self.path, "worktree", "prune", check=False)

    def _owns(self, worktree: Path, owned_root: Path | None) -> bool:
        if worktree.is_symlink():
            return False
        if owned_root is not None and worktree.resolve().is_relative_to(owned_root.resolve()):
            return True
        dot_git = worktree / ".git"
        if not dot_git.is_file():
            return False
        pointer = dot_git.read_text(encoding="utf-8", errors="replace").strip()
        admin = Path(pointer.removeprefix("gitdir:").strip())
        return admin.resolve().is_relative_to((self.common_dir() / "worktrees").resolve())

    def restore_worktree(self, worktree: Path, branch: str, *, owned_root: Path | None) -> bool:
        """Make ``worktree`` again from ``branch`` (a retried task whose worktree was
        removed); False when it is there already. Idempotent."""
        with self.worktree_lock():
            if worktree.is_dir() and (worktree / ".git").exists():
                return False
            if not self.has_branch(branch):
                raise RepositoryError(
                    f"cannot recreate worktree {worktree}: branch {branch} no longer exists in "
                    f"{self.path}; restore the branch or cancel the task"
                )
            if worktree.exists() and not (worktree.is_dir() and not any(worktree.iterdir())):
                # What a crash left half-removed: only ours is cleared.
                self.release_worktree(worktree, owned_root=owned_root)
            # A stale entry of the removed worktree would keep the branch "checked out".
            git(self.path, "worktree", "prune", check=False)
            worktree.parent.mkdir(parents=True, exist_ok=True)
            git(self.path, "worktree", "add", "--quiet", str(worktree), branch)
            return True

    def prune_worktrees(self, *, dry_run: bool = False) -> list[str]:
        """Drop the entries of worktrees whose directory is gone; what git said for each."""
        with self.worktree_lock():
            args = ["worktree", "prune", "--verbose"] + (["--dry-run"] if dry_run else [])
            result = git(self.path, *args, check=False)
            return [line.strip() for line in (result.stdout + result.stderr).splitlines() if line]

    def delete_branch(self, branch: str) -> bool:
        """Delete ``branch`` (checked by the caller: merged); False if it was gone."""
        return git(self.path, "branch", "-D", branch, check=False).returncode == 0

    def common_dir(self) -> Path:
        """The repository's git directory shared by all its worktrees."""
        return _common_dir(self.path)

    @contextmanager
    def worktree_lock(self) -> Iterator[None]:
        """Hold the repository's worktree lock: adding, removing and pruning worktrees
        never interleave (a file lock: all processes on this host; re-entrant within a
        thread). ``git worktree prune`` running beside ``git worktree add`` deletes the
        entry the add is still writing. Separate from the merge lock, which a deploy may
        hold for minutes."""
        with _reentrant_flock(self.common_dir() / "orch-worktrees.lock"):
            yield

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        result = git(self.path, "merge-base", "--is-ancestor", ancestor, descendant, check=False)
        return result.returncode == 0

    def changed_paths(self, worktree: Path, since: str) -> tuple[str, ...]:
        """Paths changed by commits in ``worktree`` after ``since``."""
        result = git(worktree, "diff", "--name-only", f"{since}..HEAD")
        return tuple(line for line in result.stdout.splitlines() if line)

    def checked_out_in(self, branch: str) -> Path | None:
        """The worktree that has ``branch`` checked out, if any."""
        listing = git(self.path, "worktree", "list", "--porcelain").stdout
        current: Path | None = None
        for line in listing.splitlines():
            if line.startswith("worktree "):
                current = Path(line.removeprefix("worktree "))
            elif line == f"branch refs/heads/{branch}":
                return current
        return None

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository's merge lock (a file lock: all processes on this host).

        Tasks are leased one by one, but they all merge into the same default branch:
        two merges at once would race on the branch ref and on the checked-out tree.
        """
        with _flock(self.common_dir() / "orch.lock"):
            yield

    def is_merged(self, branch: str, into: str) -> bool:
        """Whether ``branch``'s head has landed on ``into``: by ancestry (a merge commit
        or a fast-forward), or by a squash / rebase commit carrying its trailer. With a
        remote, both are read there (fetched first)."""
        if not self.remote:
            return self.landed(self.rev(branch), into)
        # ``into`` may be a commit (the one deployed): only branches are fetched.
        into_branch = self.has_branch(into)
        self.fetch(branch, *([into] if into_branch else []))
        return self.landed(self.tip(branch), self.tip(into) if into_branch else into)

    def landed(self, head: str, into: str) -> bool:
        """Whether commit ``head`` has landed on ``into`` (a commit or a ref): an ancestor
        of it, or named by a squash / rebase commit's trailer there."""
        if self.is_ancestor(head, into):
            return True
        found = git(
            self.path,
            "log",
            "-1",
            "--format=%H",
            "--fixed-strings",
            f"--grep={MERGED_HEAD_TRAILER}: {head}",
            into,
            check=False,
        )
        return found.returncode == 0 and bool(found.stdout.strip())

    def merge(
        self, branch: str, into: str, message: str, scratch: Path, method: str = "merge"
    ) -> MergeResult:
        """Merge ``branch`` into ``into`` (see :meth:`_merge`), under the repository lock."""
        if method not in MERGE_METHODS:
            raise RepositoryError(f"unknown merge method {method!r}; use merge, squash or rebase")
        with self.locked():
            return self._merge(branch, into, message, scratch, method)

    def _merge(
        self, branch: str, into: str, message: str, scratch: Path, method: str
    ) -> MergeResult:
        """Land ``branch`` on ``into``; idempotent.

        ``merge`` makes a merge commit; ``squash`` one commit with the branch's changes;
        ``rebase`` replays the branch's commits on ``into``. The world is checked first:
        a branch already merged is not merged again. The commits are made in a scratch
        worktree, then ``into`` moves to them by a compare-and-swap on the ref (or a
        fast-forward of the worktree that has ``into`` checked out, so a user's checkout
        stays consistent).
        """
        what = f"{branch} into {into}"
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            if self.remote:
                self.fetch(branch, into)
            head, target_before = self.tip(branch), self.tip(into)
            if self.landed(head, target_before):
                if self.remote:
                    self.follow(into, target_before)
                return MergeResult(target_before, already_merged=True)
            merge_sha = self.land(scratch, method, head, target_before, message, what)
            try:
                self.publish(into, merge_sha, target_before)
            except RemoteMovedError:
                if attempt == PUBLISH_ATTEMPTS:
                    raise
                continue  # another host landed something first: merge onto its tip
            return MergeResult(merge_sha, already_merged=False)
        raise AssertionError("unreachable")  # pragma: no cover

    def land(
        self, scratch: Path, method: str, head: str, target: str, message: str, what: str
    ) -> str:
        """The commits that land ``head`` on ``target`` by ``method``, made in
        ``scratch``; their tip (nothing moves yet)."""
        start = head if method == "rebase" else target
        return self.commit_in_scratch(
            scratch, start, lambda tree: _land(tree, method, head, target, message, what)
        )

    def commit_in_scratch(self, scratch: Path, start: str, make: Callable[[Path], str]) -> str:
        """Run ``make`` in a throwaway detached worktree at ``start``; the commit it made.

        Commits meant for a branch others may have checked out are made here, never in
        the user's checkout. ``make`` returns the tip it committed.
        """
        with self.worktree_lock():
            if scratch.exists():
                self.remove_worktree(scratch)
            git(self.path, "worktree", "add", "--quiet", "--detach", str(scratch), start)
        try:
            return make(scratch)
        finally:
            self.remove_worktree(scratch)

    def move_branch(self, branch: str, new: str, expected: str) -> None:
        """Move ``branch`` from ``expected`` to its descendant ``new`` (a compare-and-swap
        on the ref, or a fast-forward of the worktree that has it checked out, so a
        user's checkout stays consistent). Call under :meth:`locked`.

        Local changes in that checkout are carried along; only changes to files the move
        touches stop it (git refuses before it writes anything)."""
        holder = self.checked_out_in(branch)
        if holder is None:
            git(self.path, "update-ref", f"refs/heads/{branch}", new, expected)
            return
        if git(holder, "merge", "--ff-only", "--quiet", new, check=False).returncode != 0:
            raise RepositoryError(
                f"{holder} has {branch} checked out with local changes to files this "
                "change touches; commit or stash them, then retry the task"
            )


_FETCH: Final = ("fetch", "--quiet", "--no-tags", "--no-write-fetch-head")
# git's messages, not translations of them: what a fetch or push said is parsed.
_C_LOCALE: Final = {"LC_ALL": "C"}
# How a push says its compare-and-swap lost: the lease's expected value was stale, or
# the ref moved between the remote's check and its update.
_MOVED_MARKS: Final = (
    "(stale info)",
    "(fetch first)",
    "(non-fast-forward)",
    "failed to update ref",
    "failed to lock",
)


def _remote_failure(verb: str, remote: str, result: subprocess.CompletedProcess[str]) -> str:
    detail = (result.stderr or result.stdout).strip().splitlines()
    first = detail[0] if detail else f"exit code {result.returncode}"
    return f"cannot {verb} remote {remote}: {first}; check the repository's `remote` setting"


@functools.lru_cache(maxsize=256)
def _common_dir(path: Path) -> Path:
    # Asked before every job start (the worktree lock): one git process per repository.
    common = Path(git(path, "rev-parse", "--git-common-dir").stdout.strip())
    return common if common.is_absolute() else path / common


_held = threading.local()


@contextmanager
def _reentrant_flock(lock_path: Path) -> Iterator[None]:
    """:func:`_flock`, taken once per thread however deeply it is nested (a second
    ``flock`` on a new descriptor of the same file would wait for the first)."""
    depth: dict[Path, int] = _held.__dict__.setdefault("depth", {})
    if depth.get(lock_path):
        depth[lock_path] += 1
        try:
            yield
        finally:
            depth[lock_path] -= 1
        return
    with _flock(lock_path):
        depth[lock_path] = 1
        try:
            yield
        finally:
            depth[lock_path] = 0


@contextmanager
def _flock(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_tree(path: Path) -> None:
    """Delete a directory tree, also read-only files in it (git objects, venvs)."""

    def retry_writable(function: Callable[..., object], name: str, _exc: BaseException) -> None:
        os.chmod(name, stat.S_IRWXU)
        function(name)

    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry_writable)
    else:
        shutil.rmtree(path, onerror=lambda f, n, e: retry_writable(f, n, e[1]))


def _land(scratch: Path, method: str, head: str, target: str, message: str, what: str) -> str:
    """Make the commits that land ``head`` on ``target`` in ``scratch``; their tip."""
    commit = (
        "commit",
        "--quiet",
        "--no-verify",
        "--trailer",
        f"{MERGED_HEAD_TRAILER}: {head}",
        "--trailer",
        f"{LANDED_ON_TRAILER}: {target}",
    )
    if method == "merge":
        result = git(scratch, "merge", "--no-ff", "--no-edit", "-m", message, head, check=False)
        if result.returncode != 0:
            git(scratch, "merge", "--abort", check=False)
            raise RepositoryError(f"cannot merge {what}: conflicts; rebase the task branch")
    elif method == "squash":
        result = git(scratch, "merge", "--squash", head, check=False)
        if result.returncode != 0:
            git(scratch, "reset", "--hard", "--quiet", target, check=False)
            raise RepositoryError(f"cannot squash {what}: conflicts; rebase the task branch")
        git(scratch, *commit, "--allow-empty", "-m", message)
    else:
        result = git(scratch, "rebase", "--quiet", target, check=False)
        if result.returncode != 0:
            git(scratch, "rebase", "--abort", check=False)
            raise RepositoryError(f"cannot rebase {what}: conflicts; rebase the task branch")
        if git(scratch, "rev-parse", "HEAD").stdout.strip() == target:
            # Every commit was already upstream: record the landing all the same.
            git(scratch, *commit, "--allow-empty", "-m", message)
        else:
            git(scratch, *commit, "--amend", "--no-edit")
    return git(scratch, "rev-parse", "HEAD").stdout.strip()
