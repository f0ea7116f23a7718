"""``/queue``, ``/tasks``, ``/costs`` and the dashboard's pages with 10,000 tasks, against
``/health`` and the old whole ``/queue`` answer.

Theory of operation
-------------------
Before decision 0018, ``GET /queue`` answered every waiting and running job in one
response (1.8 MB for 10,000 jobs, p50 330 ms in issue 9). Now it answers a page
(``limit``, default 100, at most 1,000) and a cursor. Machines are noisy, so absolute
times say little; the figures are **ratios measured in one run**, against two baselines
timed in the same rounds over the same HTTP stack:

* ``GET /health`` (one ``SELECT 1``): the floor of a request;
* the **old whole answer**: a route this script adds to the app that is the pre-0018
  ``/queue`` handler, word for word (``store.jobs_by_status`` for waiting and running
  jobs, one entry each, the leases), so "page vs whole" compares like with like.

Setup, in a temporary directory: a migrated SQLite (or PostgreSQL) store with
``--tasks`` tasks in five repositories, each with one queued job and one finished job
whose agent run cost something, started on one of the last 30 days (rows written
through the store's own ``Tx`` operations, in one transaction; ``task_budget_usd`` set,
so the cost report ranks every task against its budget); ``orch``'s real app
(``create_app``, the HTTP guard included, ``public_read`` on so no token is involved)
served by uvicorn on a loopback port in a thread; ``httpx`` over TCP. The rounds
interleave the endpoints (each round asks each endpoint once, in a shuffled order), so
a load spike hits all of them alike.

Reported per endpoint: answer size, p50 and p99, p50 and p99 as ratios to those of
``/health``, and p50 as a ratio to the old whole answer. The goal (issue 9): every list
and page under 10x ``/health``. The dashboard's pages (the board, the costs and health
pages under ``/ui/``) are measured when the app serves them.

Usage::

    .venv/bin/python bench/api_lists.py                          # 10,000 jobs, SQLite
    .venv/bin/python bench/api_lists.py --tasks 2000 --rounds 20 --json
    .venv/bin/python bench/api_lists.py --database postgres
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import socket
import statistics
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

import httpx
import sqlalchemy as sa
import uvicorn

from orchestrator.api.server import create_app
from orchestrator.effects.leases import LeaseManager, Owner
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import load_settings
from orchestrator.store import ACTIVE_JOB_STATUSES, Job, Store, Task
from orchestrator.store.schema import agent_runs

DEFAULT_TASKS: Final = 10_000
DEFAULT_ROUNDS: Final = 40
DEFAULT_PG_ADMIN_URL: Final = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SERVER_START_TIMEOUT_S: Final = 30
REQUEST_TIMEOUT_S: Final = 120
OLD_QUEUE_PATH: Final = "/bench/old-queue"
WAITING_JOB_STATUSES: Final = ("queued", "deferred")
REPOSITORIES: Final = 5
# The dashboard's pages, measured when the app has them (the /ui/ router).
PAGES: Final = {
    "board page (/ui/)": "/ui/",
    "costs page (/ui/costs)": "/ui/costs",
    "health page (/ui/health)": "/ui/health",
}

CONFIG: Final = """\
# Written by bench/api_lists.py.
data_dir = ".orch"
public_read = true
task_budget_usd = 5.0
{database_line}
"""


class BenchError(Exception):
    """The benchmark could not produce valid figures; the message says why."""


@dataclass
class Endpoint:
    name: str
    path: str
    bytes: int
    p50_ms: float
    p99_ms: float
    p50_over_health: float
    p99_over_health: float
    p50_over_old_queue: float


@dataclass
class Results:
    command: str
    database: str
    machine: dict[str, Any]
    tasks: int
    rounds: int
    endpoints: list[Endpoint]
    page_size_over_old: float
    wall_s: float


def _old_queue_entry(job: Job, task: Task, age_s: float) -> dict[str, Any]:
    """The pre-0018 ``/queue`` entry (epoch ``not_before``), as server.py had it."""
    return {
        "id": job.id,
        "task_id": task.id,
        "work_item": task.work_item,
        "stage": job.stage,
        "agent": job.agent,
        "kind": job.kind,
        "attempt": job.attempt,
        "status": job.status,
        "age_s": round(max(age_s, 0.0), 3),
        "not_before": job.not_before,
        "pid": job.pid,
    }


def fill(store: Store, tasks: int) -> None:
    """``tasks`` tasks in analysis, each with its creation event, one queued job, and one
    finished job whose run cost something on one of the last 30 days."""
    now = time.time()
    started: list[tuple[int, float]] = []
    with store.transaction() as tx:
        for number in range(1, tasks + 1):
            task_id = tx.insert_task(
                work_item=f"BENCH-{number}",
                repository=f"/srv/bench-repo-{number % REPOSITORIES}",
                title=f"Bench task {number}",
                description="",
                stage="analysis",
                branch=f"orch/BENCH-{number}",
                base_branch="main",
                base_sha="0" * 40,
                worktree=f"/srv/worktrees/BENCH-{number}",
            )
            tx.add_event("task.created", actor="bench", task_id=task_id, to_stage="analysis")
            done = tx.enqueue_job(
                task_id=task_id, stage="analysis", kind="agent", agent="claude", attempt=1
            )
            tx.set_job_status_cas(done, "queued", "running", owner_boot_id="bench")
            run_id = tx.insert_agent_run(
                job_id=done,
                task_id=task_id,
                agent="claude",
                model=("opus", "sonnet", "haiku")[number % 3],
                effort="",
                attempt=1,
                log_path="/dev/null",
            )
            tx.record_exit(
                run_id,
                exit_code=0,
                input_tokens=10_000 + number,
                output_tokens=1_000,
                cost_usd=0.01 * (number % 100),
            )
            tx.set_job_status_cas(done, "running", "done")
            started.append((run_id, now - (number % 30) * 86_400 - 60))
            tx.enqueue_job(
                task_id=task_id, stage="analysis", kind="agent", agent="claude", attempt=2
            )
    spread_run_starts(store, started)
    if store.dialect == "postgresql":
        # What autovacuum does within a minute of such a load on a live server: without
        # statistics the planner takes 10,000 rows for a handful and picks its plans so.
        with store.engine.connect() as conn:
            conn.execute(sa.text("ANALYZE"))
            conn.commit()


def spread_run_starts(store: Store, started: list[tuple[int, float]]) -> None:
    """Move each run's start to its day (the store stamps ``now``; the bench needs days)."""
    with store.transaction() as tx:
        for run_id, moment in started:
            tx.conn.execute(
                agent_runs.update().where(agent_runs.c.id == run_id).values(started_at=moment)
            )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(store: Store, root: Path) -> Iterator[str]:
    settings = load_settings(root / "orch.toml")
    app = create_app(store=store, settings=settings, service=TaskService(store, settings))
    leases = LeaseManager(store, settings, Owner.current(None))

    @app.get(OLD_QUEUE_PATH, include_in_schema=False)
    def old_queue() -> dict[str, Any]:  # the handler /queue had before decision 0018
        now = time.time()
        waiting = store.jobs_by_status(WAITING_JOB_STATUSES)
        active = store.jobs_by_status(ACTIVE_JOB_STATUSES)
        return {
            "queued": [_old_queue_entry(job, task, now - job.enqueued_at) for job, task in waiting],
            "running": [
                _old_queue_entry(job, task, now - (job.started_at or job.enqueued_at))
                for job, task in active
            ],
            "transition_lease": {
                "enabled": settings.transition_lease_enabled,
                "held": [info.to_dict() for info in leases.held()],
            },
        }

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="bench-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise BenchError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(SERVER_START_TIMEOUT_S)


@contextmanager
def fresh_postgres_database(admin_url: str) -> Iterator[str]:
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


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def run_benchmark(
    root: Path, *, tasks: int, rounds: int, database_url: str | None, label: str
) -> Results:
    database_line = f"database_url = {json.dumps(database_url)}\n" if database_url else ""
    (root / "orch.toml").write_text(CONFIG.format(database_line=database_line))
    settings = load_settings(root / "orch.toml")
    store = Store.open(database_url or settings.effective_database_url)
    wall_started = time.perf_counter()
    try:
        fill(store, tasks)
        endpoints = {
            "health": "/health",
            "old /queue (every job)": OLD_QUEUE_PATH,
            "/queue (default page, 100)": "/queue",
            "/queue?limit=1000 (largest page)": "/queue?limit=1000",
            "/tasks (default page, 100)": "/tasks",
            "/metrics": "/metrics",
            "/costs (30 days)": "/costs",
            "/status": "/status",
        }
        times: dict[str, list[float]] = {name: [] for name in endpoints}
        sizes: dict[str, int] = {}
        with (
            serving(store, root) as base,
            httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as client,
        ):
            if client.get("/ui/login").status_code == 200:  # the dashboard is there
                endpoints.update(PAGES)
                times.update({name: [] for name in PAGES})
            for name, path in endpoints.items():  # warm-up, and the answer sizes
                answer = client.get(path)
                if answer.status_code != 200:
                    raise BenchError(
                        f"GET {path} answered {answer.status_code}: {answer.text[:200]}"
                    )
                sizes[name] = len(answer.content)
            old = client.get(OLD_QUEUE_PATH).json()
            if len(old["queued"]) != tasks:
                raise BenchError(f"the old /queue held {len(old['queued'])} jobs, not {tasks}")
            order = list(endpoints)
            for _ in range(rounds):
                random.shuffle(order)
                for name in order:
                    started = time.perf_counter()
                    client.get(endpoints[name]).raise_for_status()
                    times[name].append(time.perf_counter() - started)
        health_p50 = statistics.median(times["health"])
        old_p50 = statistics.median(times["old /queue (every job)"])
        results = [
            Endpoint(
                name=name,
                path=path,
                bytes=sizes[name],
                p50_ms=round(statistics.median(times[name]) * 1000, 2),
                p99_ms=round(_percentile(times[name], 0.99) * 1000, 2),
                p50_over_health=round(statistics.median(times[name]) / health_p50, 2),
                p99_over_health=round(
                    _percentile(times[name], 0.99) / _percentile(times["health"], 0.99), 2
                ),
                p50_over_old_queue=round(statistics.median(times[name]) / old_p50, 3),
            )
            for name, path in endpoints.items()
        ]
    finally:
        store.close()
    return Results(
        command=shlex.join([Path(sys.executable).name, *sys.argv]),
        database=label,
        machine={
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_1m": round(os.getloadavg()[0], 1),
        },
        tasks=tasks,
        rounds=rounds,
        endpoints=results,
        page_size_over_old=round(
            sizes["/queue (default page, 100)"] / sizes["old /queue (every job)"], 4
        ),
        wall_s=round(time.perf_counter() - wall_started, 1),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.tasks < 1 or args.rounds < 1:
        print("error: --tasks and --rounds must be at least 1", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
            if args.database == "postgres":
                with fresh_postgres_database(args.pg_admin_url) as url:
                    results = run_benchmark(
                        Path(tmp), tasks=args.tasks, rounds=args.rounds, database_url=url,
                        label="PostgreSQL",
                    )  # fmt: skip
            else:
                results = run_benchmark(
                    Path(tmp), tasks=args.tasks, rounds=args.rounds, database_url=None,
                    label="SQLite",
                )  # fmt: skip
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(results), indent=2))
        return 0
    print(f"{results.tasks} tasks and queued jobs, {results.rounds} rounds, {results.database}")
    print(
        f"{'endpoint':36} {'bytes':>10} {'p50 ms':>9} {'p99 ms':>9} "
        f"{'p50/hlth':>8} {'p99/hlth':>8} {'p50/old':>7}"
    )
    for one in results.endpoints:
        print(
            f"{one.name:36} {one.bytes:>10,} {one.p50_ms:>9.1f} {one.p99_ms:>9.1f} "
            f"{one.p50_over_health:>8.1f} {one.p99_over_health:>8.1f} "
            f"{one.p50_over_old_queue:>7.3f}"
        )
    print(f"page size / old whole answer: {results.page_size_over_old}")
    print(f"load (1 min) at the end: {results.machine['load_1m']}; wall {results.wall_s} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
