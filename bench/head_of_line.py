"""Head-of-line blocking: does a long deploy or health window hold up other tasks?

Theory of operation
-------------------
The engine hands a task's ``deploy -> done`` crossing (merge, deploy command,
post-deploy health window) to its crossing pool and keeps dispatching and enforcing
timeouts (decision 0014). Before, the crossing ran inside the engine's tick: while one
task deployed for 20 s, another task's job waited 20 s to start, and an agent with a 5 s
timeout was killed after 20 s. Machines are noisy, so the figures are **ratios measured
in one run** against a baseline scenario in which the deploy takes no time and nothing
is watched. About 1 means the long crossing does not hold anything up; the goal is at
most 2.

Each scenario, in a temporary directory with its own SQLite store and one engine running
in a thread, as ``orch serve`` runs it:

1. task ``D-1`` is in ``deploy`` with its preflight job finished (as
   :func:`orchestrator.testing.actors.prepare_deploy_task` leaves it) by an owner that
   is still registered as alive, so restart recovery leaves it alone; task ``K-1`` (an
   agent that sleeps, with ``timeout_s = --timeout-s``) is queued;
2. the engine starts: its first tick dispatches ``K-1``, then its first maintenance
   sweep (the reaper's tier 2, ``reaper_finalize_grace_s = 0``) finalizes ``D-1``'s
   job and its crossing starts;
3. once the crossing is busy (the deploy command started; in the health scenario, the
   health URL got its first check), task ``Q-1`` (an agent that ends at once) is
   created;
4. measured from the events the engine records: the **dispatch delay** (``Q-1``'s
   ``job.enqueued`` to its ``job.started``) and the **kill time** (``K-1``'s
   ``job.started`` to its ``job.killed``; the agent dies at its SIGTERM, so this is the
   timeout plus how late it fired);
5. the deploy or the window ends, the task is done, the engine stops.

Scenarios: ``deploy`` (the deploy command takes ``--deploy-s``), ``health`` (an instant
deploy, then a health window of ``--deploy-s`` on a local server that answers 200), and
``baseline`` (an instant deploy, no health window). Each runs ``--rounds`` times; the
medians are compared.

Usage::

    .venv/bin/python bench/head_of_line.py                  # 20 s deploy and window
    .venv/bin/python bench/head_of_line.py --deploy-s 5     # quicker
    .venv/bin/python bench/head_of_line.py --rounds 3 --json
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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Final

from orchestrator.effects.leases import Owner
from orchestrator.engine.core import Engine
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import load_settings
from orchestrator.store import Store
from orchestrator.testing.actors import prepare_deploy_task
from orchestrator.testing.local_server import LocalServer
from orchestrator.workspace.git import GIT_ENV

DEFAULT_DEPLOY_S: Final = 20.0
DEFAULT_TIMEOUT_S: Final = 5.0
DEFAULT_ROUNDS: Final = 3
GOAL_RATIO: Final = 2.0
POLL_S: Final = 0.01
# Generous: a scenario that has not reached its step by then is broken, not slow.
STEP_DEADLINE_S: Final = 300.0
SCENARIOS: Final = ("deploy", "health", "baseline")

DEPLOY: Final = """\
touch "$OUT/deploy-started"
sleep {deploy_s}
echo "$ORCH_WORK_ITEM $ORCH_DEPLOY_COMMIT" >> "$OUT/deploys.log"
"""
QUICK_AGENT: Final = """\
mkdir -p "$ORCH_ARTIFACT_DIR"
echo "The business requirements: greet the user by name." > "$ORCH_ARTIFACT_DIR/01-brd.md"
"""
CONFIG: Final = """\
# Written by bench/head_of_line.py.
data_dir = ".orch"
retry_backoff_s = 0
max_attempts = 1
reaper_finalize_grace_s = 0

[agents.quick]
command = ["sh", "{quick}"]

[agents.sleeper]
command = ["sh", "-c", "exec sleep 3600"]
timeout_s = {timeout_s}

[stages.analysis]
agent = "quick"
[stages.architecture]
agent = "quick"
[stages.development]
agent = "quick"

[repos.deploy]
deploy_command = ["sh", "{deploy}"]
deploy_check_command = ["sh", "-c", "tail -n 1 {out}/deploys.log 2>/dev/null | cut -d' ' -f2"]
{health}
[repos.sleeper.stages.analysis]
agent = "sleeper"
"""


class BenchError(Exception):
    """The benchmark could not produce valid figures; the message says why."""


@dataclass
class Round:
    scenario: str
    dispatch_delay_s: float
    kill_after_s: float


@dataclass
class Results:
    """Everything one run measured, as printed by ``--json``."""

    command: str
    machine: dict[str, Any]
    deploy_s: float
    timeout_s: float
    rounds: list[Round]
    median_dispatch_delay_s: dict[str, float]
    median_kill_after_s: dict[str, float]
    dispatch_ratio: dict[str, float]
    kill_ratio: dict[str, float]


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.checks += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HealthServer(LocalServer):
    thread_name = "bench-health"

    def __init__(self) -> None:
        super().__init__("127.0.0.1", 0, _Healthy)
        self._httpd.checks = 0  # type: ignore[attr-defined]

    @property
    def checks(self) -> int:
        return int(self._httpd.checks)  # type: ignore[attr-defined]


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, env={**os.environ, **GIT_ENV}
    )


def make_repository(path: Path) -> Path:
    path.mkdir(parents=True)
    _git(path, "init", "--quiet", "-b", "main")
    (path / "README.md").write_text("bench\n")
    _git(path, "add", "--all")
    _git(path, "commit", "--quiet", "-m", "initial commit")
    return path


def _wait(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STEP_DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not reached after {STEP_DEADLINE_S:.0f}s")
        time.sleep(POLL_S)


def run_scenario(scenario: str, deploy_s: float, timeout_s: float) -> Round:
    """One scenario in a fresh directory; its two delays."""
    with tempfile.TemporaryDirectory(prefix="orch-bench-hol-") as tmp, HealthServer() as server:
        root = Path(tmp)
        out = root / "out"
        out.mkdir()
        (root / "quick.sh").write_text(QUICK_AGENT)
        (root / "deploy.sh").write_text(
            f"OUT={out}\n" + DEPLOY.format(deploy_s=deploy_s if scenario == "deploy" else 0)
        )
        health = ""
        if scenario == "health":
            server.start()
            health = (
                f'post_deploy_health_url = "{server.url}/health"\n'
                f"post_deploy_window_s = {deploy_s}\n"
                "post_deploy_interval_s = 0.5\n"
            )
        config = root / "orch.toml"
        config.write_text(
            CONFIG.format(
                quick=root / "quick.sh",
                deploy=root / "deploy.sh",
                out=out,
                timeout_s=timeout_s,
                health=health,
            )
        )
        deploy_repo = make_repository(root / "deploy")
        sleeper_repo = make_repository(root / "sleeper")
        settings = load_settings(config)
        store = Store.open(settings.effective_database_url)
        engine = Engine(store, settings)
        stop = threading.Event()
        thread = threading.Thread(target=engine.run, args=(stop,), name="bench-engine")
        try:
            deploying = prepare_deploy_task(store, deploy_repo, root / "wt", "D-1")
            # Its preparer "lives": recovery leaves D-1 to the reaper's first sweep.
            Owner.current(boot_id="prepared").register(store)
            service = TaskService(store, settings)
            sleeper = service.create_task(repo_path=sleeper_repo, title="Sleep", work_item="K-1")
            thread.start()  # K-1 is dispatched, then D-1's crossing starts
            if scenario == "health":
                _wait(lambda: server.checks > 0, "the health window started")
            else:
                _wait((out / "deploy-started").exists, "the deploy started")
            quick = service.create_task(repo_path=deploy_repo, title="Quick", work_item="Q-1")

            def event(task_id: int, kind: str) -> float | None:
                found = [e.created_at for e in store.task_events(task_id) if e.kind == kind]
                return found[0] if found else None

            _wait(lambda: event(quick.id, "job.started") is not None, "Q-1's job started")
            _wait(lambda: event(sleeper.id, "job.killed") is not None, "K-1's job killed")
            _wait(lambda: store.get_task(deploying.id).stage == "done", "D-1 done")
            dispatch = (event(quick.id, "job.started") or 0) - (
                event(quick.id, "job.enqueued") or 0
            )
            kill = (event(sleeper.id, "job.killed") or 0) - (event(sleeper.id, "job.started") or 0)
            return Round(scenario, round(dispatch, 4), round(kill, 4))
        finally:
            stop.set()
            if thread.is_alive():
                thread.join(STEP_DEADLINE_S)
            engine.shutdown(kill=True)
            store.close()


def measure(deploy_s: float, timeout_s: float, rounds: int) -> Results:
    done: list[Round] = []
    for number in range(rounds):
        for scenario in SCENARIOS:
            result = run_scenario(scenario, deploy_s, timeout_s)
            print(
                f"round {number + 1} {scenario:>8}: dispatch {result.dispatch_delay_s:.3f}s, "
                f"killed after {result.kill_after_s:.2f}s",
                file=sys.stderr,
                flush=True,
            )
            done.append(result)
    dispatch = {
        s: statistics.median(r.dispatch_delay_s for r in done if r.scenario == s) for s in SCENARIOS
    }
    kill = {
        s: statistics.median(r.kill_after_s for r in done if r.scenario == s) for s in SCENARIOS
    }
    base_dispatch, base_kill = dispatch["baseline"], kill["baseline"]
    if base_dispatch <= 0 or base_kill <= 0:
        raise BenchError("the baseline measured no delay: the events' clock is too coarse")
    return Results(
        command=shlex.join([Path(sys.executable).name, *sys.argv]),
        machine={"python": platform.python_version(), "platform": platform.platform()},
        deploy_s=deploy_s,
        timeout_s=timeout_s,
        rounds=done,
        median_dispatch_delay_s=dispatch,
        median_kill_after_s=kill,
        dispatch_ratio={s: round(dispatch[s] / base_dispatch, 2) for s in ("deploy", "health")},
        kill_ratio={s: round(kill[s] / base_kill, 2) for s in ("deploy", "health")},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deploy-s", type=float, default=DEFAULT_DEPLOY_S)
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.deploy_s <= 0 or args.timeout_s <= 0 or args.rounds < 1:
        print(
            "head_of_line: --deploy-s, --timeout-s and --rounds must be positive", file=sys.stderr
        )
        return 2
    try:
        results = measure(args.deploy_s, args.timeout_s, args.rounds)
    except BenchError as exc:
        print(f"head_of_line: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(results), indent=2))
        return 0
    print(f"deploy / health window: {args.deploy_s:g}s, agent timeout: {args.timeout_s:g}s")
    print(f"{'scenario':>9}  {'dispatch delay':>15}  {'killed after':>12}")
    for scenario in SCENARIOS:
        print(
            f"{scenario:>9}  {results.median_dispatch_delay_s[scenario]:>14.3f}s"
            f"  {results.median_kill_after_s[scenario]:>11.2f}s"
        )
    for scenario in ("deploy", "health"):
        print(
            f"{scenario} vs baseline: dispatch delay {results.dispatch_ratio[scenario]:.2f}x, "
            f"kill time {results.kill_ratio[scenario]:.2f}x (goal <= {GOAL_RATIO:g}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
