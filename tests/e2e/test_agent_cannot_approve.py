"""An agent cannot pass its own human gate: the real ``orch serve``, a real agent job.

The analysis stage runs a shell agent (the command adapter) that writes its BRD and,
like the agent of issue 10, leaves a detached child (``setsid``) trying to approve its
own task: through the API with no token, with a guessed one, with whatever
``ORCH_ADMIN_TOKEN`` it inherited, and through ``orch task approve`` pointed at the
server's own ``orch.toml``. The agent waits for the child's report, so the attempts
happen whatever becomes of the child when the job ends. Once the task waits at the BRD
gate the test makes the same attempts again from a new session with the agent's exact
environment (what a child that outlived its job would have). Every attempt is refused,
the task stays at the gate, and no event says it was approved; then a person's operator
token approves it, so the refusals were the access control and not a broken server.

Seen failing with the HTTP guard taken out and the CLI's job check off (today's main
has neither): the child's tokenless approve reached the service, which answered 409
(the task was still in analysis) instead of refusing it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from tests.integration.support import make_repo

pytestmark = pytest.mark.e2e

WAIT_S: Final = 120.0
POLL_S: Final = 0.2
LEGACY_ADMIN: Final = "legacy-admin-secret-of-the-server"
OPERATOR_JSON: Final = ("--role", "operator", "--json")

# The detached child: every way it can think of to approve, each outcome into a report.
CHILD: Final = """
import json, os, subprocess, sys
import httpx

url, config, task, report = sys.argv[1:5]
attempts = {}
for name, token in (
    ("no token", None),
    ("guessed token", "orch_guessed"),
    ("inherited ORCH_ADMIN_TOKEN", os.environ.get("ORCH_ADMIN_TOKEN") or "none-inherited"),
):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        answer = httpx.post(f"{url}/tasks/{task}/approve", json={}, headers=headers, timeout=30)
        attempts[name] = [answer.status_code, answer.text]
    except httpx.HTTPError as exc:
        attempts[name] = [0, str(exc)]
cli = subprocess.run(
    [sys.executable, "-m", "orchestrator", "--config", config, "task", "approve", task],
    capture_output=True, text=True, timeout=120,
)
attempts["orch task approve"] = [cli.returncode, cli.stderr.strip()]
attempts["env"] = dict(os.environ)
attempts["session"] = [os.getsid(0), os.getpid()]
with open(report + ".tmp", "w") as sink:
    json.dump(attempts, sink)
os.replace(report + ".tmp", report)
"""

# The analysis agent: the BRD, a detached child, and it waits for the child's report.
AGENT: Final = """\
set -e
mkdir -p "$ORCH_ARTIFACT_DIR"
echo 'a long enough business requirements document for this task' > "$ORCH_ARTIFACT_DIR/01-brd.md"
setsid {python} {child} {url} {config} "$ORCH_WORK_ITEM" {report} </dev/null >/dev/null 2>&1 &
i=0
while [ ! -e {report} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}


def wait_for(predicate: Any, what: str, log: Path) -> Any:
    deadline = time.monotonic() + WAIT_S
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not true after {WAIT_S}s\n{log.read_text()[-3000:]}")
        time.sleep(POLL_S)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """``orch serve`` with the shell agent on analysis; (workdir, url, operator token)."""
    repo = make_repo(tmp_path / "shop")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "orch.toml"
    report = tmp_path / "child-report.json"
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "agent.sh").write_text(
        AGENT.format(
            python=sys.executable,
            child=tmp_path / "child.py",
            url=url,
            config=config,
            report=report,
        )
    )
    config.write_text(
        'data_dir = ".orch"\nretry_backoff_s = 0\n'
        f'[agents.sneaky]\ncommand = ["sh", "{tmp_path / "agent.sh"}"]\n'
        '[stages.analysis]\nagent = "sneaky"\n'
        + "".join(f'[stages.{s}]\nagent = "scripted"\n' for s in ("architecture", "development"))
        + f'[repos.shop]\npath = "{repo}"\n'
    )
    made = subprocess.run(
        [sys.executable, "-m", "orchestrator", *("token", "create", "person"), *OPERATOR_JSON],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    token = json.loads(made.stdout)["token"]
    log = tmp_path / "serve.log"
    env = {**clean_env(), "ORCH_PORT": str(port), "ORCH_ADMIN_TOKEN": LEGACY_ADMIN}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "serve"],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def healthy() -> bool:
            if process.poll() is not None:
                pytest.fail(f"orch serve exited {process.returncode}:\n{log.read_text()}")
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, "orch serve answers /health", log)
        yield tmp_path, url, token
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def assert_all_refused(attempts: dict[str, Any]) -> None:
    for name in ("no token", "guessed token", "inherited ORCH_ADMIN_TOKEN"):
        status, text = attempts[name]
        assert status == 401, (name, text)
    code, stderr = attempts["orch task approve"]
    assert code == 1, stderr
    assert "refused: orch task approve from inside an orch agent job" in stderr
    assert "Traceback" not in stderr


def test_an_agents_detached_child_cannot_approve_its_own_task(
    server: tuple[Path, str, str],
) -> None:
    workdir, url, token = server
    person = {"Authorization": f"Bearer {token}"}
    created = httpx.post(
        f"{url}/tasks",
        json={"repo": str(workdir / "shop"), "title": "Add a cart", "work_item": "SHOP-1"},
        headers=person,
        timeout=60,
    )
    assert created.status_code == 201, created.text
    log = workdir / "serve.log"

    def task() -> dict[str, Any]:
        answer = httpx.get(f"{url}/tasks/SHOP-1", headers=person, timeout=30)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    wait_for(lambda: task()["stage"] == "brd-approval", "the task waits at the BRD gate", log)

    # What the detached child did while its agent ran.
    child = json.loads((workdir / "child-report.json").read_text())
    assert_all_refused(child)
    sid, pid = child["session"]
    assert sid == pid  # it really was in a session of its own (setsid)
    agent_env = child["env"]
    assert agent_env["ORCH_WORK_ITEM"] == "SHOP-1"
    assert "ORCH_ADMIN_TOKEN" not in agent_env
    assert LEGACY_ADMIN not in json.dumps(agent_env)
    assert token not in json.dumps(agent_env)

    # The same, now that the task waits at the gate, from a new session with the
    # agent's environment: what a child that outlived its job would get.
    again = workdir / "again.json"
    target = ("SHOP-1", str(again))
    subprocess.run(
        [sys.executable, str(workdir / "child.py"), url, str(workdir / "orch.toml"), *target],
        env=agent_env,
        cwd=workdir,
        start_new_session=True,
        check=True,
        timeout=180,
    )
    assert_all_refused(json.loads(again.read_text()))

    after = task()
    assert after["stage"] == "brd-approval"
    assert not [e for e in after["events"] if e["kind"] == "task.approved"]

    # A person with an operator token can: the refusals above were access control.
    approved = httpx.post(f"{url}/tasks/SHOP-1/approve", json={}, headers=person, timeout=60)
    assert approved.status_code == 200, approved.text
    assert approved.json()["stage"] == "architecture"
    [event] = [e for e in task()["events"] if e["kind"] == "task.approved"]
    assert event["actor"] == "token:person"
