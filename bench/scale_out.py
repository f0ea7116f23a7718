"""Scale-out: the same workload on 1, 2 and 4 ``orch serve`` instances on one PostgreSQL.

Theory of operation
-------------------
Issue 12 asks that instances share the work: with the agents, not the engine, as the
bottleneck, four instances should deliver at least three times what one does. This
script runs one workload per instance count, each on a fresh PostgreSQL database (created
on the server of ``$ORCH_TEST_PG_URL``, dropped after) and a fresh git repository:

* ``--tasks`` tasks (default 48) that skip every stage but ``development``, whose agent
  is a command that sleeps ``--agent-s`` seconds (default 5) and writes a file (the
  engine commits it), so the task ends ``done`` after one job;
* N instances (``orch serve``, each in its own process with its own port, data dir,
  worktrees and instance name; one host, so they share the repository's directory),
  each allowed ``--jobs`` running jobs (``max_running_jobs``, a host's capacity; the
  per-repository limit is set out of the way);
* with ``--hosts``, each instance is a host that shares no disk with the others
  (decision 0031): a mount and UTS namespace of its own in which the same path holds
  its own clone of a bare repository (the repository's ``remote``) and its own data
  dir. Task branches then travel through that remote: pushed when created and after
  each job, fetched before each job, merged there. This needs root (``unshare``);
* once every instance answers ``/health``, the tasks are created in one burst through
  another connection, as a client of the fleet would, and the clock runs until the last
  task is ``done``.

Figures, from the ``jobs`` table:

* **throughput**: tasks per second from the first job enqueued to the last job
  finished, and its **ratio** to one instance's in the same run (the goal: 4 instances
  at least 3x);
* **dispatch latency**: ``started_at - max(enqueued_at, not_before)`` per job, p50 and
  p99. With more tasks than slots most of it is waiting for a free slot, so it falls
  as instances (slots) are added;
* **spread**: how many jobs each instance ran (``owner_boot_id``), to show the work
  was shared.

Usage::

    .venv/bin/python bench/scale_out.py                       # 1, 2 and 4 instances
    .venv/bin/python bench/scale_out.py --instances 1 3 --tasks 30 --agent-s 2 --json
    .venv/bin/python bench/scale_out.py --hosts               # hosts that share no disk
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

import httpx
import sqlalchemy as sa

from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import load_settings
from orchestrator.store import Store
from orchestrator.workspace.git import GIT_ENV

DEFAULT_PG_URL: Final = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_INSTANCES: Final = (1, 2, 4)
DEFAULT_TASKS: Final = 48
DEFAULT_AGENT_S: Final = 5.0
DEFAULT_JOBS: Final = 4
START_TIMEOUT_S: Final = 120.0
STOP_TIMEOUT_S: Final = 60.0
POLL_S: Final = 0.2
GOAL_INSTANCES: Final = 4
GOAL_RATIO: Final = 3.0
SKIPPED: Final = [
    "analysis",
    "brd-approval",
    "architecture",
    "testing",
    "deploy-staging",
    "deploy",
]


class BenchError(Exception):
    """The benchmark could not run (the message says why)."""


@dataclass
class Result:
    instances: int
    tasks: int
    seconds: float
    tasks_per_s: float
    dispatch_p50_s: float
    dispatch_p99_s: float
    jobs_per_instance: list[int] = field(default_factory=list)
    ratio: float = 1.0


def pg_admin_url() -> sa.URL:
    url = sa.make_url(os.environ.get("ORCH_TEST_PG_URL") or DEFAULT_PG_URL)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


@contextmanager
def fresh_database() -> Iterator[str]:
    admin = sa.create_engine(pg_admin_url(), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    name = f"orch_scale_{secrets.token_hex(5)}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        raise BenchError(f"PostgreSQL is not reachable at {pg_admin_url()}: {exc.orig}") from None
    try:
        yield pg_admin_url().set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_repository(path: Path) -> Path:
    env = {**os.environ, **GIT_ENV}
    path.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True, env=env)
    (path / "README.md").write_text("scale-out\n")
    subprocess.run(["git", "add", "README.md"], cwd=path, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=path, check=True, env=env)
    return path


def write_config(
    home: Path, url: str, index: int, agent_s: float, jobs: int, srv: Path | None = None
) -> Path:
    """``home``'s settings; with ``srv`` (hosts), written for the paths every host sees
    there, with the repository at ``srv/repo`` and its remote ``origin``."""
    home.mkdir(exist_ok=True)
    agent = ["sh", "-c", f'sleep {agent_s:g}; echo "$ORCH_WORK_ITEM" >> work.txt']
    config = home / "orch.toml"
    seen = srv or home
    repos = (
        f'\n[repos.repo]\npath = {json.dumps(str(srv / "repo"))}\nremote = "origin"\n'
        if srv is not None
        else ""
    )
    config.write_text(
        f"database_url = {json.dumps(url)}\n"
        f"data_dir = {json.dumps(str(seen / 'data'))}\n"
        f'instance_name = "scale-{index}"\n'
        f'host = "127.0.0.1"\nport = {free_port()}\n'
        f"max_running_jobs = {jobs}\n"
        "max_running_jobs_per_repo = 1000\n"
        "retry_backoff_s = 0\n"
        f"skip = {json.dumps(SKIPPED)}\n"
        f"\n[agents.sleeper]\ncommand = {json.dumps(agent)}\n"
        '\n[stages.development]\nagent = "sleeper"\n' + repos
    )
    return config


@dataclass
class Instance:
    process: subprocess.Popen[bytes]
    home: Path
    port: int

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1.0).is_success
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return (self.home / "serve.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def as_host(home: Path, srv: Path, name: str, argv: list[str]) -> list[str]:
    """``argv`` run as a host of its own: ``home`` seen at ``srv``, host name ``name``."""
    script = 'mount --bind "$1" "$2" && hostname "$3" && shift 3 && exec "$@"'
    return [
        "unshare", "--mount", "--uts", "--propagation", "private",
        "sh", "-c", script, "host", str(home), str(srv), name, *argv,
    ]  # fmt: skip


def start(config: Path, srv: Path | None = None) -> Instance:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    orch = Path(sys.executable).with_name("orch")
    home = config.parent
    argv = [str(orch), "--config", str(config), "serve"]
    if srv is not None:
        argv = as_host(
            home, srv, home.name, [str(orch), "--config", str(srv / "orch.toml"), "serve"]
        )
    with (home / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd="/",
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    port = load_settings(config).port
    return Instance(process, home, port)


def git_clone(cwd: Path, option: str, source: Path, target: Path) -> Path:
    options = [option] if option else []
    env = {**os.environ, **GIT_ENV}
    subprocess.run(
        ["git", "clone", "-q", *options, str(source), str(target)], cwd=cwd, check=True, env=env
    )
    return target


def check_on_remote(remote: Path, work_items: Sequence[str]) -> None:
    """Every task's work reached the remote: its branch there carries its agent's line."""
    for work_item in work_items:
        shown = subprocess.run(
            ["git", "show", f"refs/heads/orch/{work_item}:work.txt"],
            cwd=remote, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if work_item not in shown.stdout.split():
            raise BenchError(f"{work_item}'s work is not on the remote: {shown.stderr.strip()}")


def wait_healthy(instances: Sequence[Instance]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    for instance in instances:
        while not instance.healthy():
            if instance.process.poll() is not None:
                raise BenchError(f"orch serve exited:\n{instance.log()}")
            if time.monotonic() > deadline:
                raise BenchError(f"orch serve did not answer /health:\n{instance.log()}")
            time.sleep(POLL_S)


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def run(count: int, args: argparse.Namespace, root: Path) -> Result:
    """One workload on ``count`` instances; its figures."""
    with fresh_database() as url:
        scratch = root / f"n{count}"
        scratch.mkdir()
        repo = make_repository(scratch / "repo")
        srv = None
        if args.hosts:
            # The creator of the tasks is one more host: its clone is what `srv` holds
            # outside the namespaces, where no instance sees it.
            srv = scratch / "srv"
            remote = scratch / "remote.git"
            git_clone(scratch, "--bare", repo, remote)
            srv.mkdir()
            repo = git_clone(scratch, "", remote, srv / "repo")
        configs = []
        for index in range(count):
            home = scratch / f"instance-{index}"
            if srv is not None:
                home.mkdir()
                git_clone(scratch, "", scratch / "remote.git", home / "repo")
            configs.append(write_config(home, url, index, args.agent_s, args.jobs, srv))
        settings = load_settings(
            write_config(srv, url, count, args.agent_s, args.jobs, srv) if srv else configs[0]
        )
        store = Store.open(url)
        instances = [start(config, srv) for config in configs]
        try:
            wait_healthy(instances)
            service = TaskService(store, settings)
            for number in range(1, args.tasks + 1):
                service.create_task(repo_path=repo, title=f"Task {number}", work_item=f"S-{number}")
            deadline = time.monotonic() + args.timeout_s
            while True:
                tasks = store.list_tasks(limit=args.tasks + 1)
                if all(task.stage == "done" or task.failed for task in tasks):
                    break
                for instance in instances:
                    if instance.process.poll() is not None:
                        raise BenchError(f"an orch serve exited:\n{instance.log()}")
                if time.monotonic() > deadline:
                    raise BenchError(f"not done after {args.timeout_s:g} s (see --timeout-s)")
                time.sleep(POLL_S)
            failed = [task.work_item for task in tasks if task.failed]
            if failed:
                raise BenchError(f"tasks failed: {', '.join(failed[:5])}")
            jobs = [job for task in tasks for job in store.task_jobs(task.id)]
            if srv is not None:
                check_on_remote(scratch / "remote.git", [task.work_item for task in tasks])
        finally:
            for instance in instances:
                instance.stop()
            store.close()
    first = min(job.enqueued_at for job in jobs)
    last = max(job.finished_at or 0.0 for job in jobs)
    waits = [
        (job.started_at or 0.0) - max(job.enqueued_at, job.not_before)
        for job in jobs
        if job.started_at is not None
    ]
    spread = Counter(job.owner_boot_id for job in jobs)
    return Result(
        instances=count,
        tasks=args.tasks,
        seconds=round(last - first, 2),
        tasks_per_s=round(args.tasks / (last - first), 3),
        dispatch_p50_s=round(statistics.median(waits), 3),
        dispatch_p99_s=round(percentile(waits, 0.99), 3),
        jobs_per_instance=sorted(spread.values(), reverse=True),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, nargs="+", default=list(DEFAULT_INSTANCES))
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS, help="tasks per workload")
    parser.add_argument("--agent-s", type=float, default=DEFAULT_AGENT_S, help="agent sleep")
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="max_running_jobs each")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="per workload")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--hosts",
        action="store_true",
        help="each instance a host sharing no disk (own namespace and clone; needs root)",
    )
    args = parser.parse_args(argv)
    if args.hosts and (os.geteuid() != 0 or shutil.which("unshare") is None):
        parser.error("--hosts makes hosts with `unshare --mount`: run it as root on Linux")
    if args.tasks < 1 or args.jobs < 1 or min(args.instances) < 1 or args.agent_s < 0:
        parser.error("--tasks, --jobs and --instances must be >= 1, --agent-s >= 0")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="orch-scale-") as scratch:
        try:
            for count in args.instances:
                if not args.json:
                    print(f"{count} instance(s): {args.tasks} tasks...", file=sys.stderr)
                results.append(run(count, args, Path(scratch)))
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    base = results[0].tasks_per_s
    for result in results:
        result.ratio = round(result.tasks_per_s / base, 2)
    if args.json:
        print(json.dumps([asdict(result) for result in results], indent=2))
        return 0
    load = os.getloadavg()[0]
    print(
        f"CPython {platform.python_version()}, {os.cpu_count()} CPUs, load {load:.1f}; "
        f"{args.tasks} tasks, agent sleeps {args.agent_s:g} s, {args.jobs} jobs per instance"
        + ("; each a host sharing no disk, branches through a bare remote" if args.hosts else "")
    )
    header = ("instances", "seconds", "tasks/s", "ratio", "p50 s", "p99 s")
    print("{:>9} {:>8} {:>8} {:>6} {:>7} {:>7}  jobs".format(*header))
    for r in results:
        print(
            f"{r.instances:>9} {r.seconds:>8.1f} {r.tasks_per_s:>8.3f} {r.ratio:>6.2f} "
            f"{r.dispatch_p50_s:>7.2f} {r.dispatch_p99_s:>7.2f}  {r.jobs_per_instance}"
        )
    print(f"goal (issue 12): {GOAL_INSTANCES} instances >= {GOAL_RATIO:g}x one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
