"""Pipeline throughput: how many stage-jobs per second the engine finishes, against a baseline.

Theory of operation
-------------------
Machines are noisy, so an absolute timing alone says little. This benchmark measures,
in the SAME run, (a) the engine driving N tasks through the job stages with an agent
that does nothing (``true``) and (b) the same number of bare ``subprocess.run(["true"])``
spawns, sequential, timed in three rounds before and three after the engine phase (the
median round counts). What it reports is the ratio of the two: the orchestrator's cost
per stage-job in units of "one bare process spawn on this machine, right now".

Setup, in a temporary directory:

* one real git repository (``git init -b main``, one commit);
* an ``orch.toml`` that skips the human gate and the deploy stages (so no merge), runs
  ``analysis``, ``architecture``, ``development`` and ``testing`` with the ``noop``
  agent (``command = ["true"]``) and no gates, with ``retry_backoff_s = 0`` and four
  concurrent jobs;
* N tasks ``BENCH-1``..``BENCH-N`` created through :class:`TaskService`.

Then an :class:`Engine` runs in-process until it is idle; every task must end ``done``.

Figures (all from the ``jobs`` and ``agent_runs`` tables, UNIX seconds):

* wall time of the engine phase, stage-jobs finished per second;
* dispatch latency per job: ``started_at - max(enqueued_at, not_before, engine start)``.
  The engine start is in the ``max`` because the first stage's jobs are enqueued while
  the harness still creates the other tasks; no engine could have started them earlier.
  The literal ``started_at - max(enqueued_at, not_before)`` is reported too. With more
  than ``max_running_jobs`` tasks most of this latency is waiting for a free slot;
* launch (claimed -> process spawned and recorded), run (spawned -> exit seen by the
  engine) and finalize (exit seen -> committed, judged, next stage enqueued) per job,
  to show where the time goes.

Usage::

    .venv/bin/python bench/pipeline_throughput.py --tasks 20
    .venv/bin/python bench/pipeline_throughput.py --tasks 20 --database postgres
    .venv/bin/python bench/pipeline_throughput.py --database-url postgresql+psycopg://...
    .venv/bin/python bench/pipeline_throughput.py --json

``--database postgres`` creates a fresh database ``orch_bench_<random>`` on the server of
``--pg-admin-url`` and drops it at the end; ``--database-url`` uses the given database
as it is and leaves it in place.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import os
import platform
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa

from orchestrator.engine.core import ENGINE_TICK_S, Engine
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import load_settings
from orchestrator.store import Job, Store, Task
from orchestrator.workspace.git import GIT_ENV

DEFAULT_TASKS: Final = 20
DEFAULT_TIMEOUT_S: Final = 600.0
DEFAULT_PG_ADMIN_URL: Final = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
JOB_STAGES_RUN: Final = ("analysis", "architecture", "development", "testing")
MAX_RUNNING_JOBS: Final = 4
# Rounds of the baseline spawn loop before and after the engine phase; the median round
# counts, so a burst of load from elsewhere during one short round does not decide.
BASELINE_ROUNDS_EACH_SIDE: Final = 3

BENCH_CONFIG: Final = """\
# Written by bench/pipeline_throughput.py: no human gate, no merge, a no-op agent.
data_dir = ".orch"
retry_backoff_s = 0
max_running_jobs = {max_jobs}
max_running_jobs_per_repo = {max_jobs}
skip = ["brd-approval", "deploy-staging", "deploy"]
{database_line}
[agents.noop]
command = ["true"]

[stages.analysis]
agent = "noop"
gates = []

[stages.architecture]
agent = "noop"
gates = []

[stages.development]
agent = "noop"
gates = []

# agent set explicitly, so the deterministic test runner is not used.
[stages.testing]
agent = "noop"
gates = []
"""


class BenchError(Exception):
    """The benchmark could not produce valid figures; the message says why."""


@dataclass(frozen=True)
class Percentiles:
    """p50 / p99 / max of a sample, in seconds."""

    p50: float
    p99: float
    max: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        if not values:
            return cls(0.0, 0.0, 0.0, 0)
        if len(values) == 1:
            return cls(values[0], values[0], values[0], 1)
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cls(cuts[49], cuts[98], max(values), len(values))


@dataclass
class Results:
    """Everything one run measured, as printed by ``--json``."""

    command: str
    database: str
    machine: dict[str, Any]
    tasks: int
    jobs_finished: int
    setup_s: float
    wall_s: float
    jobs_per_s: float
    baseline_spawns: int
    baseline_rounds_s: list[float]
    baseline_median_s: float
    baseline_spawns_per_s: float
    ratio_pipeline_to_baseline: float
    overhead_factor_per_job: float
    dispatch_latency_s: Percentiles
    dispatch_latency_unclamped_s: Percentiles
    dispatch_latency_slot_free_s: Percentiles
    cpu_per_job_s: float
    cpu_per_spawn_s: float
    cpu_ratio: float
    launch_s: Percentiles
    run_s: Percentiles
    finalize_s: Percentiles
    notes: list[str] = field(default_factory=list)


# --- setup ------------------------------------------------------------------------------
def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        env={**os.environ, **GIT_ENV},
    )


def create_repository(path: Path) -> Path:
    """A real git repository on ``main`` with one commit."""
    path.mkdir(parents=True)
    _git(path, "init", "--quiet", "-b", "main")
    (path / "README.md").write_text("# bench\n", encoding="utf-8")
    _git(path, "add", "README.md")
    _git(path, "commit", "--quiet", "-m", "initial commit")
    return path


def write_config(root: Path, database_url: str | None) -> Path:
    database_line = f"database_url = {json.dumps(database_url)}\n" if database_url else ""
    path = root / "orch.toml"
    path.write_text(
        BENCH_CONFIG.format(max_jobs=MAX_RUNNING_JOBS, database_line=database_line),
        encoding="utf-8",
    )
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
        first = str(exc.orig).strip().splitlines()[0]
        raise BenchError(
            f"cannot create a database on {sa.make_url(admin_url).render_as_string()}: "
            f"{first}; start PostgreSQL or pass --pg-admin-url"
        ) from None
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --- measurement ------------------------------------------------------------------------
def cpu_s() -> float:
    """CPU seconds used so far by this process and its waited-for descendants (the
    launchers, the agents under them, git)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def bare_spawns(count: int, cpu: list[float] | None = None) -> float:
    """Seconds taken by ``count`` sequential ``subprocess.run(["true"])``; the CPU
    seconds they used are appended to ``cpu``."""
    cpu_started = cpu_s()
    started = time.perf_counter()
    for _ in range(count):
        subprocess.run(["true"], check=True)
    elapsed = time.perf_counter() - started
    if cpu is not None:
        cpu.append(cpu_s() - cpu_started)
    return elapsed


def slot_latencies(jobs: Sequence[Job], engine_started_at: float, slots: int) -> list[float]:
    """Per job, from the moment it could have started (queued, due, the engine running,
    and one of the ``slots`` free) to its claim: the dispatch delay the engine adds,
    without the wait for a slot that ``max_running_jobs`` imposes on a backlog.

    A slot is taken at a job's ``started_at`` and given back at its ``finished_at``
    (finalizing jobs count as active, as in the dispatch); each start takes the slot
    that has been free longest."""
    moments: list[tuple[float, int, Job]] = []
    for job in jobs:
        assert job.started_at is not None
        assert job.finished_at is not None
        moments.append((job.finished_at, 0, job))  # at one instant: a release first
        moments.append((job.started_at, 1, job))
    free = [engine_started_at] * slots
    latencies: list[float] = []
    for _moment, kind, job in sorted(moments, key=lambda item: (item[0], item[1])):
        if kind == 0:
            heapq.heappush(free, job.finished_at or 0.0)
            continue
        slot_free = heapq.heappop(free) if free else engine_started_at
        eligible = max(job.enqueued_at, job.not_before, engine_started_at, slot_free)
        latencies.append(max(0.0, (job.started_at or 0.0) - eligible))
    return latencies


def job_figures(
    store: Store, tasks: Sequence[Task], engine_started_at: float
) -> tuple[list[Job], dict[str, list[float]]]:
    """The finished jobs, and per-job latency / launch / run / finalize samples (seconds).

    A job's timeline: ``jobs.started_at`` (claimed) -> ``agent_runs.started_at`` (process
    spawned and recorded) -> ``agent_runs.exit_recorded_at`` (the engine saw the exit)
    -> ``jobs.finished_at`` (committed, judged, next stage enqueued).
    """
    finished: list[Job] = []
    samples: dict[str, list[float]] = {
        "latency": [],
        "unclamped": [],
        "launch": [],
        "run": [],
        "finalize": [],
    }
    for task in tasks:
        runs = {run.job_id: run for run in store.task_runs(task.id)}
        for job in store.task_jobs(task.id):
            if job.started_at is None or job.finished_at is None:
                continue
            finished.append(job)
            eligible = max(job.enqueued_at, job.not_before)
            samples["unclamped"].append(job.started_at - eligible)
            samples["latency"].append(job.started_at - max(eligible, engine_started_at))
            run = runs.get(job.id)
            if run is not None and run.exit_recorded_at is not None:
                samples["launch"].append(run.started_at - job.started_at)
                samples["run"].append(run.exit_recorded_at - run.started_at)
                samples["finalize"].append(job.finished_at - run.exit_recorded_at)
    return finished, samples


def machine(store: Store) -> dict[str, Any]:
    git_version = subprocess.run(
        ["git", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    with store.engine.connect() as conn:
        if store.dialect == "postgresql":
            server = str(conn.execute(sa.text("SHOW server_version")).scalar())
            database = f"PostgreSQL {server}"
        else:
            database = f"SQLite {sqlite3.sqlite_version}"
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": git_version,
        "database": database,
    }


def run_benchmark(
    root: Path, tasks: int, database_url: str | None, label: str, timeout_s: float
) -> Results:
    """Set up, drive the engine until idle, measure; raise BenchError unless all done."""
    config_path = write_config(root, database_url)
    settings = load_settings(config_path)
    repo = create_repository(root / "bench-repo")
    store = Store.open(database_url or settings.effective_database_url)
    engine: Engine | None = None
    try:
        service = TaskService(store, settings)
        setup_started = time.perf_counter()
        created = [
            service.create_task(
                repo_path=repo,
                title=f"benchmark task {number}",
                work_item=f"BENCH-{number}",
                actor="bench",
            )
            for number in range(1, tasks + 1)
        ]
        setup_s = time.perf_counter() - setup_started
        spawn_count = tasks * len(JOB_STAGES_RUN)
        baseline_cpu: list[float] = []
        rounds = [bare_spawns(spawn_count, baseline_cpu) for _ in range(BASELINE_ROUNDS_EACH_SIDE)]

        engine = Engine(store, settings)
        deadline = time.monotonic() + timeout_s
        timed_out = False

        def finished() -> bool:
            nonlocal timed_out
            if engine is not None and engine.idle():
                return True
            timed_out = time.monotonic() > deadline
            return timed_out

        engine_started_at = time.time()
        cpu_started = cpu_s()
        wall_started = time.perf_counter()
        engine.run(threading.Event(), until=finished)
        wall_s = time.perf_counter() - wall_started
        engine_cpu_s = cpu_s() - cpu_started
        rounds += [bare_spawns(spawn_count, baseline_cpu) for _ in range(BASELINE_ROUNDS_EACH_SIDE)]

        final = [store.get_task(task.id) for task in created]
        not_done = [task for task in final if task.stage != "done"]
        if timed_out or not_done:
            shown = ", ".join(
                f"{task.work_item} in {task.stage}"
                + (f" (failed: {task.failed_reason})" if task.failed else "")
                for task in not_done[:5]
            )
            why = f"timed out after {timeout_s:.0f}s; " if timed_out else ""
            raise BenchError(
                f"{why}{len(not_done)} of {tasks} tasks did not end 'done': {shown}"
                + (" …" if len(not_done) > 5 else "")
            )
        jobs, samples = job_figures(store, final, engine_started_at)
        if len(jobs) != spawn_count:
            raise BenchError(
                f"expected {spawn_count} finished stage-jobs ({tasks} tasks x "
                f"{len(JOB_STAGES_RUN)} stages), found {len(jobs)}: a retry or a lost race"
            )
        jobs_per_s = len(jobs) / wall_s
        baseline_s = statistics.median(rounds)
        spawns_per_s = spawn_count / baseline_s
        ratio = jobs_per_s / spawns_per_s
        cpu_per_job = engine_cpu_s / len(jobs)
        cpu_per_spawn = statistics.median(baseline_cpu) / spawn_count
        return Results(
            command=shlex.join(sys.orig_argv),
            database=label,
            machine=machine(store),
            tasks=tasks,
            jobs_finished=len(jobs),
            setup_s=setup_s,
            wall_s=wall_s,
            jobs_per_s=jobs_per_s,
            baseline_spawns=spawn_count,
            baseline_rounds_s=rounds,
            baseline_median_s=baseline_s,
            baseline_spawns_per_s=spawns_per_s,
            ratio_pipeline_to_baseline=ratio,
            overhead_factor_per_job=1 / ratio,
            dispatch_latency_s=Percentiles.of(samples["latency"]),
            dispatch_latency_unclamped_s=Percentiles.of(samples["unclamped"]),
            dispatch_latency_slot_free_s=Percentiles.of(
                slot_latencies(jobs, engine_started_at, MAX_RUNNING_JOBS)
            ),
            cpu_per_job_s=cpu_per_job,
            cpu_per_spawn_s=cpu_per_spawn,
            cpu_ratio=cpu_per_spawn / cpu_per_job,
            launch_s=Percentiles.of(samples["launch"]),
            run_s=Percentiles.of(samples["run"]),
            finalize_s=Percentiles.of(samples["finalize"]),
            notes=[
                f"engine tick interval ENGINE_TICK_S = {ENGINE_TICK_S} s",
                f"max_running_jobs = max_running_jobs_per_repo = {MAX_RUNNING_JOBS}",
                f"baseline = median of {2 * BASELINE_ROUNDS_EACH_SIDE} rounds of the spawn "
                f"loop, {BASELINE_ROUNDS_EACH_SIDE} before and {BASELINE_ROUNDS_EACH_SIDE} "
                "after the engine phase",
            ],
        )
    finally:
        if engine is not None:
            engine.shutdown(kill=True)
        store.close()


# --- output -----------------------------------------------------------------------------
def _ms(value: float) -> str:
    return f"{value * 1000:8.1f} ms"


def print_table(results: Results) -> None:
    m = results.machine
    rows: list[tuple[str, str]] = [
        ("database", f"{results.database} ({m['database']})"),
        ("machine", f"{m['cpus_usable']} CPUs, Python {m['python']}, {m['git']}"),
        ("tasks / stage-jobs", f"{results.tasks} / {results.jobs_finished}"),
        ("setup (create tasks)", f"{results.setup_s:8.3f} s"),
        ("engine wall time", f"{results.wall_s:8.3f} s"),
        ("pipeline stage-jobs/s", f"{results.jobs_per_s:8.2f}"),
        (
            "bare spawns/s",
            f"{results.baseline_spawns_per_s:8.1f}  ({results.baseline_spawns} spawns per "
            f"round; rounds {min(results.baseline_rounds_s):.3f}-"
            f"{max(results.baseline_rounds_s):.3f} s, median {results.baseline_median_s:.3f} s)",
        ),
        ("ratio pipeline ÷ bare", f"{results.ratio_pipeline_to_baseline:8.4f}"),
        ("overhead factor / job", f"{results.overhead_factor_per_job:8.1f} x a bare spawn"),
        (
            "CPU per stage-job",
            f"{results.cpu_per_job_s * 1000:8.2f} ms  (a bare spawn "
            f"{results.cpu_per_spawn_s * 1000:.2f} ms; ratio {results.cpu_ratio:.4f}, "
            f"{1 / results.cpu_ratio:.1f} x)",
        ),
    ]
    for name, sample in (
        ("dispatch latency", results.dispatch_latency_s),
        ("  (from enqueued_at)", results.dispatch_latency_unclamped_s),
        ("  (once a slot is free)", results.dispatch_latency_slot_free_s),
        ("job launch", results.launch_s),
        ("job run", results.run_s),
        ("job finalize", results.finalize_s),
    ):
        rows.append(
            (
                name,
                f"p50 {_ms(sample.p50)}   p99 {_ms(sample.p99)}   max {_ms(sample.max)}",
            )
        )
    width = max(len(name) for name, _ in rows)
    print(f"command: {results.command}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    for note in results.notes:
        print(f"  note: {note}")


# --- entry point ------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Stage-jobs per second of the engine, as a ratio to bare process spawns."
    )
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS, help="tasks to run (20)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--database",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="sqlite: a file in the temp dir; postgres: a fresh database, dropped afterwards",
    )
    target.add_argument(
        "--database-url",
        help="run against this database as it is (not created, not dropped)",
    )
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("ORCH_TEST_PG_URL") or DEFAULT_PG_ADMIN_URL,
        help="server database that --database postgres creates from "
        "(ORCH_TEST_PG_URL, default %(default)s)",
    )
    parser.add_argument(
        "--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="give up after (600)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.tasks < 1:
        parser.error("--tasks must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    root = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    try:
        if args.database_url:
            url = args.database_url
            label = sa.make_url(url).get_backend_name()
            results = run_benchmark(root, args.tasks, url, label, args.timeout_s)
        elif args.database == "postgres":
            with fresh_postgres_database(args.pg_admin_url) as url:
                results = run_benchmark(root, args.tasks, url, "postgres", args.timeout_s)
        else:
            results = run_benchmark(root, args.tasks, None, "sqlite", args.timeout_s)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(asdict(results), indent=2))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
