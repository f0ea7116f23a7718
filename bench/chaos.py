"""Chaos: tasks run through the whole pipeline while ``orch serve`` is SIGKILLed again and again.

Theory of operation
-------------------
The claim under test (issue 3): an orchestrator process may die at any instant — inside
a job's launch, a finalization, a merge, a deploy — and after a restart every task still
ends ``done`` with every side effect performed exactly once, no lease left held and no
job left running.

Setup, in a temporary directory:

* one real git repository on ``main`` with a few commits, a ``tests/`` directory (so the
  scripted agent's default recipe adds a passing test per task) and a ``pyproject.toml``
  that puts the repository root on pytest's path;
* an ``orch.toml``: no human gate (``skip = ["brd-approval"]``), the built-in
  ``scripted`` agent for analysis, architecture, development and testing, the default
  runners for ``deploy-staging`` (skipped: no staging command) and ``deploy`` (the
  preflight), ``retry_backoff_s = 0``, four concurrent jobs, a short
  ``reaper_finalize_grace_s``, a free local port, and for the repository a
  ``deploy_command`` that sleeps a random time (mostly under a second, so kills land
  inside deploys; about one in three 3-6 s, so a deploy outlives a kill and the next
  server's start, and that server must wait for it), printing as it goes, then appends
  ``<work item> <commit>`` to ``deploys.log``, and a ``deploy_check_command`` that
  prints the last deployed commit;
* N tasks ``CHAOS-1`` .. ``CHAOS-N`` made with ``orch task create``.

Then the chaos loop: start ``orch serve`` in its own session, wait until it says it
listens, sleep a random 0.2-2.5 s (or, one time in five, kill it 0-1.5 s after its
start, listening or not: restart recovery runs before it listens), ``SIGKILL`` it
(only it: the agents, launchers and deploy commands it started run in their own
sessions and survive, which is the point — the next server adopts them), and again,
until the pipeline has settled — so kills land in every phase of the run, merges and
deploys included — or ``--max-kills`` (default 4 x ``--kills``) kills happened. A last
server then runs until every task is done (or ``--timeout-s``), and is stopped with
SIGTERM.

With ``--instances N`` (PostgreSQL only) N servers run at once on the one database, each
with its own port, data dir and instance name, as a fleet would (issue 12). Every few
moments one of them is SIGKILLed and started again at once, the one that leads the
maintenance (it holds the advisory lock, read from ``pg_locks``) every third time; the
others keep working meanwhile, take the dead one's jobs over and, when it led, elect a
new leader. At the end the instances finish undisturbed and each gets SIGTERM. On top
of the checks below, the leader must have been killed at least once.

Verified at the end (each failure is listed; exit code 1 when there is any):

* every task is ``done`` and not failed, and entered ``done`` exactly once;
* ``main`` has exactly one merge commit per task (``Merge orch/<ID>: ...``);
* ``deploys.log`` has exactly one line per task;
* the effect journal has, per task, exactly one ``done`` row for ``merge`` and one for
  ``deploy`` that is not ``reconciled`` (a reconciled row is an effect found done in the
  world, not a second run), and no ``intent`` left open;
* no ``transition_lease`` row has an owner; no job is queued, deferred, running or
  finalizing; no process is left running in the chaos directory;
* the last server exited 0 on SIGTERM, and at least ``--kills`` kills were performed.

Usage::

    .venv/bin/python bench/chaos.py                        # 50 tasks, 30 kills, SQLite
    .venv/bin/python bench/chaos.py --database postgres    # on a fresh PostgreSQL database
    .venv/bin/python bench/chaos.py --tasks 6 --kills 8 --seed 1 --json
    .venv/bin/python bench/chaos.py --database postgres --instances 3   # a fleet of three

``--database postgres`` creates ``orch_chaos_<random>`` on the server of
``$ORCH_TEST_PG_URL`` (default below) and drops it at the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa

from orchestrator.store.schema import effects, events, instances, jobs, tasks, transition_lease
from orchestrator.workspace.git import GIT_ENV

DEFAULT_TASKS: Final = 50
DEFAULT_KILLS: Final = 30
DEFAULT_TIMEOUT_S: Final = 3600.0  # the whole run; a loaded machine needs it (docs/reliability.md)
DEFAULT_PG_URL: Final = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REPO_NAME: Final = "chaosrepo"
WORK_ITEM_PREFIX: Final = "CHAOS"
MAX_RUNNING_JOBS: Final = 4
REAPER_FINALIZE_GRACE_S: Final = 2
# Most kills come this random delay after the server listens ...
KILL_DELAY_S: Final = (0.2, 2.5)
# ... the others this long after it started, whether it listens yet or not (restart
# recovery runs before it listens).
EARLY_KILL_SHARE: Final = 0.2
EARLY_KILL_S: Final = (0.0, 1.5)
# Kills stop after --kills times this (the last server then finishes undisturbed).
MAX_KILLS_FACTOR: Final = 4
# With --instances: every this many kills, the victim is the leader.
LEADER_KILL_EVERY: Final = 3
# The deploy command sleeps a random time before it records the deploy: mostly short,
# but one deploy in LONG_DEPLOY_SHARE outlives a kill and the next server's start.
DEPLOY_SLEEP_S: Final = (0.0, 0.6)
LONG_DEPLOY_SHARE: Final = 0.3
LONG_DEPLOY_SLEEP_S: Final = (3.0, 6.0)
# How long a server may take to say it listens before it is killed anyway.
LISTEN_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 60.0
POLL_S: Final = 0.5
CREATE_PARALLEL: Final = 4
PENDING_JOB_STATUSES: Final = ("queued", "deferred", "running", "finalizing")
LISTENING: Final = "orch serve: listening on"
MERGE_SUBJECT: Final = re.compile(r"^Merge orch/(?P<work_item>[^:\s]+): ")
# Events worth counting: they show which recovery paths the run went through.
COUNTED_EVENTS: Final = (
    "job.adopted",
    "job.killed",
    "job.retry",
    "job.lost_race",
    "lease.reclaimed",
    "lease.force_released",
    "effect.uncertain",
    "transition.deferred",
    "transition.lost",
    "reaper.tier2",
    "reaper.tier3",
    "reconciler.enqueued",
    "reconciler.advance",
    "reconciler.decide",
    "task.rollback",
    "task.failed",
)

CONFIG: Final = """\
# Written by bench/chaos.py.
data_dir = ".orch"
instance_name = {instance}
database_url = {database_url}
retry_backoff_s = 0
max_running_jobs = {max_jobs}
max_running_jobs_per_repo = {max_jobs}
reaper_finalize_grace_s = {grace}
host = "127.0.0.1"
port = {port}
skip = ["brd-approval"]

[stages.analysis]
agent = "scripted"
[stages.architecture]
agent = "scripted"
[stages.development]
agent = "scripted"
# Chosen explicitly, so the deterministic test runner is not used.
[stages.testing]
agent = "scripted"

[repos.{repo}]
deploy_command = {deploy}
deploy_check_command = {check}
"""

# It prints as it goes, as real deploys do: a deploy outliving its server must not die
# on a closed pipe.
DEPLOY_SCRIPT: Final = """\
import os, random, sys, time
print("deploying", os.environ["ORCH_DEPLOY_COMMIT"], flush=True)
long = random.random() < {long_share}
time.sleep(random.uniform(*({long_sleep} if long else {short_sleep})))
print("still deploying", flush=True)
with open(sys.argv[1], "a", encoding="utf-8") as log:
    log.write(f"{{os.environ['ORCH_WORK_ITEM']}} {{os.environ['ORCH_DEPLOY_COMMIT']}}\\n")
print("deployed", flush=True)
"""

CHECK_SCRIPT: Final = """\
import sys
try:
    lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
except FileNotFoundError:
    lines = []
print(lines[-1].split()[-1] if lines else "")
"""

REPO_FILES: Final = (
    ("README.md", "# chaos\n\nA repository the chaos run delivers tasks into.\n", "readme"),
    (
        "pyproject.toml",
        '[project]\nname = "chaosrepo"\nversion = "0"\n\n'
        '[tool.pytest.ini_options]\npythonpath = ["."]\n',
        "pyproject",
    ),
    ("tests/test_smoke.py", "def test_smoke() -> None:\n    assert True\n", "a smoke test"),
    ("chaosrepo.py", '"""Nothing here yet."""\n', "the package"),
)


class ChaosError(Exception):
    """The run could not be set up or driven; the message says why."""


@dataclass
class Kill:
    """One SIGKILL: when it came and what was in flight."""

    boot: int
    uptime_s: float
    after_listening: bool
    open_intents: int = 0
    running_jobs: int = 0
    leader: bool = False  # with --instances: the killed one led the maintenance


@dataclass
class Report:
    """What one run did and found, as printed by ``--json``."""

    database: str
    tasks: int
    kills_requested: int
    seed: int
    kills: int = 0
    kills_after_listening: int = 0
    kills_inside_effects: int = 0
    kills_with_running_jobs: int = 0
    instances: int = 1
    kills_of_leader: int = 0
    leaders_seen: int = 0
    boots: int = 0
    create_s: float = 0.0
    chaos_s: float = 0.0
    final_s: float = 0.0
    total_s: float = 0.0
    tasks_done: int = 0
    events: dict[str, int] = field(default_factory=dict)
    reconciled_effects: int = 0
    completed_by_reconciliation: int = 0
    delivered_by_another_deploy: int = 0
    interrupted_effects: int = 0
    violations: list[str] = field(default_factory=list)
    directory: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations


# --- setup ------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    """The environment of every child: none of the caller's ORCH_* settings leak in."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ORCH_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    )
    return done.stdout


def create_repository(path: Path) -> Path:
    """A real git repository on ``main``, one commit per file."""
    path.mkdir(parents=True)
    _git(path, "init", "--quiet", "-b", "main")
    for relative, text, what in REPO_FILES:
        target = path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        _git(path, "add", relative)
        _git(path, "commit", "--quiet", "-m", f"Add {what}")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(root: Path, database_url: str, port: int, instance: int | None = None) -> Path:
    """The ``orch.toml`` of one instance: in ``root`` for the only one, else in
    ``root/instance-<n>`` with a data dir (worktrees, logs) of its own."""
    deploy_script = root / "deploy.py"
    deploy_script.write_text(
        DEPLOY_SCRIPT.format(
            long_share=LONG_DEPLOY_SHARE,
            long_sleep=LONG_DEPLOY_SLEEP_S,
            short_sleep=DEPLOY_SLEEP_S,
        ),
        "utf-8",
    )
    check_script = root / "deploy_check.py"
    check_script.write_text(CHECK_SCRIPT, encoding="utf-8")
    deploys = str(root / "deploys.log")
    home = root if instance is None else root / f"instance-{instance}"
    home.mkdir(exist_ok=True)
    path = home / "orch.toml"
    path.write_text(
        CONFIG.format(
            instance=json.dumps("" if instance is None else f"chaos-{instance}"),
            database_url=json.dumps(database_url),
            max_jobs=MAX_RUNNING_JOBS,
            grace=REAPER_FINALIZE_GRACE_S,
            port=port,
            repo=REPO_NAME,
            deploy=json.dumps([sys.executable, str(deploy_script), deploys]),
            check=json.dumps([sys.executable, str(check_script), deploys]),
        ),
        encoding="utf-8",
    )
    return path


def pg_admin_url() -> sa.URL:
    url = sa.make_url(os.environ.get("ORCH_TEST_PG_URL") or DEFAULT_PG_URL)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create ``orch_chaos_<random>`` on the test server; drop it afterwards."""
    admin_url = pg_admin_url()
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    name = f"orch_chaos_{secrets.token_hex(5)}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        first = str(exc.orig).strip().splitlines()[0]
        raise ChaosError(
            f"cannot create a database on {admin_url.render_as_string()}: {first}; "
            "start PostgreSQL or set ORCH_TEST_PG_URL"
        ) from None
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def orch(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "--config", str(config), *args]


def create_tasks(config: Path, repo: Path, count: int) -> list[str]:
    """``orch task create`` for CHAOS-1..N, a few at a time; returns the work items."""
    work_items = [f"{WORK_ITEM_PREFIX}-{number}" for number in range(1, count + 1)]

    def create(work_item: str) -> None:
        title = f"chaos task {work_item.rsplit('-', 1)[1]}"
        command = orch(config, "task", "create", "--repo", str(repo), "--title", title)
        done = subprocess.run(
            [*command, "--work-item", work_item],
            cwd=config.parent,
            env=_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if done.returncode != 0:
            raise ChaosError(f"orch task create {work_item} failed: {done.stderr.strip()}")

    # The first one alone: it creates (and migrates) the database.
    create(work_items[0])
    with ThreadPoolExecutor(CREATE_PARALLEL) as pool:
        list(pool.map(create, work_items[1:]))
    return work_items


# --- the server ---------------------------------------------------------------------------
@dataclass
class Server:
    """One ``orch serve`` process, in its own session, its output in a file."""

    process: subprocess.Popen[bytes]
    log_path: Path
    started: float

    @classmethod
    def start(cls, config: Path, log_dir: Path, boot: int) -> Server:
        log_path = log_dir / f"serve-{boot:03d}.log"
        with log_path.open("wb") as sink:
            process = subprocess.Popen(
                orch(config, "serve"),
                cwd=config.parent,
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(process, log_path, time.monotonic())

    def listening(self) -> bool:
        return LISTENING in self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_listening(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.listening():
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def kill(self) -> None:
        """SIGKILL the server process only: what it started lives in other sessions."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        """SIGTERM, then wait; SIGKILL if it does not stop in time (returns -9 then)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            return -signal.SIGKILL

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


# --- the run ------------------------------------------------------------------------------
def _count(conn: sa.Connection, query: sa.Select[Any]) -> int:
    return int(conn.execute(query).scalar_one())


def in_flight(db: sa.Engine) -> tuple[int, int]:
    """Open effect intents and running jobs, right now."""
    with db.connect() as conn:
        intents = _count(
            conn,
            sa.select(sa.func.count()).select_from(effects).where(effects.c.status == "intent"),
        )
        running = _count(
            conn,
            sa.select(sa.func.count())
            .select_from(jobs)
            .where(jobs.c.status.in_(("running", "finalizing"))),
        )
    return intents, running


def all_settled(db: sa.Engine) -> bool:
    """Every task done (or failed, which will not move by itself) and no job pending."""
    with db.connect() as conn:
        moving = _count(
            conn,
            sa.select(sa.func.count())
            .select_from(tasks)
            .where(tasks.c.stage != "done", tasks.c.failed_reason.is_(None)),
        )
        pending = _count(
            conn,
            sa.select(sa.func.count())
            .select_from(jobs)
            .where(jobs.c.status.in_(PENDING_JOB_STATUSES)),
        )
    return moving == 0 and pending == 0


def chaos_loop(
    config: Path,
    log_dir: Path,
    db: sa.Engine,
    kills: int,
    max_kills: int,
    rng: random.Random,
    report: Report,
) -> list[Kill]:
    """Start, wait a random moment, SIGKILL; again until the pipeline settled.

    Kills go on for the whole run, not only its first ``kills``, so that they land in
    every phase (early stages, finalizations, merges, deploys) — at least ``kills`` of
    them (fewer only if the pipeline settled first) and at most ``max_kills``, after
    which the last server finishes undisturbed. Some kills come while the server is
    still starting (restart recovery runs before it listens).
    """
    done: list[Kill] = []
    while len(done) < max_kills:
        report.boots += 1
        server = Server.start(config, log_dir, report.boots)
        if rng.random() < EARLY_KILL_SHARE:
            time.sleep(rng.uniform(*EARLY_KILL_S))
        else:
            server.wait_listening(LISTEN_TIMEOUT_S)
            time.sleep(rng.uniform(*KILL_DELAY_S))
        if server.process.poll() is not None:
            raise ChaosError(
                f"orch serve (boot {report.boots}) exited {server.process.returncode} "
                f"on its own:\n{server.tail()}"
            )
        listening = server.listening()
        uptime = time.monotonic() - server.started
        server.kill()
        intents, running = in_flight(db)
        done.append(Kill(report.boots, round(uptime, 3), listening, intents, running))
        if all_settled(db):
            break  # nothing left to interrupt; the last run finds everything done
    return done


# --- several instances (PostgreSQL) --------------------------------------------------------
LEADER_QUERY: Final = sa.text(
    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()"
    " AND a.application_name LIKE 'orch-leader:%' LIMIT 1"
)


def leader_pid(db: sa.Engine) -> int | None:
    """The pid of the ``orch serve`` that leads the maintenance now (None: nobody)."""
    with db.connect() as conn:
        name = conn.execute(LEADER_QUERY).scalar()
        if name is None:
            return None
        boot_id = str(name).removeprefix("orch-leader:")
        pid = conn.execute(sa.select(instances.c.pid).where(instances.c.boot_id == boot_id))
        found = pid.scalar()
    return None if found is None else int(found)


def _start(configs: Sequence[Path], index: int, log_dir: Path, report: Report) -> Server:
    report.boots += 1
    return Server.start(configs[index], log_dir, report.boots)


def chaos_loop_many(
    configs: Sequence[Path],
    log_dir: Path,
    db: sa.Engine,
    max_kills: int,
    rng: random.Random,
    report: Report,
) -> tuple[list[Kill], list[Server]]:
    """Several instances run at once; every few moments one of them, the leader every
    ``LEADER_KILL_EVERY``-th time, is SIGKILLed and started again at once, until the
    pipeline settled or ``max_kills``. The survivors keep working meanwhile: they take
    the dead one's running jobs over (the leader's rescuer), its crossings (the lease
    expires) and, when it led, the maintenance (another instance wins the election)."""
    servers = [_start(configs, index, log_dir, report) for index in range(len(configs))]
    for server in servers:
        server.wait_listening(LISTEN_TIMEOUT_S)
    done: list[Kill] = []
    leaders: set[int] = set()
    while len(done) < max_kills:
        time.sleep(rng.uniform(*KILL_DELAY_S))
        for server in servers:
            if server.process.poll() is not None:
                raise ChaosError(
                    f"an orch serve exited {server.process.returncode} on its own:\n{server.tail()}"
                )
        leader = leader_pid(db)
        if leader is not None:
            leaders.add(leader)
        pids = [server.process.pid for server in servers]
        if leader in pids and len(done) % LEADER_KILL_EVERY == 0:
            victim = pids.index(leader)
        else:
            victim = rng.randrange(len(servers))
        server = servers[victim]
        listening = server.listening()
        uptime = time.monotonic() - server.started
        server.kill()
        intents, running = in_flight(db)
        killed = Kill(report.boots, round(uptime, 3), listening, intents, running)
        killed.leader = server.process.pid == leader
        done.append(killed)
        servers[victim] = _start(configs, victim, log_dir, report)
        if all_settled(db):
            break
    report.leaders_seen = len(leaders)
    return done, servers


def run_many_to_completion(
    servers: Sequence[Server], db: sa.Engine, timeout_s: float, report: Report
) -> None:
    """The instances left running finish undisturbed; then each gets SIGTERM."""
    deadline = time.monotonic() + timeout_s
    try:
        for server in servers:
            server.wait_listening(LISTEN_TIMEOUT_S)
        while time.monotonic() < deadline:
            exited = [server for server in servers if server.process.poll() is not None]
            if exited:
                report.violations.append(
                    f"an orch serve exited {exited[0].process.returncode} on its own:\n"
                    + exited[0].tail()
                )
                return
            if all_settled(db):
                break
            time.sleep(POLL_S)
        else:
            report.violations.append(f"not settled after {timeout_s:.0f}s (see --timeout-s)")
    finally:
        for server in servers:
            code = server.stop()
            if code != 0:
                report.violations.append(
                    f"an orch serve exited {code} on SIGTERM:\n{server.tail()}"
                )


def run_to_completion(
    config: Path, log_dir: Path, db: sa.Engine, timeout_s: float, report: Report
) -> int:
    """The last server: run until everything settled, then SIGTERM; its exit code."""
    report.boots += 1
    server = Server.start(config, log_dir, report.boots)
    deadline = time.monotonic() + timeout_s
    try:
        # Its SIGTERM handling starts with the server: a signal before that is a kill.
        server.wait_listening(LISTEN_TIMEOUT_S)
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                report.violations.append(
                    f"the last orch serve exited {server.process.returncode} on its own:\n"
                    + server.tail()
                )
                return server.process.returncode
            if all_settled(db):
                break
            time.sleep(POLL_S)
        else:
            report.violations.append(f"not settled after {timeout_s:.0f}s (see --timeout-s)")
    finally:
        code = server.stop()
    if code != 0:
        report.violations.append(f"the last orch serve exited {code} on SIGTERM:\n{server.tail()}")
    return code


# --- verification -------------------------------------------------------------------------
@dataclass(frozen=True)
class Facts:
    """Everything the verification reads, read once after the last server stopped."""

    work_items: dict[int, str]  # task id -> work item
    task_rows: Sequence[Any]
    effect_rows: Sequence[Any]
    event_rows: Sequence[Any]
    held_leases: Sequence[Any]
    pending_jobs: Sequence[Any]

    @classmethod
    def read(cls, db: sa.Engine) -> Facts:
        with db.connect() as conn:
            task_rows = conn.execute(
                sa.select(tasks.c.id, tasks.c.work_item, tasks.c.stage, tasks.c.failed_reason)
            ).all()
            effect_rows = conn.execute(
                sa.select(effects.c.task_id, effects.c.effect, effects.c.status, effects.c.result)
            ).all()
            event_rows = conn.execute(
                sa.select(events.c.task_id, events.c.kind, events.c.to_stage)
            ).all()
            held = conn.execute(
                sa.select(transition_lease.c.task_id, transition_lease.c.actor).where(
                    transition_lease.c.owner_boot_id.is_not(None)
                )
            ).all()
            pending = conn.execute(
                sa.select(jobs.c.id, jobs.c.task_id, jobs.c.stage, jobs.c.status).where(
                    jobs.c.status.in_(PENDING_JOB_STATUSES)
                )
            ).all()
        work_items = {int(row.id): str(row.work_item) for row in task_rows}
        return cls(work_items, task_rows, effect_rows, event_rows, held, pending)

    def name(self, task_id: int | None) -> str:
        return self.work_items.get(int(task_id or 0), f"task {task_id}")


def merge_commits(repo: Path) -> dict[str, list[str]]:
    """Work item -> the merge commits on ``main`` whose subject names it."""
    found: dict[str, list[str]] = {}
    for line in _git(repo, "log", "--merges", "--format=%H %s", "main").splitlines():
        sha, _, subject = line.partition(" ")
        matched = MERGE_SUBJECT.match(subject)
        if matched:
            found.setdefault(matched["work_item"], []).append(sha)
    return found


def deploy_log(path: Path) -> list[tuple[str, str]]:
    """``(work item, commit)`` per line of deploys.log, in order."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [(line.split()[0], line.split()[-1]) for line in lines if line.strip()]


def contains(repo: Path, commit: str, ancestor: str) -> bool:
    """Whether ``commit`` contains ``ancestor`` (is it, or descends from it)."""
    done = subprocess.run(
        ["git", "merge-base", "--is-ancestor", ancestor, commit],
        cwd=repo,
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def stray_processes(root: Path) -> list[str]:
    """Processes (other than ours) whose working directory is inside the chaos dir."""
    strays = []
    resolved = str(root.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == resolved or cwd.startswith(resolved + os.sep):
            strays.append(f"pid {entry.name} in {cwd}: {cmdline.strip()[:200]}")
    return strays


def verify_tasks(facts: Facts, work_items: Sequence[str], report: Report) -> None:
    """Every task done, not failed, and entered ``done`` exactly once."""
    if sorted(facts.work_items.values()) != sorted(work_items):
        report.violations.append(
            f"expected tasks {sorted(work_items)}, found {sorted(facts.work_items.values())}"
        )
    for row in facts.task_rows:
        if row.stage != "done" or row.failed_reason is not None:
            failed = f" (failed: {row.failed_reason})" if row.failed_reason else ""
            report.violations.append(f"{row.work_item} ended in {row.stage}{failed}")
    report.tasks_done = sum(
        1 for row in facts.task_rows if row.stage == "done" and row.failed_reason is None
    )
    entered_done = Counter(
        facts.name(row.task_id)
        for row in facts.event_rows
        if row.kind == "stage.changed" and row.to_stage == "done"
    )
    for work_item in work_items:
        if entered_done[work_item] != 1:
            report.violations.append(f"{work_item} entered done {entered_done[work_item]} times")
    kinds = Counter(str(row.kind) for row in facts.event_rows)
    report.events = {kind: kinds[kind] for kind in COUNTED_EVENTS if kinds[kind]}


def journal_counts(facts: Facts, report: Report) -> tuple[Counter[Any], Counter[Any]]:
    """Per ``(work item, effect)``: done rows of a run, and rows found done in the world."""
    performed: Counter[tuple[str, str]] = Counter()
    reconciled: Counter[tuple[str, str]] = Counter()
    for row in facts.effect_rows:
        key = (facts.name(row.task_id), str(row.effect))
        if row.status == "intent":
            report.violations.append(f"{key[0]}: {key[1]} intent left open in the journal")
        elif row.status == "done" and (row.result or {}).get("reconciled"):
            reconciled[key] += 1
        elif row.status == "done":
            performed[key] += 1
        elif row.status == "interrupted":
            report.interrupted_effects += 1
    report.reconciled_effects = sum(reconciled.values())
    return performed, reconciled


def verify_effects(
    facts: Facts, root: Path, repo: Path, work_items: Sequence[str], report: Report
) -> None:
    """Merges and deploys, in the world (git, deploys.log) and in the effect journal.

    Merge: exactly one merge commit per task, journaled done once — or found done in the
    world when a kill lost the completion of the run that made it.

    Deploy: ``deploy_check_command`` prints the commit deployed, whoever deployed it, so
    a deploy of ``main`` delivers every task merged before it. A task whose transition
    was interrupted between its merge and its deploy may find its change already
    deployed by a later task and rightly skip deploying it again. So: no task deploys
    twice; the deployed commit never goes backwards (an older deploy finishing after a
    newer one); the last deploy contains every task's merge; and a task without a
    deploy of its own has its deploy journaled as found done in the world.
    """
    problems = report.violations
    performed, reconciled = journal_counts(facts, report)
    merges = merge_commits(repo)
    deploys = deploy_log(root / "deploys.log")
    deployed_by = Counter(work_item for work_item, _ in deploys)
    for work_item in work_items:
        if len(merges.get(work_item, [])) != 1:
            problems.append(f"{work_item} merged into main {len(merges.get(work_item, []))} times")
        if deployed_by[work_item] > 1:
            problems.append(f"{work_item} deployed {deployed_by[work_item]} times (deploys.log)")
        for effect in ("merge", "deploy"):
            key = (work_item, effect)
            if performed[key] > 1 or performed[key] + reconciled[key] == 0:
                problems.append(
                    f"{work_item}: {effect} journaled done {performed[key]} times "
                    f"(+{reconciled[key]} found done in the world)"
                )
            elif performed[key] == 0:
                report.completed_by_reconciliation += 1
        if performed[(work_item, "deploy")] == 1 and deployed_by[work_item] == 0:
            problems.append(f"{work_item}: deploy journaled done but not in deploys.log")
        if deployed_by[work_item] == 0:
            report.delivered_by_another_deploy += 1
    for (before_item, before), (after_item, after) in itertools.pairwise(deploys):
        if not contains(repo, after, before):
            problems.append(
                f"deploys went backwards: {after_item} deployed {after[:10]} after "
                f"{before_item} deployed {before[:10]}, which it does not contain"
            )
    last = deploys[-1][1] if deploys else None
    for work_item, commits in merges.items():
        if last is None or not all(contains(repo, last, commit) for commit in commits):
            problems.append(f"{work_item}: its merge is not in the last deployed commit")


def verify_leftovers(facts: Facts, root: Path, report: Report) -> None:
    """No lease held, no job pending, no process running, and enough kills."""
    for row in facts.held_leases:
        report.violations.append(
            f"{facts.name(row.task_id)}: transition lease still held ({row.actor})"
        )
    for row in facts.pending_jobs:
        report.violations.append(
            f"{facts.name(row.task_id)}: job {row.id} ({row.stage}) left {row.status}"
        )
    report.violations.extend(f"process left running: {line}" for line in stray_processes(root))
    if report.kills < report.kills_requested:
        report.violations.append(
            f"only {report.kills} kills performed of {report.kills_requested} requested "
            "(the pipeline finished first: use more tasks)"
        )


def verify(
    root: Path, repo: Path, db: sa.Engine, work_items: Sequence[str], report: Report
) -> None:
    facts = Facts.read(db)
    verify_tasks(facts, work_items, report)
    verify_effects(facts, root, repo, work_items, report)
    verify_leftovers(facts, root, report)


# --- main ---------------------------------------------------------------------------------
def run_chaos(args: argparse.Namespace, root: Path, database_url: str, report: Report) -> None:
    started = time.monotonic()
    rng = random.Random(args.seed)
    repo = create_repository(root / REPO_NAME)
    report.instances = args.instances
    if args.instances == 1:
        configs = [write_config(root, database_url, free_port())]
    else:
        configs = [
            write_config(root, database_url, free_port(), index) for index in range(args.instances)
        ]
    log_dir = root / "serve-logs"
    log_dir.mkdir()
    work_items = create_tasks(configs[0], repo, args.tasks)
    report.create_s = round(time.monotonic() - started, 1)
    db = sa.create_engine(database_url, poolclass=sa.NullPool)
    try:
        chaos_started = time.monotonic()
        servers: list[Server] = []
        if args.instances == 1:
            kills = chaos_loop(configs[0], log_dir, db, args.kills, args.max_kills, rng, report)
        else:
            kills, servers = chaos_loop_many(configs, log_dir, db, args.max_kills, rng, report)
        report.chaos_s = round(time.monotonic() - chaos_started, 1)
        report.kills = len(kills)
        report.kills_after_listening = sum(kill.after_listening for kill in kills)
        report.kills_inside_effects = sum(kill.open_intents > 0 for kill in kills)
        report.kills_with_running_jobs = sum(kill.running_jobs > 0 for kill in kills)
        report.kills_of_leader = sum(kill.leader for kill in kills)
        final_started = time.monotonic()
        remaining = max(args.timeout_s - (time.monotonic() - started), 30.0)
        if args.instances == 1:
            run_to_completion(configs[0], log_dir, db, remaining, report)
        else:
            run_many_to_completion(servers, db, remaining, report)
            if report.kills and not report.kills_of_leader:
                report.violations.append("the leader was never killed: no failover exercised")
        report.final_s = round(time.monotonic() - final_started, 1)
        verify(root, repo, db, work_items, report)
    finally:
        db.dispose()
    report.total_s = round(time.monotonic() - started, 1)


def print_report(report: Report) -> None:
    print(f"chaos on {report.database}: {report.tasks} tasks, seed {report.seed}")
    if report.instances > 1:
        print(
            f"  instances: {report.instances} at once; {report.kills_of_leader} kills of the "
            f"leader; {report.leaders_seen} leading processes seen"
        )
    print(
        f"  kills: {report.kills} ({report.kills_after_listening} after the server listened, "
        f"{report.kills_with_running_jobs} with jobs running, "
        f"{report.kills_inside_effects} inside a merge/deploy effect); {report.boots} boots"
    )
    print(
        f"  time: create {report.create_s}s, chaos {report.chaos_s}s, "
        f"last run {report.final_s}s, total {report.total_s}s"
    )
    print(
        f"  tasks done: {report.tasks_done}/{report.tasks}; effects found done in the world: "
        f"{report.reconciled_effects} (completing a killed run: "
        f"{report.completed_by_reconciliation}); interrupted intents: "
        f"{report.interrupted_effects}; tasks delivered by a later task's deploy: "
        f"{report.delivered_by_another_deploy}"
    )
    if report.events:
        shown = ", ".join(f"{kind} {count}" for kind, count in sorted(report.events.items()))
        print(f"  recovery events: {shown}")
    if report.ok:
        print("OK: every task done, every effect exactly once, no lease held, no job left")
        return
    print(f"FAILED: {len(report.violations)} violation(s); directory kept: {report.directory}")
    for violation in report.violations:
        print(f"  - {violation}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS, help="tasks to deliver")
    parser.add_argument(
        "--kills", type=int, default=DEFAULT_KILLS, help="at least this many SIGKILLs of serve"
    )
    parser.add_argument(
        "--max-kills",
        type=int,
        default=None,
        help=f"kills stop here even if the pipeline has not settled (default {MAX_KILLS_FACTOR}"
        " x --kills)",
    )
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="orch serve instances at once on one PostgreSQL database (each its own port "
        "and data dir); the killed one is started again at once",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill timing")
    parser.add_argument(
        "--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="for the whole run"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the directory even if OK")
    args = parser.parse_args(argv)
    if args.max_kills is None:
        args.max_kills = MAX_KILLS_FACTOR * args.kills
    if args.tasks < 1 or args.kills < 0 or args.max_kills < args.kills:
        parser.error("--tasks must be >= 1, --kills >= 0 and --max-kills >= --kills")
    if args.instances < 1:
        parser.error("--instances must be >= 1")
    if args.instances > 1 and args.database != "postgres":
        parser.error("--instances above 1 needs --database postgres: SQLite is single-instance")
    if args.seed is None:
        args.seed = secrets.randbelow(2**31)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report(args.database, args.tasks, args.kills, args.seed)
    root = Path(tempfile.mkdtemp(prefix="orch-chaos-"))
    report.directory = str(root)
    try:
        if args.database == "postgres":
            with fresh_postgres_database() as url:
                report.database = f"PostgreSQL ({sa.make_url(url).database})"
                run_chaos(args, root, url, report)
        else:
            report.database = "SQLite"
            run_chaos(args, root, f"sqlite:///{root / 'orch.db'}", report)
    except ChaosError as exc:
        report.violations.append(f"the run could not complete: {exc}")
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    else:
        print_report(report)
    if report.ok and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
