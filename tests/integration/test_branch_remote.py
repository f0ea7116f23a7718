"""Task branches through a remote (decision 0031): two clones of one bare repository play
two hosts that share no disk. Real git throughout; the remote's hooks make the races."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import GIT_IDENTITY, make_repo

from orchestrator.errors import RepositoryError
from orchestrator.settings import DEFAULT_COMMIT_EXCLUDE
from orchestrator.workspace.commit_policy import CommitPolicy, new_files
from orchestrator.workspace.git import RemoteMovedError, Repo, git
from orchestrator.workspace.remote import (
    delete_merged_branch,
    push_task_branch,
    start_task_branch,
    sync_task_branch,
)

BRANCH = "orch/T-1"


def _run(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_IDENTITY}
    done = subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def _hosts(tmp_path: Path, count: int = 2) -> tuple[Path, list[Repo]]:
    """A bare remote and ``count`` clones of it, each a host's repository."""
    seed = make_repo(tmp_path / "seed")
    remote = tmp_path / "remote.git"
    _run(tmp_path, "git", "clone", "-q", "--bare", str(seed), str(remote))
    hosts = []
    for number in range(count):
        clone = tmp_path / f"host{number}"
        _run(tmp_path, "git", "clone", "-q", str(remote), str(clone))
        hosts.append(Repo(clone, "origin"))
    return remote, hosts


def _worktree(repo: Repo) -> Path:
    return repo.path.parent / f"{repo.path.name}-wt"


def _commit(worktree: Path, name: str) -> str:
    (worktree / name).write_text(name, encoding="utf-8")
    _run(worktree, "git", "add", name)
    _run(worktree, "git", "commit", "-q", "-m", name)
    return _run(worktree, "git", "rev-parse", "HEAD")


def _remote_tip(remote: Path, branch: str) -> str | None:
    found = git(remote, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    return found.stdout.strip() or None


def _race_the_first_push(remote: Path, branch: str, sha: str) -> None:
    """The remote's pre-receive hook moves ``branch`` to ``sha`` the first time anyone
    pushes, just before that push's update (touching ``raced`` in the remote)."""
    hook = remote / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        "if [ ! -e raced ]; then touch raced; "
        # Outside the push's quarantine, as another receive-pack's update would be.
        f"env -u GIT_QUARANTINE_PATH git update-ref refs/heads/{branch} {sha}; fi\n",
        encoding="utf-8",
    )
    hook.chmod(0o755)


def _create(repo: Repo) -> Path:
    """What `orch task create` does on ``repo``'s host: worktree and branch, pushed."""
    base = repo.current("main")
    worktree = _worktree(repo)
    repo.add_worktree(worktree, BRANCH, base)
    start_task_branch(repo, BRANCH, base)
    return worktree


def _prepare(repo: Repo) -> Path:
    """What the engine does before a job on ``repo``'s host."""
    worktree = _worktree(repo)
    with repo.worktree_lock():
        sync_task_branch(repo, BRANCH, "main", worktree)
        repo.restore_worktree(worktree, BRANCH, owned_root=None)
    return worktree


def test_a_task_created_on_one_host_runs_its_next_job_on_another(tmp_path: Path) -> None:
    remote, (a, b) = _hosts(tmp_path)
    work_a = _create(a)
    assert _remote_tip(remote, BRANCH) == a.rev(BRANCH)
    first = _commit(work_a, "analysis.md")
    assert push_task_branch(a, BRANCH) == first
    assert _remote_tip(remote, BRANCH) == first

    # B never saw the task: its branch and worktree come from the remote.
    with b.worktree_lock():
        assert sync_task_branch(b, BRANCH, "main", _worktree(b)) == "fetched"
    work_b = _prepare(b)
    assert (work_b / "analysis.md").read_text() == "analysis.md"
    second = _commit(work_b, "design.md")
    assert push_task_branch(b, BRANCH) == second

    # Back on A, with its worktree still there and behind: fast-forwarded.
    with a.worktree_lock():
        assert sync_task_branch(a, BRANCH, "main", work_a) == "fast-forwarded"
    assert (work_a / "design.md").is_file()
    assert a.rev(BRANCH) == second


def test_a_commit_never_pushed_is_pushed_by_its_host_before_the_next_job(tmp_path: Path) -> None:
    remote, (a, _b) = _hosts(tmp_path)
    work = _create(a)
    unpushed = _commit(work, "code.py")  # the host crashed between commit and push
    with a.worktree_lock():
        assert sync_task_branch(a, BRANCH, "main", work) == "pushed"
    assert _remote_tip(remote, BRANCH) == unpushed


def test_a_host_that_went_its_own_way_takes_the_remotes_branch(tmp_path: Path) -> None:
    remote, (a, b) = _hosts(tmp_path)
    work_a = _create(a)
    work_b = _prepare(b)
    _commit(work_b, "lost.py")  # B's job ended, B died before its push
    recorded = _commit(work_a, "kept.py")  # the job ran again on A and was recorded
    push_task_branch(a, BRANCH)
    with b.worktree_lock():
        assert sync_task_branch(b, BRANCH, "main", work_b) == "reset to the remote's"
    assert b.rev(BRANCH) == recorded == _remote_tip(remote, BRANCH)
    assert not (work_b / "lost.py").exists()
    assert (work_b / "kept.py").is_file()


def test_a_jobs_uncommitted_leftovers_go_when_another_host_moved_the_branch_on(
    tmp_path: Path,
) -> None:
    """A job on B wrote files and B died before its commit; A ran the stage again and
    later ones. When B takes the task up again its copy follows the remote, and the dead
    job's new files must not ride along in B's next commit (seen: they stayed, and the
    next job's commit plan took them). A venv, a `.env` and ignored files stay."""
    _, (a, b) = _hosts(tmp_path)
    _create(a)
    work_b = _prepare(b)
    (work_b / "half-done.py").write_text("from the job that died\n")
    (work_b / "stale").mkdir()
    (work_b / "stale" / "notes.md").write_text("also\n")
    (work_b / ".venv" / "bin").mkdir(parents=True)
    (work_b / ".venv" / "bin" / "python").write_text("")
    (work_b / ".env").write_text("TOKEN=x\n")
    (b.path / ".git" / "info" / "exclude").write_text("*.log\n")  # ignored files
    (work_b / "run.log").write_text("ignored\n")
    (work_b / "data").mkdir()  # the repository's own commit_exclude
    (work_b / "data" / "big.csv").write_text("1,2\n")
    (work_b / "tools" / "venv").mkdir(parents=True)  # a virtualenv by its marker
    (work_b / "tools" / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    recorded = _commit(_prepare(a), "later.md")
    push_task_branch(a, BRANCH)
    policy = CommitPolicy(exclude=(*DEFAULT_COMMIT_EXCLUDE, "data/"))
    with b.worktree_lock():
        assert sync_task_branch(b, BRANCH, "main", work_b, lambda: policy) == "fast-forwarded"
    assert b.rev(BRANCH) == recorded
    assert (work_b / "later.md").is_file()
    assert not (work_b / "half-done.py").exists()
    assert not (work_b / "stale").exists()
    kept = [".venv/bin/python", ".env", "run.log", "data/big.csv", "tools/venv/pyvenv.cfg"]
    assert [path for path in kept if not (work_b / path).is_file()] == []
    assert new_files(work_b, policy) == []


def test_a_push_never_overwrites_a_branch_that_moved_on_the_remote(tmp_path: Path) -> None:
    remote, (a, b) = _hosts(tmp_path)
    work_a = _create(a)
    work_b = _prepare(b)
    ahead = _commit(work_b, "later.md")
    push_task_branch(b, BRANCH)
    # A's copy is behind: the reconciler repairing an old job there pushes nothing.
    assert push_task_branch(a, BRANCH) is None
    assert _remote_tip(remote, BRANCH) == ahead
    # A's copy went its own way: refused, the remote unchanged.
    _commit(work_a, "other.md")
    with pytest.raises(RepositoryError, match="separate ways"):
        push_task_branch(a, BRANCH)
    assert _remote_tip(remote, BRANCH) == ahead
    # Creating the same task branch again is refused by the remote.
    with pytest.raises(RemoteMovedError):
        start_task_branch(b, BRANCH, a.rev("main"))


def test_a_merge_lands_on_the_remote_once(tmp_path: Path) -> None:
    remote, (a, b) = _hosts(tmp_path)
    work = _create(a)
    head = _commit(work, "feature.py")
    push_task_branch(a, BRANCH)
    result = b.merge(BRANCH, "main", "Merge T-1", tmp_path / "scratch-b")
    assert not result.already_merged
    assert _remote_tip(remote, "main") == result.merge_sha
    assert b.rev("main") == result.merge_sha  # the local default branch followed
    # Another host asks again (a retried crossing): it is merged already, nothing moves.
    again = a.merge(BRANCH, "main", "Merge T-1", tmp_path / "scratch-a")
    assert again.already_merged
    assert again.merge_sha == result.merge_sha
    assert a.is_merged(BRANCH, "main")
    assert _run(remote, "git", "merge-base", "--is-ancestor", head, "main") == ""


def test_a_merged_branch_is_deleted_on_the_remote_unless_it_moved_since(tmp_path: Path) -> None:
    """``delete_branch_on_done`` with a remote: the done task's branch goes there too,
    as a compare-and-swap on the tip found merged (seen failing before: it stayed on the
    remote for ever, and only the local branch went)."""
    remote, (a, b) = _hosts(tmp_path)
    work = _create(a)
    _commit(work, "feature.py")
    push_task_branch(a, BRANCH)
    a.merge(BRANCH, "main", "Merge T-1", tmp_path / "scratch-a")
    # Another host pushed to the branch after the merge: its work is not deleted.
    later = _commit(_prepare(b), "later.md")
    push_task_branch(b, BRANCH)
    assert not delete_merged_branch(a, BRANCH, "main")
    assert _remote_tip(remote, BRANCH) == later
    # Merged as it is now: it goes, and a second deletion finds nothing to do, on the
    # host that deleted it and on one whose last fetch still showed it.
    b.merge(BRANCH, "main", "Merge T-1 again", tmp_path / "scratch-b")
    assert a.tracked(BRANCH) is not None
    assert delete_merged_branch(b, BRANCH, "main")
    assert _remote_tip(remote, BRANCH) is None
    assert b.tracked(BRANCH) is None
    assert not delete_merged_branch(b, BRANCH, "main")
    assert not delete_merged_branch(a, BRANCH, "main")
    # Without a remote nothing is asked of one.
    assert not delete_merged_branch(Repo(a.path, None), BRANCH, "main")


def test_a_branch_pushed_to_while_it_is_deleted_stays(tmp_path: Path) -> None:
    """The deletion races another host's push (the remote's pre-receive hook makes it,
    just before the deletion's update): the remote refuses to delete a branch that
    moved, the deletion says so without an error, and the new work stays."""
    remote, (a, _b) = _hosts(tmp_path)
    work = _create(a)
    _commit(work, "feature.py")
    push_task_branch(a, BRANCH)
    a.merge(BRANCH, "main", "Merge T-1", tmp_path / "scratch-a")
    other = tmp_path / "other"
    _run(tmp_path, "git", "clone", "-q", str(remote), str(other))
    _run(other, "git", "checkout", "-q", BRANCH)
    pushed = _commit(other, "racing.md")
    _run(other, "git", "push", "-q", "origin", "HEAD:refs/heads/staged")
    _race_the_first_push(remote, BRANCH, pushed)
    assert not delete_merged_branch(a, BRANCH, "main")
    assert (remote / "raced").exists()
    assert _remote_tip(remote, BRANCH) == pushed


def test_a_merge_that_loses_the_race_to_another_host_lands_on_its_tip(tmp_path: Path) -> None:
    remote, (a, b) = _hosts(tmp_path)
    work = _create(a)
    _commit(work, "feature.py")
    push_task_branch(a, BRANCH)
    # Another host's landing: a commit on main that B has not fetched. The remote's
    # pre-receive hook moves main to it the first time B pushes, just before B's update.
    other = tmp_path / "other"
    _run(tmp_path, "git", "clone", "-q", str(remote), str(other))
    (other / "hotfix.py").write_text("x", encoding="utf-8")
    _run(other, "git", "add", "hotfix.py")
    _run(other, "git", "commit", "-q", "-m", "hotfix")
    hotfix = _run(other, "git", "rev-parse", "HEAD")
    _run(other, "git", "push", "-q", "origin", "HEAD:refs/heads/staged")
    _race_the_first_push(remote, "main", hotfix)
    result = b.merge(BRANCH, "main", "Merge T-1", tmp_path / "scratch")
    assert (remote / "raced").exists()
    tip = _remote_tip(remote, "main")
    assert tip == result.merge_sha
    # Both landed: the hotfix was not overwritten, the task branch is merged.
    assert _run(remote, "git", "merge-base", "--is-ancestor", hotfix, "main") == ""
    assert b.is_merged(BRANCH, "main")


def test_an_unreachable_remote_is_one_clear_error(tmp_path: Path) -> None:
    _remote, (a, _b) = _hosts(tmp_path)
    work = _create(a)
    _commit(work, "x.py")
    broken = Repo(a.path, str(tmp_path / "missing.git"))
    with pytest.raises(RepositoryError, match=r"cannot push to remote .*missing\.git"):
        push_task_branch(broken, BRANCH)
    with pytest.raises(RepositoryError, match=r"cannot fetch from remote .*missing\.git"):
        broken.fetch("main")


# Each step: (host, action). After any sequence, syncing a host makes it the remote's,
# and the remote's branch only ever moves forward: no recorded (pushed) commit is lost.
_STEPS = st.lists(
    st.tuples(st.integers(0, 1), st.sampled_from(["commit", "push", "sync"])),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=_STEPS)
def test_sync_never_loses_a_pushed_commit(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[int, str]]
) -> None:
    tmp_path = tmp_path_factory.mktemp("hosts")
    remote, hosts = _hosts(tmp_path)
    _create(hosts[0])
    _prepare(hosts[1])
    pushed: list[str] = [hosts[0].rev(BRANCH)]
    for number, (host, action) in enumerate(steps):
        repo = hosts[host]
        if action == "commit":
            _commit(_worktree(repo), f"f{number}.txt")
        elif action == "push":
            local, there = repo.rev(BRANCH), _remote_tip(remote, BRANCH)
            assert there is not None
            try:
                pushed_now = push_task_branch(repo, BRANCH)
            except RepositoryError:
                # Refused only when the two went separate ways, and nothing moved.
                assert not repo.is_ancestor(local, there)
                assert not repo.is_ancestor(there, local)
                assert _remote_tip(remote, BRANCH) == there
            else:
                # Pushed exactly when this host was ahead; else the remote is unchanged.
                ahead = local != there and repo.is_ancestor(there, local)
                assert pushed_now == (local if ahead else None)
                assert _remote_tip(remote, BRANCH) == (local if ahead else there)
        else:
            _prepare(repo)
            assert repo.rev(BRANCH) == _remote_tip(remote, BRANCH)
        tip = _remote_tip(remote, BRANCH)
        assert tip is not None
        if tip != pushed[-1]:
            # The remote moved: only forward, over every tip it had.
            assert all(
                _run(remote, "git", "merge-base", "--is-ancestor", old, tip) == "" for old in pushed
            )
            pushed.append(tip)
