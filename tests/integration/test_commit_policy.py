"""The commit policy against real git: what the engine's commit takes and what it leaves.

Module tests drive :func:`commit_work` / :func:`plan_commit` on a real repository; the
engine tests (SQLite and PostgreSQL) check that a runner stage commits only its report,
that a DEFER or a failed agent commits nothing, and that a commit over the size limits
fails the stage naming the biggest paths.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.integration.support import GIT_IDENTITY
from tests.integration.test_engine import World, run_git, world  # noqa: F401 - the fixture

from orchestrator.errors import RepositoryError
from orchestrator.settings import load_settings
from orchestrator.workspace.commit_policy import (
    DEFAULT_COMMIT_EXCLUDE,
    CommitPolicy,
    commit_work,
    effective_excludes,
    plan_commit,
    untouched,
)
from orchestrator.workspace.git import git_dir, head_commit


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **GIT_IDENTITY},
    ).stdout


def make_repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "--all")
    git(path, "commit", "-q", "--allow-empty", "-m", "init")
    return path


def write(repo: Path, *names: str, text: str = "x\n") -> None:
    for name in names:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)


def committed(repo: Path, ref: str = "HEAD") -> set[str]:
    """The paths the commit ``ref`` changed."""
    return set(git(repo, "show", "--format=", "--name-only", ref).split())


def status(repo: Path) -> str:
    return git(repo, "status", "--porcelain", "--untracked-files=all")


# --- what is left out -------------------------------------------------------------------

TOOL_LEFTOVERS = (
    ".venv/bin/python",
    "node_modules/left-pad/index.js",
    "web/node_modules/x/y.js",
    "pkg/__pycache__/m.cpython-311.pyc",
    ".pytest_cache/v/cache/nodeids",
    ".mypy_cache/3.11/x.json",
    ".ruff_cache/0.1/x",
    ".hypothesis/examples/x",
    ".tox/py311/x",
    ".nox/s/x",
    ".env",
    ".env.local",
    "services/api/.env",
    ".coverage",
    ".coverage.host.123",
    "htmlcov/index.html",
    "coverage.xml",
    "build/lib/pkg/m.py",
    "dist/pkg-1.0.tar.gz",
    "pkg.egg-info/PKG-INFO",
    "venv/bin/activate",
    "env/bin/activate",
)


def test_tool_leftovers_are_never_staged_and_the_work_is_committed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {".gitignore": "*.log\n", "pkg/m.py": "a = 1\n"})
    write(repo, *TOOL_LEFTOVERS)
    write(repo, "pkg/m.py", text="a = 2\n")
    write(repo, "pkg/new.py", "debug.log")

    sha, plan = commit_work(repo, CommitPolicy(), "work")

    assert sha is not None
    assert plan.paths == ("pkg/m.py", "pkg/new.py")
    assert committed(repo) == {"pkg/m.py", "pkg/new.py"}
    # Left in the worktree, untracked, exactly as they were.
    for name in TOOL_LEFTOVERS:
        assert (repo / name).is_file(), name
    assert git(repo, "ls-files").split() == [".gitignore", "pkg/m.py", "pkg/new.py"]


def test_a_virtualenv_is_found_by_its_pyvenv_cfg_whatever_its_name(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"README": "r\n"})
    write(repo, "tools/my-env/pyvenv.cfg", "tools/my-env/lib/site.py", "tools/run.py")

    _, plan = commit_work(repo, CommitPolicy(), "work")

    assert plan.paths == ("tools/run.py",)


def test_gitignore_and_info_exclude_are_obeyed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {".gitignore": "secret.txt\n"})
    (repo / ".git" / "info" / "exclude").write_text("local-notes/\n")
    write(repo, "secret.txt", "local-notes/n.md", "kept.txt")

    assert plan_commit(repo, CommitPolicy()).paths == ("kept.txt",)


def test_a_repository_adds_patterns_and_drops_built_in_ones(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"README": "r\n"})
    write(repo, "build/BUILD.bazel", "data/big.bin", "data/keep.txt", ".venv/x")
    exclude = effective_excludes(["data/*.bin", "!build/"])

    assert "build/" not in exclude
    assert plan_commit(repo, CommitPolicy(exclude=exclude)).paths == (
        "build/BUILD.bazel",
        "data/keep.txt",
    )


def test_tracked_files_are_committed_even_when_a_pattern_matches_them(tmp_path: Path) -> None:
    # The repository chose to track them: their changes and deletions are its work.
    repo = make_repo(
        tmp_path / "r",
        {"dist/app.js": "v1\n", ".env.example": "KEY=\n", "build/gen.py": "g\n"},
    )
    write(repo, "dist/app.js", text="v2\n")
    write(repo, ".env.example", text="KEY=\nOTHER=\n")
    (repo / "build" / "gen.py").unlink()

    sha, _ = commit_work(repo, CommitPolicy(), "work")

    assert sha is not None
    assert committed(repo) == {"dist/app.js", ".env.example", "build/gen.py"}
    assert "build/gen.py" not in git(repo, "ls-files").split()


def test_what_an_agent_staged_itself_goes_through_the_policy(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"README": "r\n"})
    write(repo, ".venv/lib/x.py", ".env", "code.py")
    git(repo, "add", "--force", ".venv", ".env")

    commit_work(repo, CommitPolicy(), "work")

    assert committed(repo) == {"code.py"}
    # The real index follows the new HEAD: nothing is left staged.
    assert git(repo, "diff", "--cached", "--name-only") == ""


def test_a_scope_commits_only_under_its_directories(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"src/m.py": "a\n"})
    write(repo, "docs/work-items/T-1/13-test-report.md", "setup-output.txt", "junit.xml")
    write(repo, "src/m.py", text="changed by a test\n")

    _, plan = commit_work(repo, CommitPolicy(only=("docs/work-items/T-1",)), "report")

    assert plan.paths == ("docs/work-items/T-1/13-test-report.md",)
    assert committed(repo) == {"docs/work-items/T-1/13-test-report.md"}
    assert " M src/m.py" in status(repo)


def test_names_with_glob_characters_spaces_and_unicode_are_taken_literally(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "r", {"README": "r\n"})
    names = ("a*b.py", "with space.txt", "größe.md", "[x].txt")
    write(repo, *names)

    commit_work(repo, CommitPolicy(), "work")

    assert git(repo, "ls-files", "-z").split("\0")[:-1] == sorted(["README", *names])


def test_planning_touches_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"README": "r\n"})
    write(repo, "new.py", ".env")
    write(repo, "README", text="changed\n")
    git(repo, "add", "README")
    before = (status(repo), git(repo, "rev-parse", "HEAD"))

    plan_commit(repo, CommitPolicy())

    assert (status(repo), git(repo, "rev-parse", "HEAD")) == before


def test_nothing_to_commit_is_no_commit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"README": "r\n"})
    write(repo, ".env", "node_modules/x.js")
    head = git(repo, "rev-parse", "HEAD")

    assert commit_work(repo, CommitPolicy(), "work")[0] is None
    assert git(repo, "rev-parse", "HEAD") == head


# --- size limits ------------------------------------------------------------------------


def test_too_many_files_commit_nothing_and_name_where_they_are(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"README": "r\n"})
    write(repo, *(f"vendor/lib/f{i}.js" for i in range(12)), "src/a.py", "src/b.py")
    head = git(repo, "rev-parse", "HEAD")

    sha, plan = commit_work(repo, CommitPolicy(max_files=10), "work", "the development job")

    assert sha is None
    assert git(repo, "rev-parse", "HEAD") == head
    assert plan.problem == (
        "the development job would commit 14 files, more than commit_max_files = 10; most "
        "are under vendor/lib/ (12 files), src/ (2 files): delete them, or add them to "
        ".gitignore or the repository's commit_exclude"
    )


def test_too_many_bytes_commit_nothing_and_name_the_biggest_paths(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"README": "r\n"})
    (repo / "data").mkdir()
    (repo / "data" / "dump.sql").write_bytes(b"x" * 3_000_000)
    (repo / "data" / "small.csv").write_bytes(b"x" * 1_000_000)
    write(repo, "src/a.py")

    sha, plan = commit_work(repo, CommitPolicy(max_bytes=2_000_000), "work", "the job")

    assert sha is None
    assert plan.problem is not None
    assert plan.problem.startswith(
        "the job would commit 4.0 MB, more than commit_max_bytes = 2.0 MB; the biggest: "
        "data/dump.sql (3.0 MB), data/small.csv (1.0 MB), src/a.py (0.0 MB)"
    )
    assert "?? data/dump.sql" in status(repo)


def test_at_the_limits_the_commit_happens(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"README": "r\n"})
    write(repo, *(f"f{i}.txt" for i in range(3)), text="1234")

    sha, plan = commit_work(repo, CommitPolicy(max_files=3, max_bytes=12), "work")

    assert plan.problem is None
    assert sha is not None


# --- the rule, as a property ------------------------------------------------------------

DIRS = ("src", "lib", ".venv", "venv", "env", "node_modules", "build", "x.egg-info", "app")
FILES = ("m.py", ".env", ".env.prod", "coverage.xml", ".coverage", "pyvenv.cfg", "README")
JUNK_FILES = {".env", ".env.prod", "coverage.xml", ".coverage"}
JUNK_ANYWHERE = {".venv", "node_modules", "build", "x.egg-info"}
JUNK_AT_TOP = {"venv", "env"}


def expected_kept(paths: set[str]) -> set[str]:
    """The oracle: the built-in rules restated on this small alphabet."""
    venvs = {str(PurePosixPath(p).parent) for p in paths if p.endswith("/pyvenv.cfg")}
    kept = set()
    for path in paths:
        parts = PurePosixPath(path).parts
        if parts[-1] in JUNK_FILES or parts[0] in JUNK_AT_TOP:
            continue
        if any(part in JUNK_ANYWHERE for part in parts[:-1]):
            continue
        if any(path.startswith(f"{venv}/") for venv in venvs):
            continue
        kept.add(path)
    return kept


paths_strategy = st.sets(
    st.tuples(st.lists(st.sampled_from(DIRS), max_size=3), st.sampled_from(FILES)).map(
        lambda t: "/".join([*t[0], t[1]])
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(paths=paths_strategy)
def test_the_policy_keeps_exactly_what_the_rules_keep(tmp_path: Path, paths: set[str]) -> None:
    # A file and a directory cannot share a name: keep the first of each clash.
    usable: set[str] = set()
    for path in sorted(paths):
        prefixes = {"/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)}
        if prefixes & usable or any(u.startswith(f"{path}/") for u in usable):
            continue
        usable.add(path)
    repo = make_repo(Path(tempfile.mkdtemp(dir=tmp_path)) / "r", {".keep": ""})
    write(repo, *usable)

    assert set(plan_commit(repo, CommitPolicy()).paths) == expected_kept(usable)


def test_the_built_in_list_is_documented() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "workspace.md").read_text()
    for pattern in DEFAULT_COMMIT_EXCLUDE:
        assert f"`{pattern}`" in docs, pattern


# --- in the engine ----------------------------------------------------------------------


def reconfigure(made: World, repo_table: str) -> None:
    """Add ``[repos.repo]`` lines to the world's orch.toml and load it again."""
    config = made.tmp_path / "orch.toml"
    config.write_text(f"{config.read_text()}\n[repos.repo]\n{repo_table}\n")
    made.settings = load_settings(config)


def test_a_runner_stage_commits_only_its_report(world: World) -> None:  # noqa: F811
    world.configure()
    reconfigure(world, 'setup_command = ["sh", "-c", "echo made > setup-output.txt"]')
    task = world.create("T-1")
    engine = world.engine()

    world.drive(
        engine,
        lambda: world.task(task).stage == "deploy-staging" or world.task(task).failed,
        "testing passed",
        on_tick=world.approve_at_the_gate(task),
    )

    worktree = Path(world.task(task).worktree)
    assert (worktree / "setup-output.txt").is_file()
    tracked = run_git(worktree, "ls-files").split()
    assert "setup-output.txt" not in tracked
    assert "docs/work-items/T-1/13-test-report.md" in tracked
    testing_commit = run_git(worktree, "log", "-1", "--format=%H", "--grep=testing").strip()
    assert committed(worktree, testing_commit) == {"docs/work-items/T-1/13-test-report.md"}


def test_a_defer_and_a_failed_agent_commit_nothing(world: World) -> None:  # noqa: F811
    # Development fails on its first attempt after writing code; testing DEFERs (its
    # command cannot start) every time.
    world.configure(
        'if [ "$ORCH_STAGE" = development ] && [ "$ORCH_ATTEMPT" = 1 ]; then\n'
        "  echo half-done > half.txt; exit 1\nfi",
        max_attempts=2,
        test_runner_hybrid=False,
    )
    reconfigure(world, 'test_command = ["no-such-test-tool-xyz"]')
    task = world.create("T-1")
    engine = world.engine()

    world.drive(
        engine, world.ended(task), "the task's end", on_tick=world.approve_at_the_gate(task)
    )

    ended = world.task(task)
    assert ended.failed, ended.failed_reason
    assert ended.stage == "testing", ended.failed_reason
    worktree = Path(ended.worktree)
    subjects = run_git(worktree, "log", "--format=%s").splitlines()
    # The failed development attempt committed nothing; the second one committed both
    # attempts' work; the two DEFERred testing attempts committed nothing.
    assert [s for s in subjects if "development" in s] == ["T-1: development (attempt 2)"]
    assert not [s for s in subjects if "testing" in s]
    assert "half.txt" in committed(worktree, "HEAD")
    report = worktree / "docs/work-items/T-1/13-test-report.md"
    assert report.is_file()
    assert "13-test-report.md" not in run_git(worktree, "ls-files")


def test_a_commit_over_the_limit_fails_the_stage_naming_the_paths(world: World) -> None:  # noqa: F811
    world.configure(
        'if [ "$ORCH_STAGE" = development ]; then\n'
        '  mkdir -p generated; for i in 1 2 3 4 5 6; do echo "$i" > "generated/f$i.txt"; done\n'
        "fi",
        max_attempts=1,
        commit_max_files=5,
    )
    task = world.create("T-1")
    engine = world.engine()

    world.drive(
        engine, world.ended(task), "the task's end", on_tick=world.approve_at_the_gate(task)
    )

    ended = world.task(task)
    assert ended.failed
    assert ended.stage == "development"
    reason = ended.failed_reason or ""
    assert "would commit 7 files, more than commit_max_files = 5" in reason
    assert "generated/ (6 files)" in reason
    subjects = run_git(Path(ended.worktree), "log", "--format=%s").splitlines()
    assert not [s for s in subjects if "development" in s]


# --- the git directory, read from .git ---------------------------------------------------


def asked(worktree: Path) -> Path:
    return Path(git(worktree, "rev-parse", "--absolute-git-dir").strip())


def test_git_dir_reads_what_git_would_answer_for_a_checkout_and_its_worktrees(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    linked = tmp_path / "linked"
    git(repo, "worktree", "add", "-q", "-b", "topic", str(linked))
    relative = tmp_path / "relative"
    git(repo, "worktree", "add", "-q", "-b", "other", str(relative))
    pointer = (relative / ".git").read_text().removeprefix("gitdir:").strip()
    (relative / ".git").write_text(f"gitdir: {os.path.relpath(pointer, relative)}\n")
    for checkout in (repo, linked, relative):
        assert git_dir(checkout) == asked(checkout), checkout


def test_git_dir_asks_git_where_the_dot_git_entry_says_nothing_usable(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"pkg/a.txt": "a\n"})
    assert git_dir(repo / "pkg") == asked(repo)  # a subdirectory: no .git of its own
    linked = tmp_path / "linked"
    git(repo, "worktree", "add", "-q", "-b", "topic", str(linked))
    (linked / ".git").write_text("gitdir: /nowhere/at/all\n")
    with pytest.raises(RepositoryError):
        git_dir(linked)  # git refuses too: one clear error, not a wrong path


# --- HEAD read from the files, and the quick plan ------------------------------------------
_HEAD_STEPS = st.lists(
    st.sampled_from(["commit", "pack", "branch", "detach", "linked"]), min_size=1, max_size=7
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=_HEAD_STEPS)
def test_head_commit_reads_what_git_would_answer(
    tmp_path_factory: pytest.TempPathFactory, steps: list[str]
) -> None:
    """Loose refs, packed refs (``git pack-refs``), a detached HEAD, linked worktrees:
    every checkout's HEAD read from the files equals ``git rev-parse HEAD``."""
    root = tmp_path_factory.mktemp("head")
    repo = make_repo(root / "repo", {"a.txt": "a\n"})
    checkouts = [repo]
    for number, step in enumerate(steps):
        where = checkouts[number % len(checkouts)]
        if step == "commit":
            git(where, "commit", "-q", "--allow-empty", "-m", f"c{number}")
        elif step == "pack":
            git(repo, "pack-refs", "--all")
        elif step == "branch":
            git(where, "checkout", "-q", "-b", f"b{number}")
        elif step == "detach":
            git(where, "checkout", "-q", "--detach")
        else:
            linked = root / f"linked{number}"
            git(repo, "worktree", "add", "-q", "-b", f"w{number}", str(linked))
            checkouts.append(linked)
        for checkout in checkouts:
            assert head_commit(checkout) == git(checkout, "rev-parse", "HEAD").strip()


_WORK = st.lists(
    st.sampled_from(
        ["modify", "restore", "untracked", "ignored", "stage", "delete", "venv", "junk", "commit"]
    ),
    min_size=0,
    max_size=6,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(work=_WORK)
def test_the_quick_plan_is_the_whole_plan(
    tmp_path_factory: pytest.TempPathFactory, work: list[str]
) -> None:
    """Whatever an agent left (edits undone, staged changes, ignored files, a venv, a
    ``.env``), the plan with the one-process check equals the plan without it."""
    root = tmp_path_factory.mktemp("quick")
    repo = make_repo(root / "repo", {"a.txt": "a\n", "b.txt": "b\n", ".gitignore": "*.log\n"})
    for number, step in enumerate(work):
        if step == "modify":
            write(repo, "a.txt", text=f"changed {number}\n")
        elif step == "restore":
            git(repo, "checkout", "--", ".")
        elif step == "untracked":
            write(repo, f"new{number}.py")
        elif step == "ignored":
            write(repo, f"run{number}.log")
        elif step == "stage":
            write(repo, "b.txt", text=f"staged {number}\n")
            git(repo, "add", "b.txt")
        elif step == "delete":
            (repo / "b.txt").unlink(missing_ok=True)
        elif step == "venv":
            write(repo, ".venv/pyvenv.cfg", ".venv/lib/x.py")
        elif step == "junk":
            write(repo, ".env", text="SECRET=1\n")
        else:
            git(repo, "add", "--all")
            git(repo, "commit", "-q", "--allow-empty", "-m", f"c{number}")
    policy = CommitPolicy(exclude=effective_excludes([]))
    quick = plan_commit(repo, policy)
    whole = plan_commit(repo, policy, quick=False)
    assert quick.paths == whole.paths
    assert untouched(repo) == (git(repo, "status", "--porcelain") == "")
