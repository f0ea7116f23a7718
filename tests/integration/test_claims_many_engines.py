"""Several engines over one database never run the same job (issue 12, decision 0027).

TC-01's shape applied to dispatch: ``ENGINES`` engine processes (the real
:class:`~orchestrator.engine.core.Engine`, each in its own process with its own boot id)
start at the same moment over one database holding ``TASKS`` queued jobs, and all
dispatch from the same list of ready jobs, oldest first, so they contend for every one.
The claim is one compare-and-swap statement (``UPDATE jobs SET status = 'running' ...
WHERE id = :id AND status = 'queued'``): on PostgreSQL a second claimer blocks on the
row until the first commits, then finds the status changed and matches nothing (READ
COMMITTED re-evaluates the condition); on SQLite ``BEGIN IMMEDIATE`` serialises them.

Each job must then have run exactly once: one line per task in the agents' shared
record, one run and one ``job.started`` event per job, every task done. Seen failing on
PostgreSQL with the claim made a read and then an unconditional write (10 ms apart):
four work items ran two or three times. SQLite passes that mutant, rightly: its
``BEGIN IMMEDIATE`` holds the write lock from the read on.

``max_running_jobs`` is each instance's own capacity (the per-repository limit counts
every instance's jobs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Final

import pytest
from support import make_repo
from tests.integration.test_engine import wait_for

from orchestrator.engine.core import Engine
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import load_settings
from orchestrator.store import Store

ENGINES: Final = 3
TASKS: Final = 24
# Generous, never a pass criterion.
ENGINE_TIMEOUT_S: Final = 600
# created -> development -> done: one job per task.
ONLY_DEVELOPMENT: Final = [
    "analysis",
    "brd-approval",
    "architecture",
    "testing",
    "deploy-staging",
    "deploy",
]
# The agent records that it ran (O_APPEND: lines from many processes never interleave).
AGENT: Final = """\
set -e
echo "$ORCH_WORK_ITEM $ORCH_ATTEMPT" >> "$RAN"
echo "$ORCH_WORK_ITEM" >> code.txt
"""
# One engine: says it is ready, waits for the starting gun, then dispatches until no
# job is left anywhere.
ENGINE: Final = """
import os, sys, threading, time
from pathlib import Path
from orchestrator.engine.core import Engine
from orchestrator.settings import load_settings
from orchestrator.store import Store

settings = load_settings(Path(sys.argv[1]))
store = Store.open(settings.effective_database_url)
engine = Engine(store, settings)
go = Path(sys.argv[2])
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.005)
engine.run(threading.Event(), until=engine.idle)
engine.shutdown()
print(engine.boot_id)
store.close()
"""


def test_engines_over_one_database_run_each_job_exactly_once(tmp_path: Path, db_url: str) -> None:
    ran = tmp_path / "ran.txt"
    agent = tmp_path / "agent.sh"
    agent.write_text(f'RAN="{ran}"\n{AGENT}')
    config = tmp_path / "orch.toml"
    config.write_text(
        f"database_url = {json.dumps(db_url)}\n"
        f"data_dir = {json.dumps(str(tmp_path / 'data'))}\n"
        "retry_backoff_s = 0\n"
        # Each engine may run a third of the jobs at once, so every engine claims: one
        # engine's dispatch pass claims all it may in a burst of one-statement claims,
        # and on SQLite a burst holds off the others (they wait in its busy handler).
        f"max_running_jobs = {TASKS // ENGINES}\n"
        f"max_running_jobs_per_repo = {TASKS}\n"
        f"skip = {json.dumps(ONLY_DEVELOPMENT)}\n"
        f"\n[agents.sh]\ncommand = {json.dumps(['sh', str(agent)])}\n"
        '\n[stages.development]\nagent = "sh"\n'
    )
    settings = load_settings(config)
    repo = make_repo(tmp_path / "repo")
    store = Store.open(db_url)
    try:
        service = TaskService(store, settings)
        work_items = [f"R-{n}" for n in range(1, TASKS + 1)]
        for work_item in work_items:
            service.create_task(repo_path=repo, title="Race", work_item=work_item)
        go = tmp_path / "go"
        engines = [
            subprocess.Popen(
                [sys.executable, "-c", ENGINE, str(config), str(go)],
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(ENGINES)
        ]
        # The gun only once every engine waits for it: an engine still importing when
        # the others start would find every job taken (seen on a loaded machine).
        wait_for(
            lambda: (
                len(list(tmp_path.glob("ready-*"))) == ENGINES
                or any(engine.poll() is not None for engine in engines)
            ),
            "every engine ready",
            timeout_s=60.0,
        )
        go.touch()
        for engine in engines:
            _out, err = engine.communicate(timeout=ENGINE_TIMEOUT_S)
            assert engine.returncode == 0, err

        runs = Counter(line.split()[0] for line in ran.read_text().splitlines())
        twice = {item: count for item, count in runs.items() if count != 1}
        assert twice == {}, f"jobs not run exactly once: {twice}"
        assert sorted(runs) == sorted(work_items)
        owners = set()
        for task in store.list_tasks(limit=TASKS):
            assert (task.stage, task.failed_reason) == ("done", None), task.work_item
            [job] = store.task_jobs(task.id)
            assert (job.status, job.attempt) == ("done", 1)
            assert len(store.task_runs(task.id)) == 1, task.work_item
            started = [e for e in store.task_events(task.id) if e.kind == "job.started"]
            assert len(started) == 1, task.work_item
            owners.add(job.owner_boot_id)
        # The engines did share the work (the test raced at all).
        assert len(owners) >= 2, owners
    finally:
        store.close()


@pytest.fixture(autouse=True)
def _no_orch_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("ORCH_")]:
        monkeypatch.delenv(name)


def test_max_running_jobs_is_each_instances_own(tmp_path: Path, db_url: str) -> None:
    """Two engines (boot ids) over one database, ``max_running_jobs = 1``: each runs one
    job (a host's capacity), and neither starts a second. Seen failing with the limit
    counted over the database: the second engine started nothing."""
    release = tmp_path / "release"
    agent = tmp_path / "agent.sh"
    agent.write_text(
        f'i=0; while [ ! -f "{release}" ] && [ "$i" -lt 1200 ]; do i=$((i+1)); sleep 0.05; done\n'
        'echo "$ORCH_WORK_ITEM" >> code.txt\n'
    )
    config = tmp_path / "orch.toml"
    config.write_text(
        f"database_url = {json.dumps(db_url)}\n"
        f"data_dir = {json.dumps(str(tmp_path / 'data'))}\n"
        "max_running_jobs = 1\nmax_running_jobs_per_repo = 5\n"
        f"skip = {json.dumps(ONLY_DEVELOPMENT)}\n"
        f"\n[agents.sh]\ncommand = {json.dumps(['sh', str(agent)])}\n"
        '\n[stages.development]\nagent = "sh"\n'
    )
    settings = load_settings(config)
    repo = make_repo(tmp_path / "repo")
    store = Store.open(db_url)
    first, second = Engine(store, settings), Engine(store, settings)
    try:
        service = TaskService(store, settings)
        for work_item in ("C-1", "C-2", "C-3"):
            service.create_task(repo_path=repo, title="Capacity", work_item=work_item)
        first.tick()
        second.tick()
        first.tick()
        second.tick()
        assert (len(first.running_jobs()), len(second.running_jobs())) == (1, 1)
        owners = Counter(job.owner_boot_id for job, _ in store.jobs_by_status(("running",)))
        assert owners == {first.boot_id: 1, second.boot_id: 1}
    finally:
        release.touch()
        first.shutdown(kill=True)
        second.shutdown(kill=True)
        store.close()


def test_an_instance_runs_only_the_repositories_of_its_affinity(
    tmp_path: Path, db_url: str
) -> None:
    """Two engines over one database split two repositories (``instance_repos``: one by
    directory name, one by path). The first engine's repository has its job queued
    behind a longer backlog of the other's than the dispatch reads at once (50), so a
    filter applied after the read would starve it. Seen failing without the filter in
    the query: the first engine started nothing of its own and took the other's."""
    release = tmp_path / "release"
    agent = tmp_path / "agent.sh"
    agent.write_text(
        f'i=0; while [ ! -f "{release}" ] && [ "$i" -lt 1200 ]; do i=$((i+1)); sleep 0.05; done\n'
        'echo "$ORCH_WORK_ITEM" >> code.txt\n'
    )
    repos = {name: make_repo(tmp_path / name) for name in ("alpha", "beta")}
    base = (
        f"database_url = {json.dumps(db_url)}\n"
        f"data_dir = {json.dumps(str(tmp_path / 'data'))}\n"
        "max_running_jobs = 2\nmax_running_jobs_per_repo = 100\n"
        f"skip = {json.dumps(ONLY_DEVELOPMENT)}\n"
    )
    tail = (
        f"\n[agents.sh]\ncommand = {json.dumps(['sh', str(agent)])}\n"
        '\n[stages.development]\nagent = "sh"\n'
    )
    settings = {}
    for name, affinity in (("alpha", "alpha"), ("beta", str(repos["beta"].resolve()))):
        config = tmp_path / f"{name}.toml"
        config.write_text(base + f"instance_repos = {json.dumps([affinity])}\n" + tail)
        settings[name] = load_settings(config)
    store = Store.open(db_url)
    alpha, beta = Engine(store, settings["alpha"]), Engine(store, settings["beta"])
    try:
        service = TaskService(store, settings["alpha"])
        for number in range(60):
            service.create_task(repo_path=repos["beta"], title="B", work_item=f"B-{number}")
        service.create_task(repo_path=repos["alpha"], title="A", work_item="A-1")
        alpha.tick()
        beta.tick()
        ran = {
            name: sorted(
                Path(store.get_task(job.task_id).repository).name for job in engine.running_jobs()
            )
            for name, engine in (("alpha", alpha), ("beta", beta))
        }
        assert ran == {"alpha": ["alpha"], "beta": ["beta", "beta"]}
    finally:
        release.touch()
        alpha.shutdown(kill=True)
        beta.shutdown(kill=True)
        store.close()
