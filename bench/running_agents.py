"""Work that must not grow with the number of running jobs or with history (issue 12).

Theory of operation
-------------------
Two measurements, each printed as a ratio between two sizes measured in the same run,
so the machine's load cancels out:

* **Running agents.** An :class:`Engine` in-process (ticking as ``orch run`` does, its
  maintenance inline) watches N running agents that ``sleep``: N tasks in one real git
  repository, whose ``analysis`` agent is ``sleep --sleep-s``, ``max_running_jobs = N``.
  Once all N run, the engine ticks on in a thread for ``--window-s`` seconds and the
  database statements it sends are counted (``Store.statements``, what
  ``orch_db_statements_total`` shows; a SQLAlchemy ``before_cursor_execute`` listener
  when the store has no counter). Every job must still be running at the end of the
  window. Reported for N = 10 and N = 100: statements a second, and the ratio
  N=100 / N=10. Goal: about 1 (before: a ``get_task`` per running job every 0.5 s).
* **Reconciler sweep.** A store with T tasks written directly (T = 1,000 and 10,000):
  99 % of them ``done`` with a finished job, spread over the last 30 days, 1 % in
  ``development`` with a queued job; nothing needs repair. One reconciler sweeps
  ``--sweeps`` times; reported: the first sweep, the median of the others, statements
  per sweep, and the ratio of the medians 10,000 / 1,000. Goal: about 1 (before: every
  sweep read the newest 10,000 tasks, and never an older one).

Usage::

    .venv/bin/python bench/running_agents.py                      # SQLite
    .venv/bin/python bench/running_agents.py --database postgres  # a fresh database, dropped
    .venv/bin/python bench/running_agents.py --window-s 10 --json
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
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa

from orchestrator.engine.core import Engine
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import load_settings
from orchestrator.store import Store
from orchestrator.store.schema import jobs, tasks
from orchestrator.workspace.git import GIT_ENV

AGENT_COUNTS: Final = (10, 100)
TASK_COUNTS: Final = (1_000, 10_000)
PG_ADMIN_URL: Final = os.environ.get(
    "ORCH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
START_TIMEOUT_S: Final = 300.0
SETTLE_S: Final = 1.0
LIVE_SHARE: Final = 0.01
HISTORY_S: Final = 30 * 86_400.0

CONFIG: Final = """\
# Written by bench/running_agents.py: every task's analysis agent sleeps.
data_dir = ".orch"
database_url = {database_url}
max_running_jobs = {agents}
max_running_jobs_per_repo = {agents}

[agents.sleeper]
command = ["sleep", "{sleep_s:g}"]

[stages.analysis]
agent = "sleeper"
gates = []

[stages.architecture]
agent = "sleeper"

[stages.development]
agent = "sleeper"
"""


class BenchError(Exception):
    """The benchmark could not produce valid figures; the message says why."""


@dataclass(frozen=True)
class Running:
    agents: int
    window_s: float
    statements: int

    @property
    def per_s(self) -> float:
        return self.statements / self.window_s


@dataclass(frozen=True)
class Sweeps:
    tasks: int
    first_s: float
    median_s: float
    statements_per_sweep: float


class StatementCounter:
    """Statements sent through ``store``: its own counter, else a cursor listener."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._own = 0
        if not hasattr(store, "statements"):
            sa.event.listen(store.engine, "before_cursor_execute", self._count)

    def _count(self, *_args: Any) -> None:
        self._own += 1

    def __call__(self) -> int:
        counted = getattr(self.store, "statements", None)
        return int(counted) if counted is not None else self._own


@contextmanager
def database(kind: str, root: Path, name: str) -> Iterator[str]:
    """A fresh database URL: a SQLite file under ``root``, or a PostgreSQL database
    created on ``ORCH_TEST_PG_URL``'s server and dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{root / f'{name}.db'}"
        return
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    database_name = f"orch_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{database_name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        first = str(exc.orig).strip().splitlines()[0]
        raise BenchError(f"cannot create a database: {first}; set ORCH_TEST_PG_URL") from None
    try:
        yield (
            sa.make_url(PG_ADMIN_URL)
            .set(database=database_name)
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database_name}" WITH (FORCE)'))
        admin.dispose()


def _git(cwd: Path, *args: str) -> None:
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=env)


def create_repository(path: Path) -> Path:
    path.mkdir(parents=True)
    _git(path, "init", "--quiet", "-b", "main")
    (path / "README.md").write_text("# bench\n", encoding="utf-8")
    _git(path, "add", "README.md")
    _git(path, "commit", "--quiet", "-m", "initial commit")
    return path


# --- running agents ---------------------------------------------------------------------
def measure_running(root: Path, url: str, agents: int, sleep_s: float, window_s: float) -> Running:
    config = root / "orch.toml"
    config.write_text(
        CONFIG.format(database_url=json.dumps(url), agents=agents, sleep_s=sleep_s),
        encoding="utf-8",
    )
    settings = load_settings(config)
    repo = create_repository(root / "repo")
    store = Store.open(url)
    engine = Engine(store, settings)
    try:
        service = TaskService(store, settings)
        for number in range(1, agents + 1):
            service.create_task(
                repo_path=repo, title=f"sleeper {number}", work_item=f"RUN-{number}", actor="bench"
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(engine.running_jobs()) < agents:
            if time.monotonic() > deadline:
                raise BenchError(f"only {len(engine.running_jobs())} of {agents} agents started")
            if not engine.tick():
                time.sleep(0.05)
        started = {job.id for job in engine.running_jobs()}
        stop = threading.Event()
        ticking = threading.Thread(target=engine.run, args=(stop,), name="bench-engine")
        count = StatementCounter(store)
        ticking.start()
        time.sleep(SETTLE_S)
        before, began = count(), time.monotonic()
        time.sleep(window_s)
        sent, took = count() - before, time.monotonic() - began
        stop.set()
        ticking.join()
        still = {job.id for job in engine.running_jobs()}
        if still != started:
            raise BenchError(
                f"{len(started - still)} agents ended during the window; raise --sleep-s"
            )
        return Running(agents, took, sent)
    finally:
        engine.shutdown(kill=True)
        store.close()


# --- reconciler sweeps ------------------------------------------------------------------
def fill(store: Store, count: int) -> None:
    """``count`` tasks written in bulk: 1 % live with a queued job, the rest done."""
    now = time.time()
    live_every = round(1 / LIVE_SHARE)
    task_rows: list[dict[str, Any]] = []
    for number in range(1, count + 1):
        at = now - HISTORY_S * (count - number) / count - 3_600.0
        live = number % live_every == 0
        task_rows.append(
            {
                "work_item": f"OLD-{number}",
                "repository": "/bench/repo",
                "title": f"task {number}",
                "description": "",
                "stage": "development" if live else "done",
                "version": 7,
                "attempt": 1,
                "rollback_count": 0,
                "failed_reason": None,
                "branch": f"orch/OLD-{number}",
                "base_branch": "main",
                "base_sha": "0" * 40,
                "worktree": f"/bench/worktrees/OLD-{number}",
                "created_at": at,
                "updated_at": at,
                "worktree_removed_at": None if live else at,
            }
        )
    with store.engine.begin() as conn:
        conn.execute(sa.insert(tasks), task_rows)
        ids = [int(row[0]) for row in conn.execute(sa.select(tasks.c.id).order_by(tasks.c.id))]
        job_rows = [
            {
                "task_id": task_id,
                "stage": row["stage"] if row["stage"] != "done" else "deploy",
                "kind": "agent",
                "agent": "sleeper",
                "status": "queued" if row["stage"] != "done" else "done",
                "attempt": 1,
                "not_before": row["updated_at"] + HISTORY_S,
                "enqueued_at": row["updated_at"],
                "updated_at": row["updated_at"],
                "finished_at": None if row["stage"] != "done" else row["updated_at"],
            }
            for task_id, row in zip(ids, task_rows, strict=True)
        ]
        conn.execute(sa.insert(jobs), job_rows)


def measure_sweeps(root: Path, url: str, count: int, sweeps: int) -> Sweeps:
    config = root / "orch.toml"
    config.write_text(
        CONFIG.format(database_url=json.dumps(url), agents=1, sleep_s=1), encoding="utf-8"
    )
    store = Store.open(url)
    engine = Engine(store, load_settings(config))
    try:
        fill(store, count)
        reconciler = engine.services.reconciler
        statements = StatementCounter(store)
        times: list[float] = []
        sent: list[int] = []
        for _ in range(sweeps + 1):
            before, began = statements(), time.perf_counter()
            if reconciler.sweep() != 0:
                raise BenchError("the reconciler repaired a task; the fixture needs none")
            times.append(time.perf_counter() - began)
            sent.append(statements() - before)
        return Sweeps(count, times[0], statistics.median(times[1:]), statistics.mean(sent[1:]))
    finally:
        engine.shutdown()
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--window-s", type=float, default=15.0)
    parser.add_argument("--sleep-s", type=float, default=60.0)
    parser.add_argument("--sweeps", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    running: list[Running] = []
    sweeps: list[Sweeps] = []
    try:
        for agents in AGENT_COUNTS:
            with (
                tempfile.TemporaryDirectory(prefix="orch-running-") as temporary,
                database(args.database, Path(temporary), "orch") as url,
            ):
                running.append(
                    measure_running(Path(temporary), url, agents, args.sleep_s, args.window_s)
                )
        for count in TASK_COUNTS:
            with (
                tempfile.TemporaryDirectory(prefix="orch-sweeps-") as temporary,
                database(args.database, Path(temporary), "orch") as url,
            ):
                sweeps.append(measure_sweeps(Path(temporary), url, count, args.sweeps))
    except BenchError as exc:
        print(f"running_agents: {exc}", file=sys.stderr)
        return 1
    statements_ratio = running[1].per_s / running[0].per_s
    sweep_ratio = sweeps[1].median_s / sweeps[0].median_s
    if args.json:
        print(
            json.dumps(
                {
                    "command": shlex.join(sys.orig_argv),
                    "database": args.database,
                    "machine": platform.platform(),
                    "running": [{**asdict(r), "per_s": r.per_s} for r in running],
                    "statements_ratio": statements_ratio,
                    "sweeps": [asdict(s) for s in sweeps],
                    "sweep_ratio": sweep_ratio,
                },
                indent=2,
            )
        )
        return 0
    print(f"command: {shlex.join(sys.orig_argv)}  ({args.database})")
    for r in running:
        print(
            f"  {r.agents:>5} running agents: {r.per_s:7.1f} statements/s over {r.window_s:.1f} s"
        )
    print(f"  ratio {AGENT_COUNTS[1]}/{AGENT_COUNTS[0]} running: {statements_ratio:.2f} (goal ~1)")
    for s in sweeps:
        print(
            f"  {s.tasks:>6} tasks: reconciler sweep median {s.median_s * 1000:8.1f} ms "
            f"(first {s.first_s * 1000:.1f} ms), {s.statements_per_sweep:.1f} statements a sweep"
        )
    print(f"  ratio {TASK_COUNTS[1]}/{TASK_COUNTS[0]} tasks: {sweep_ratio:.2f} (goal ~1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
