"""Several ``orch serve`` instances on one database (issue 12, decision 0027).

Every instance is the real ``orch serve`` as its own process, stopped with SIGKILL
where the test is about a crash (nothing of it runs its shutdown then):

* SQLite is single-instance: a second ``orch serve`` on the same file is refused with
  one line and exit code 1, writing nothing; after the first dies by SIGKILL (its job
  still running under the launcher) the next one starts and adopts the job.
* PostgreSQL elects one leader for the maintenance that must run once: with two
  instances exactly one leads and the other's reaper, reconciler, janitor and inbox are
  on ``standby``; SIGKILL the leader and the other takes the maintenance over (its
  reconciler repairs a task nobody else would).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import load_settings
from orchestrator.store import Store, Task
from orchestrator.store.schema import jobs

pytestmark = pytest.mark.e2e

ORCH: Final = [sys.executable, "-m", "orchestrator"]
WAIT_S: Final = 60.0
POLL_S: Final = 0.05
# created -> development -> done: one job per task.
ONLY_DEVELOPMENT: Final = [
    "analysis",
    "brd-approval",
    "architecture",
    "testing",
    "deploy-staging",
    "deploy",
]
# The agent says it started, waits (bounded) for the test's release file, then commits.
AGENT: Final = """\
set -e
echo "$ORCH_WORK_ITEM" >> "$OUT/started"
i=0
while [ ! -f "$OUT/release" ]; do
  i=$((i + 1)); if [ "$i" -gt 1200 ]; then break; fi
  sleep 0.05
done
echo "$ORCH_WORK_ITEM" >> code.txt
echo "$ORCH_WORK_ITEM" >> "$OUT/ran"
"""


def run_git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@localhost",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@localhost",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "README.md").write_text("demo\n")
    run_git(path, "init", "--quiet", "-b", "main")
    run_git(path, "add", "--all")
    run_git(path, "commit", "--quiet", "-m", "initial")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not true after {timeout_s}s")
        time.sleep(POLL_S)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class Instance:
    """One ``orch serve`` process and its port."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def status(self) -> dict[str, Any]:
        answer = httpx.get(f"http://127.0.0.1:{self.port}/status", timeout=5.0)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"orch serve exited {self.process.returncode}:\n{self.log.read_text()}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2.0).is_success
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


@dataclass
class Cluster:
    """``orch serve`` instances over one database, each with its own data dir."""

    tmp_path: Path
    db_url: str
    repo: Path
    out: Path
    instances: list[Instance] = field(default_factory=list)
    config: Path = Path()

    def configure(self, **values: Any) -> None:
        script = self.tmp_path / "agent.sh"
        script.write_text(f"OUT={self.out}\n{AGENT}")
        settings = {
            "database_url": self.db_url,
            "data_dir": str(self.tmp_path / "data"),
            "retry_backoff_s": 0,
            "public_read": True,
            "host": "127.0.0.1",
            "skip": ONLY_DEVELOPMENT,
            **values,
        }
        body = "\n".join(f"{key} = {json.dumps(value)}" for key, value in settings.items())
        body += (
            f"\n\n[agents.sh]\ncommand = {json.dumps(['sh', str(script)])}\n"
            '\n[stages.development]\nagent = "sh"\n'
        )
        self.config = self.tmp_path / "orch.toml"
        self.config.write_text(body)

    def serve(self, name: str) -> Instance:
        """Start ``orch serve`` on a free port (it may be refused: see ``refused``)."""
        port = free_port()
        log = self.tmp_path / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        with log.open("ab") as sink:
            process = subprocess.Popen(
                [*ORCH, "--config", str(self.config), "serve", "--port", str(port)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
            )
        instance = Instance(process, port, log)
        self.instances.append(instance)
        return instance

    def start(self, name: str) -> Instance:
        instance = self.serve(name)
        wait_for(instance.healthy, f"{name} answering /health")
        return instance

    def create(self, work_item: str) -> Task:
        settings = load_settings(self.config)
        store = Store.open(settings.effective_database_url)
        try:
            service = TaskService(store, settings)
            return service.create_task(repo_path=self.repo, title="Greet", work_item=work_item)
        finally:
            store.close()

    def store(self) -> Store:
        return Store.open(load_settings(self.config).effective_database_url)


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    url: str = getattr(request, "param", "sqlite")
    if url == "sqlite":
        url = f"sqlite:///{tmp_path}/shared/orch.db"
    else:
        url = str(request.getfixturevalue("pg_database"))
    out = tmp_path / "out"
    out.mkdir()
    made = Cluster(tmp_path, url, make_repo(tmp_path / "repo"), out)
    try:
        yield made
    finally:
        (out / "release").touch()  # let any agent still waiting end
        for instance in made.instances:
            if instance.process.poll() is None:
                instance.process.kill()
                instance.process.wait()


# --- SQLite: one instance ----------------------------------------------------------------


def test_a_second_serve_on_one_sqlite_file_is_refused_with_one_line(cluster: Cluster) -> None:
    """Seen failing without the lock: the second server started beside the first and
    was still running a minute later."""
    cluster.configure()
    first = cluster.start("first")

    second = cluster.serve("second")
    code = second.process.wait(timeout=WAIT_S)

    assert code == 1
    said = [line for line in second.log.read_text().splitlines() if line.strip()]
    assert len(said) == 1, said
    assert "single-instance" in said[0]
    assert f"pid {first.process.pid}" in said[0]
    assert "PostgreSQL" in said[0]
    # The refused one wrote nothing: only the first is a registered instance.
    status = first.status()
    assert [row["pid"] for row in status["instances"]] == [first.process.pid]
    assert first.healthy()


def test_a_killed_serve_leaves_no_lock_and_its_job_is_adopted(cluster: Cluster) -> None:
    """The lock goes with its process however it dies, and the job that outlived it (in
    its own session under the launcher) does not hold it. Seen failing with a pid file
    in place of the flock (a lock a crash does not drop): the restarted server was
    refused."""
    cluster.configure()
    task = cluster.create("T-1")
    first = cluster.start("first")
    wait_for(lambda: lines(cluster.out / "started") == ["T-1"], "the agent started")
    store = cluster.store()
    try:
        wait_for(lambda: store.task_jobs(task.id)[0].pid is not None, "the job's pid recorded")
        [job] = store.task_jobs(task.id)
        first.kill()
        assert job.pid is not None
        assert alive(job.pid)  # the job outlived its server

        second = cluster.start("second")
        (cluster.out / "release").touch()
        wait_for(lambda: store.get_task(task.id).stage == "done", "the task done")
    finally:
        store.close()
    assert lines(cluster.out / "ran") == ["T-1"]  # adopted, not run again
    assert second.healthy()


# --- PostgreSQL: one leader --------------------------------------------------------------
LED_LOOPS: Final = ("reaper", "reconciler", "worktree-janitor", "rescuer", "inbox")


def leads(instance: Instance) -> bool:
    leader = instance.status()["leader"]
    assert leader["election"] == "advisory-lock"
    return bool(leader["is_leader"])


def loop_states(instance: Instance) -> dict[str, str]:
    return {loop["name"]: loop["state"] for loop in instance.status()["loops"]}


@pytest.mark.postgres
@pytest.mark.parametrize("cluster", ["postgresql"], indirect=True)
def test_the_maintenance_fails_over_when_the_leader_is_killed(cluster: Cluster) -> None:
    """Seen failing with the led loops not gated (every instance ran them): the second
    instance's reaper and reconciler were running, not on standby; and with the rescuer
    doing nothing: the dead leader's job was never adopted."""
    # One job at a time in the repository: the blocker's keeps the next task queued.
    cluster.configure(reaper_finalize_grace_s=0, max_running_jobs_per_repo=1)
    cluster.create("BLOCK-1")
    first = cluster.start("first")
    wait_for(lambda: leads(first), "the first instance leading")
    wait_for(lambda: lines(cluster.out / "started") == ["BLOCK-1"], "the blocker running")
    second = cluster.start("second")
    wait_for(lambda: loop_states(second)["engine"] == "running", "the second's engine")

    assert not leads(second)
    states = loop_states(second)
    assert {name: states[name] for name in LED_LOOPS} == dict.fromkeys(LED_LOOPS, "standby")
    assert (states["leader"], states["heartbeat"]) == ("running", "running")
    assert {loop_states(first)[name] for name in LED_LOOPS} == {"running"}
    # Either instance says which one leads.
    for asked in (first, second):
        said = {row["pid"]: row["leader"] for row in asked.status()["instances"]}
        assert said == {first.process.pid: True, second.process.pid: False}

    first.kill()
    wait_for(lambda: leads(second), "the second instance taking over")
    states = loop_states(second)
    assert {name: states[name] for name in LED_LOOPS} == dict.fromkeys(LED_LOOPS, "running")
    assert second.status()["leader"]["elected_at"].endswith("Z")
    assert second.status()["leader"]["leader_boot_id"] == second.status()["boot_id"]

    store = cluster.store()
    try:
        survivor_takes_over(cluster, store, second)
    finally:
        store.close()


def survivor_takes_over(cluster: Cluster, store: Store, second: Instance) -> None:
    """The second instance, now the leader, adopts the dead leader's job and runs the
    reconciler; both tasks end done, each agent having run once."""
    # The dead leader's job (its agent still running under the launcher) is taken over
    # by the survivor's rescuer, not left to the reaper's tier 3 hours later.
    [blocker] = store.list_tasks(limit=1)
    boot_id = second.status()["boot_id"]
    wait_for(
        lambda: store.task_jobs(blocker.id)[0].owner_boot_id == boot_id,
        "the survivor adopting the dead leader's job",
    )
    adopted = [e for e in store.task_events(blocker.id) if e.kind == "job.adopted"]
    assert len(adopted) == 1

    # A task whose stage moved on without its job being enqueued: only the reconciler
    # repairs that, and the only one left to run it is the second instance.
    task = cluster.create("T-2")
    with store.transaction() as tx:
        tx.conn.execute(
            jobs.update().where(jobs.c.task_id == task.id).values(stage="analysis", status="done")
        )

    def repaired() -> bool:
        return any(e.kind == "reconciler.enqueued" for e in store.task_events(task.id))

    wait_for(repaired, "the second instance's reconciler repairing the task")
    assert [j.stage for j in store.task_jobs(task.id)] == ["analysis", "development"]
    (cluster.out / "release").touch()
    wait_for(lambda: store.get_task(task.id).stage == "done", "T-2 done")
    assert store.get_task(blocker.id).stage == "done"
    assert sorted(lines(cluster.out / "ran")) == ["BLOCK-1", "T-2"]  # each ran once
