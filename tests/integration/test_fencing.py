"""A zombie lease owner: paused past its lease, reclaimed, resumed — and fenced.

Process A enters ``deploy -> done``: it merges, then asks the world whether the deploy
already happened. While that check runs, the test SIGSTOPs A and waits past the lease's
hard ceiling (``reaper_max_running_s``). Actor B then reclaims the lease (a new epoch),
finds the merge done, deploys and finishes the transition. When A is SIGCONTed its view
of the world is stale ("not deployed"), but every write it tries is fenced by the epoch:
it neither journals nor deploys nor moves the stage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from support import make_repo

from orchestrator.engine.core import Engine
from orchestrator.lifecycle.transitions import Runtime
from orchestrator.settings import load_settings
from orchestrator.store import Store
from orchestrator.store.schema import effects
from orchestrator.testing.actors import act, prepare_deploy_task
from orchestrator.testing.clock import FakeClock

WAIT_S = 60

CONFIG = """\
database_url = "{db_url}"
data_dir = ".orch"
retry_backoff_s = 0
# The lease's hard ceiling: a paused owner loses it after this (the test skips past it
# on a fake clock instead of sleeping).
reaper_max_running_s = 600

[repos.repo]
deploy_command = ["sh", "-c", "echo \\"$ORCH_WORK_ITEM $ORCH_DEPLOY_COMMIT\\" >> {tmp}/deploys.log"]
deploy_check_command = ["sh", "{tmp}/check.sh"]
"""
# Signals the test that a deploy check runs, takes a moment, prints the deployed commit.
CHECK_SCRIPT = """\
touch {tmp}/checking.flag
sleep 1
tail -n 1 {tmp}/deploys.log 2>/dev/null | cut -d' ' -f2
"""


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def test_a_resumed_zombie_owner_is_fenced(tmp_path: Path, db_url: str) -> None:
    repo = make_repo(tmp_path / "repo")
    config = tmp_path / "orch.toml"
    config.write_text(CONFIG.format(db_url=db_url, tmp=tmp_path))
    (tmp_path / "check.sh").write_text(CHECK_SCRIPT.format(tmp=tmp_path))
    settings = load_settings(config)
    store = Store.open(settings.effective_database_url)
    try:
        task = prepare_deploy_task(store, repo, tmp_path / "wt", "Z-1")
        go = tmp_path / "go"
        go.touch()
        zombie = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator.testing.actors",
                "webhook",
                str(config),
                str(go),
                str(task.id),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        flag = tmp_path / "checking.flag"
        _wait_for(flag)  # A merged and is now asking whether the deploy happened
        os.kill(zombie.pid, signal.SIGSTOP)
        try:
            flag.unlink()
            clock = FakeClock()
            clock.advance(settings.reaper_max_running_s + 0.5)  # past the lease's ceiling
            engine = Engine(store, settings, runtime=Runtime.create(store, settings, clock=clock))
            assert act("cli", engine, task.id) == "done"
        finally:
            os.kill(zombie.pid, signal.SIGCONT)
        out, err = zombie.communicate(timeout=WAIT_S)
        assert zombie.returncode == 0, err
        assert out.split() == [str(task.id), "lost"], out

        deploys = (tmp_path / "deploys.log").read_text().splitlines()
        assert [line.split()[0] for line in deploys] == ["Z-1"]
        merges = subprocess.run(
            ["git", "log", "--merges", "--format=%s", "main"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert len(merges) == 1
        final = store.get_task(task.id)
        assert final.stage == "done"
        assert final.failed_reason is None
        kinds = [event.kind for event in store.task_events(task.id)]
        assert "lease.reclaimed" in kinds
        assert "transition.lost" in kinds  # the zombie's fenced write
        assert kinds.count("stage.changed") == 1
        with store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(effects.c.effect, effects.c.lease_epoch, effects.c.status)
                .where(effects.c.task_id == task.id)
                .order_by(effects.c.id)
            ).all()
        # Epoch 1 (the zombie) merged; epoch 2 found the merge done and deployed.
        # The zombie never journaled a deploy.
        assert [(r.effect, r.lease_epoch, r.status) for r in rows] == [
            ("merge", 1, "done"),
            ("merge", 2, "done"),
            ("deploy", 2, "done"),
        ]
    finally:
        store.close()
