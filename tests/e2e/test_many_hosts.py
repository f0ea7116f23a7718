"""Two hosts that share no disk, one PostgreSQL, one bare repository as the remote
(issue 12, decision 0031).

A "host" here is a mount and UTS namespace: each sees the same path (``<tmp>/srv``)
bound to a directory of its own, and its own host name. Both run the real ``orch
serve`` with the same settings file text, so tasks record the same paths on both, but a
file one host writes there the other never sees. What crosses between them is what
crosses between real hosts: the database and the git remote.

The task is created on host A, whose analysis job commits there; A dies (every process
in its namespace SIGKILLed) while its architecture job runs. Host B, which never saw the
task, takes the job over once A has been silent for ``host_takeover_s``, fetches the
task branch with A's analysis on it, and finishes the task: the merge lands on the
remote once, and the merged branch is deleted there (``delete_branch_on_done``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from tests.e2e.test_many_instances import free_port, run_git, wait_for

from orchestrator.store import Store

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

WAIT_S: Final = 90.0
# analysis -> architecture -> development -> deploy -> done, agents as below.
SKIPPED: Final = ["brd-approval", "testing", "deploy-staging"]
# Writes each stage's artifact; on host A the architecture job hangs until A dies.
AGENT: Final = """\
set -e
stage=$1; item=$2; host=$(hostname)
echo "$item $stage $host" >> "$SHARED/started"
docs="docs/work-items/$item"
case "$stage" in
  analysis) mkdir -p "$docs"
    printf '# Requirements\n\nbrd by %s: greet the user by name, politely, once.\n' "$host" \
      > "$docs/01-brd.md" ;;
  architecture)
    if [ "$host" = host-a ]; then sleep 600; fi
    mkdir -p "$docs/06-adr"; echo "adr by $host" > "$docs/06-adr/0001-design.md" ;;
  development) echo "code by $host" > code.txt ;;
esac
echo "$item $stage $host" >> "$SHARED/ran"
"""


@dataclass
class Host:
    """A directory seen at ``srv`` by the processes of one namespace, named ``name``."""

    name: str
    root: Path
    srv: Path

    def command(self, *argv: str) -> list[str]:
        script = 'mount --bind "$1" "$2" && hostname "$3" && shift 3 && exec "$@"'
        return [
            "unshare", "--mount", "--uts", "--propagation", "private",
            "sh", "-c", script, "host", str(self.root), str(self.srv), self.name, *argv,
        ]  # fmt: skip

    def orch(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = self.command(
            sys.executable, "-m", "orchestrator", "--config", str(self.config), *args
        )
        return subprocess.run(argv, capture_output=True, text=True, env=_env(), check=False)

    @property
    def config(self) -> Path:
        return self.srv / "orch.toml"

    def serve(self, port: int) -> subprocess.Popen[bytes]:
        argv = self.command(
            sys.executable, "-m", "orchestrator", "--config", str(self.config),
            "serve", "--port", str(port),
        )  # fmt: skip
        with (self.root / "serve.log").open("ab") as log:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=_env())

    def die(self, serve: subprocess.Popen[bytes]) -> int:
        """SIGKILL every process of this host (its namespace): server, launchers, agents."""
        namespace = os.readlink(f"/proc/{serve.pid}/ns/mnt")
        killed = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns" / "mnt") == namespace:
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed += 1
            except (OSError, ProcessLookupError):
                continue
        serve.wait()
        return killed


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")} | {
        "PYTHONDONTWRITEBYTECODE": "1"
    }


def _settings(srv: Path, db_url: str, shared: Path) -> str:
    values = {
        "database_url": db_url,
        "data_dir": str(srv / "data"),
        "retry_backoff_s": 0,
        "public_read": True,
        "host": "127.0.0.1",
        "skip": SKIPPED,
        "host_takeover_s": 10,
        "delete_branch_on_done": True,
    }
    body = "\n".join(f"{key} = {json.dumps(value)}" for key, value in values.items())
    agent = ["env", f"SHARED={shared}", "sh", str(srv / "agent.sh"), "{stage}", "{work_item}"]
    return (
        body
        + f"\n\n[agents.sh]\ncommand = {json.dumps(agent)}\n"
        + "".join(
            f'\n[stages.{stage}]\nagent = "sh"\n'
            for stage in ("analysis", "architecture", "development")
        )
        + f'\n[repos.repo]\npath = {json.dumps(str(srv / "repo"))}\nremote = "origin"\n'
    )


def _remote(tmp_path: Path) -> Path:
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "README.md").write_text("demo\n")
    run_git(seed, "init", "--quiet", "-b", "main")
    run_git(seed, "add", "--all")
    run_git(seed, "commit", "--quiet", "-m", "initial")
    remote = tmp_path / "remote.git"
    run_git(tmp_path, "clone", "--quiet", "--bare", str(seed), str(remote))
    return remote


@pytest.fixture
def hosts(tmp_path: Path, pg_database: str) -> tuple[Host, Host, Path, Path]:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("this test makes two hosts with unshare --mount: run it as root on Linux")
    remote, shared, srv = _remote(tmp_path), tmp_path / "shared", tmp_path / "srv"
    shared.mkdir()
    srv.mkdir()
    made = []
    for name in ("host-a", "host-b"):
        root = tmp_path / name
        root.mkdir()
        # Its own clone, at the path every host uses.
        run_git(tmp_path, "clone", "--quiet", str(remote), str(root / "repo"))
        (root / "agent.sh").write_text(AGENT)
        (root / "orch.toml").write_text(_settings(srv, pg_database, shared))
        made.append(Host(name, root, srv))
    return made[0], made[1], remote, shared


def test_a_task_whose_host_died_is_finished_by_another_host_through_the_remote(
    hosts: tuple[Host, Host, Path, Path], pg_database: str
) -> None:
    """Seen failing without the branch travelling (no sync before a job): host B's
    architecture job ran on a branch it did not have."""
    host_a, host_b, remote, shared = hosts
    serve_a = host_a.serve(free_port())
    serve_b: subprocess.Popen[bytes] | None = None
    store = Store.open(pg_database)
    try:
        created = host_a.orch("task", "create", "--repo", str(host_a.srv / "repo"),
                              "--title", "Greet", "--work-item", "T-1")  # fmt: skip
        assert created.returncode == 0, created.stdout + created.stderr
        # The branch is on the remote from the start.
        assert run_git(remote, "branch", "--list", "orch/T-1").strip()
        wait_for(
            lambda: "T-1 architecture host-a" in _lines(shared / "started"),
            "host A running the architecture job",
            WAIT_S,
        )
        serve_b = host_b.serve(free_port())
        assert host_a.die(serve_a) >= 2  # the server and the hanging agent at least

        [task] = store.list_tasks(limit=1)
        wait_for(lambda: store.get_task(task.id).stage == "done", "host B finishing T-1", WAIT_S)
        # delete_branch_on_done: the merged branch goes from the remote too.
        wait_for(
            lambda: not run_git(remote, "branch", "--list", "orch/T-1").strip(),
            "orch/T-1 deleted on the remote",
            WAIT_S,
        )
        events = store.task_events(task.id)
    finally:
        if serve_a.poll() is None:
            serve_a.kill()
        serve_a.wait()
        if serve_b is not None:
            serve_b.send_signal(signal.SIGTERM)
            try:
                serve_b.wait(timeout=30)
            except subprocess.TimeoutExpired:
                serve_b.kill()
        store.close()

    assert _lines(shared / "ran") == [
        "T-1 analysis host-a",
        "T-1 architecture host-b",
        "T-1 development host-b",
    ]
    # Everything reached the remote's main once: A's analysis, B's design and code.
    assert "brd by host-a" in run_git(remote, "show", "main:docs/work-items/T-1/01-brd.md")
    assert run_git(remote, "show", "main:docs/work-items/T-1/06-adr/0001-design.md") == (
        "adr by host-b\n"
    )
    assert run_git(remote, "show", "main:code.txt") == "code by host-b\n"
    assert len(run_git(remote, "log", "--merges", "--format=%H", "main").split()) == 1
    # Host A's clone never saw B's work: they share no disk.
    assert not (host_a.root / "repo" / "code.txt").exists()
    reasons = {event.kind: event.reason or "" for event in events}
    assert "fetched" in reasons["branch.synced"]
    assert any("lost with its host host-a" in (event.reason or "") for event in events)
