"""A job's end is pushed, not polled (procs/exits.py, decision 0030).

Real processes and real pidfds. The waits are bounds against hanging (``WAIT_S``); each
test is built so that the code it names, when wrong, makes it hang until that bound
(the engine's tick is set to an hour, so only a push can end its wait).
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Final

import pytest
from support import make_repo

from orchestrator.engine import core
from orchestrator.engine.core import Engine
from orchestrator.lifecycle.service import TaskService
from orchestrator.procs.exits import ExitWatch
from orchestrator.settings import load_settings
from orchestrator.store import Store

WAIT_S: Final = 20.0
HOUR_S: Final = 3600.0


def test_a_watched_process_ending_calls_on_exit() -> None:
    ended = threading.Event()
    watch = ExitWatch(ended.set)
    child = subprocess.Popen(["sh", "-c", "read line"], stdin=subprocess.PIPE)
    try:
        assert watch.watch(child.pid)
        assert not ended.wait(0.2)  # alive: nothing announced
        assert child.stdin is not None
        child.stdin.close()  # `read` sees end of input and the shell exits
        assert ended.wait(WAIT_S), "the end of the process was not announced"
    finally:
        child.wait()
        watch.close()


def test_a_process_gone_already_is_announced_at_once() -> None:
    ended = threading.Event()
    watch = ExitWatch(ended.set)
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its pid names nothing now
    try:
        assert watch.watch(child.pid)
        assert ended.is_set()
    finally:
        watch.close()


def test_close_stops_the_thread_and_can_be_repeated() -> None:
    watch = ExitWatch(lambda: None)
    child = subprocess.Popen(["sleep", "30"])
    try:
        watch.watch(child.pid)
        [thread] = [t for t in threading.enumerate() if t is watch._thread]
        watch.close()
        watch.close()
        assert not thread.is_alive()
    finally:
        child.kill()
        child.wait()


def test_the_engine_sees_a_job_end_without_waiting_out_its_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the tick an hour long, the task gets through its three job stages only if
    each job's end wakes the engine (seen hanging with the watch's wake left out)."""
    monkeypatch.setattr(core, "ENGINE_TICK_S", HOUR_S)
    repo = make_repo(tmp_path / "repo")
    config = tmp_path / "orch.toml"
    config.write_text(
        'data_dir = ".orch"\nretry_backoff_s = 0\n'
        'skip = ["brd-approval", "testing", "deploy-staging", "deploy"]\n'
        '[agents.code]\ncommand = ["sh", "-c", "echo \\"$ORCH_STAGE\\" >> code.txt"]\n'
        '[stages.analysis]\nagent = "code"\ngates = []\n'
        '[stages.architecture]\nagent = "code"\ngates = []\n'
        '[stages.development]\nagent = "code"\n'
    )
    settings = load_settings(config)
    store = Store.open(settings.effective_database_url)
    engine = Engine(store, settings)
    engine.inline_maintenance = False
    try:
        task = TaskService(store, settings).create_task(repo_path=repo, title="T", work_item="W-1")
        stop = threading.Event()
        runner = threading.Thread(target=engine.run, args=(stop,), daemon=True)
        runner.start()
        deadline = time.monotonic() + WAIT_S
        while store.get_task(task.id).stage != "done":
            if time.monotonic() > deadline:
                jobs = [(job.stage, job.status) for job in store.task_jobs(task.id)]
                pytest.fail(f"the task is still in {store.get_task(task.id).stage}: {jobs}")
            time.sleep(0.02)
        stop.set()
        engine.wake()
        runner.join(WAIT_S)
        assert not runner.is_alive()
    finally:
        engine.shutdown(kill=True)
        store.close()
