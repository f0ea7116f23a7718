"""Task creation with thousands of finished tasks: does it stay as fast as the first 100?

Theory of operation
-------------------
Creating a task makes a git worktree (``git worktree add -b orch/<ID>``) and writes the
task and its first job. ``git worktree add`` reads the HEAD of every registered worktree
(it refuses a branch that is checked out elsewhere), so when finished tasks keep their
worktrees, creation gets slower with every task ever run (decision 0006). Machines are
noisy, so an absolute time says little; the figure is a **ratio measured in one run**:
the median creation time of the last ``--window`` tasks over that of the first
``--window`` tasks (the baseline). About 1 means it does not grow.

Setup, in a temporary directory: one real git repository (``git init -b main``, a small
tree of ``--files`` files); an ``orch.toml`` whose stages all use a no-op agent (``true``)
and no human gate. Then ``--tasks`` times, through :class:`TaskService` as the CLI does:

1. ``create_task`` (timed: validation, ``git worktree add``, the insert);
2. ``cancel`` (timed separately): the task ends; with the default settings its
   worktree is removed then and there, by the same ``release_worktree`` a ``done``
   task goes through. The engine is not started: only creation is measured.

``--keep-worktrees`` sets ``worktree_retention_done_s`` to a year: finished tasks keep
their worktrees, as before issue 13, for comparison.

Usage::

    .venv/bin/python bench/worktree_churn.py                      # 2,000 tasks, SQLite
    .venv/bin/python bench/worktree_churn.py --keep-worktrees     # the old behaviour
    .venv/bin/python bench/worktree_churn.py --tasks 300 --window 50 --json
    .venv/bin/python bench/worktree_churn.py --database postgres
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa

from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import load_settings
from orchestrator.store import Store
from orchestrator.workspace.git import GIT_ENV

DEFAULT_TASKS: Final = 2000
DEFAULT_WINDOW: Final = 100
DEFAULT_FILES: Final = 200
DEFAULT_PG_ADMIN_URL: Final = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
YEAR_S: Final = 365 * 24 * 3600

CONFIG: Final = """\
# Written by bench/worktree_churn.py: a no-op agent everywhere, no human gate.
data_dir = ".orch"
skip = ["brd-approval"]
worktree_retention_done_s = {retention}
{database_line}
[agents.noop]
command = ["true"]

[stages.analysis]
agent = "noop"
[stages.architecture]
agent = "noop"
[stages.development]
agent = "noop"
[stages.testing]
agent = "noop"
"""


class BenchError(Exception):
    """The benchmark could not produce valid figures; the message says why."""


@dataclass
class Results:
    """Everything one run measured, as printed by ``--json``."""

    command: str
    database: str
    machine: dict[str, Any]
    tasks: int
    window: int
    keep_worktrees: bool
    first_median_ms: float
    last_median_ms: float
    ratio_last_to_first: float
    first_mean_ms: float
    last_mean_ms: float
    end_median_ms: float
    worktrees_registered_at_end: int
    wall_s: float
    create_ms_by_hundred: list[float]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    ).stdout


def create_repository(path: Path, files: int) -> Path:
    """A real git repository on ``main``: ``files`` small files in a few directories."""
    path.mkdir(parents=True)
    _git(path, "init", "--quiet", "-b", "main")
    for number in range(files):
        target = path / f"pkg{number % 10}" / f"mod{number}.py"
        target.parent.mkdir(exist_ok=True)
        target.write_text(f"VALUE = {number}\n", encoding="utf-8")
    _git(path, "add", "--all")
    _git(path, "commit", "--quiet", "-m", "initial commit")
    return path


@contextmanager
def fresh_postgres_database(admin_url: str) -> Iterator[str]:
    """Create ``orch_bench_<random>`` on the admin URL's server; drop it afterwards."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"orch_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        raise BenchError(
            f"cannot create a database: {str(exc.orig).strip().splitlines()[0]}; "
            "start PostgreSQL or pass --pg-admin-url"
        ) from None
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _ms(values: Sequence[float]) -> float:
    return statistics.median(values) * 1000


def run_benchmark(
    root: Path,
    *,
    tasks: int,
    window: int,
    files: int,
    keep_worktrees: bool,
    database_url: str | None,
    label: str,
    progress: bool,
) -> Results:
    if tasks < 2 * window:
        raise BenchError(f"--tasks ({tasks}) must be at least twice --window ({window})")
    database_line = f"database_url = {json.dumps(database_url)}\n" if database_url else ""
    config = root / "orch.toml"
    retention = YEAR_S if keep_worktrees else 0
    config.write_text(CONFIG.format(retention=retention, database_line=database_line))
    settings = load_settings(config)
    repo = create_repository(root / "bench-repo", files)
    store = Store.open(database_url or settings.effective_database_url)
    try:
        service = TaskService(store, settings)
        create_s: list[float] = []
        end_s: list[float] = []
        wall_started = time.perf_counter()
        for number in range(1, tasks + 1):
            started = time.perf_counter()
            task = service.create_task(
                repo_path=repo, title=f"task {number}", work_item=f"CHURN-{number}", actor="bench"
            )
            created = time.perf_counter()
            service.cancel(task, actor="bench")
            create_s.append(created - started)
            end_s.append(time.perf_counter() - created)
            if progress and number % 100 == 0:
                recent = _ms(create_s[-100:])
                print(f"  {number:5d} tasks, last 100 median {recent:6.1f} ms", file=sys.stderr)
        wall_s = time.perf_counter() - wall_started
        registered = _git(repo, "worktree", "list", "--porcelain").count("worktree ")
        if not keep_worktrees and registered != 1:
            raise BenchError(f"{registered - 1} task worktrees are still registered after the run")
        first, last = create_s[:window], create_s[-window:]
        machine = {
            "cpus_usable": len(os.sched_getaffinity(0)),
            "load_1min": os.getloadavg()[0],
            "python": platform.python_version(),
            "git": _git(root, "--version").strip(),
            "database": store.dialect,
        }
        return Results(
            command=shlex.join(sys.orig_argv),
            database=label,
            machine=machine,
            tasks=tasks,
            window=window,
            keep_worktrees=keep_worktrees,
            first_median_ms=_ms(first),
            last_median_ms=_ms(last),
            ratio_last_to_first=statistics.median(last) / statistics.median(first),
            first_mean_ms=statistics.fmean(first) * 1000,
            last_mean_ms=statistics.fmean(last) * 1000,
            end_median_ms=_ms(end_s),
            worktrees_registered_at_end=registered - 1,
            wall_s=wall_s,
            create_ms_by_hundred=[
                round(_ms(create_s[i : i + 100]), 1) for i in range(0, tasks, 100)
            ],
        )
    finally:
        store.close()


def print_table(results: Results) -> None:
    m = results.machine
    mode = "kept (old behaviour)" if results.keep_worktrees else "removed when the task ends"
    rows = [
        ("database", results.database),
        ("machine", f"{m['cpus_usable']} CPUs, load {m['load_1min']:.1f}, {m['git']}"),
        ("tasks / window", f"{results.tasks} / {results.window}"),
        ("finished worktrees", mode),
        (f"create, first {results.window} (median)", f"{results.first_median_ms:8.1f} ms"),
        (f"create, last {results.window} (median)", f"{results.last_median_ms:8.1f} ms"),
        ("ratio last / first", f"{results.ratio_last_to_first:8.2f}"),
        ("end (cancel + removal), median", f"{results.end_median_ms:8.1f} ms"),
        ("worktrees registered at the end", str(results.worktrees_registered_at_end)),
        ("wall time", f"{results.wall_s:8.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("median create ms per 100 tasks:", ", ".join(map(str, results.create_ms_by_hundred)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    parser.add_argument("--files", type=int, default=DEFAULT_FILES, help="files in the repo")
    parser.add_argument("--keep-worktrees", action="store_true", help="the old behaviour")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="orch-churn-") as tmp:
            root = Path(tmp)
            common = {
                "tasks": args.tasks,
                "window": args.window,
                "files": args.files,
                "keep_worktrees": args.keep_worktrees,
                "progress": not args.json,
            }
            if args.database == "postgres":
                with fresh_postgres_database(args.pg_admin_url) as url:
                    results = run_benchmark(root, database_url=url, label="postgres", **common)
            else:
                results = run_benchmark(root, database_url=None, label="sqlite", **common)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(results), indent=2))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
