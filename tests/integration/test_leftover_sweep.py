"""Each host removes its own copies of worktrees whose task ended elsewhere (decision
0031): ``LeftoverSweeper``, ``orch gc``'s orphan sweep run as a loop of every instance
whose repositories have a remote."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from support import make_repo

from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import load_settings
from orchestrator.store import Store
from orchestrator.workspace.gc import ORPHAN_GRACE_S, LeftoverSweeper


def test_a_copy_of_a_task_ended_elsewhere_goes_and_the_others_stay(
    tmp_path: Path, db_url: str
) -> None:
    """Seen failing with the sweep reading no task (every directory an orphan): the
    live task's worktree was removed too."""
    config = tmp_path / "orch.toml"
    config.write_text(
        f"database_url = {json.dumps(db_url)}\ndata_dir = {json.dumps(str(tmp_path / 'data'))}\n"
        '[agents.ok]\ncommand = ["true"]\n[stages.analysis]\nagent = "ok"\n'
        '[stages.architecture]\nagent = "ok"\n[stages.development]\nagent = "ok"\n'
    )
    settings = load_settings(config)
    store = Store.open(db_url)
    try:
        service = TaskService(store, settings)
        repo = make_repo(tmp_path / "repo")
        ended, live, young = (
            service.create_task(repo_path=repo, title=f"Task {n}", work_item=f"L-{n}")
            for n in (1, 2, 3)
        )
        # Another host ended L-1 and L-3 and removed its own copies; this host's stay.
        with store.transaction() as tx:
            for task in (ended, young):
                tx.set_worktree_removed(task.id, time.time())
        old = time.time() - ORPHAN_GRACE_S - 60
        for task in (ended, live):
            os.utime(task.worktree, (old, old))

        swept = LeftoverSweeper(store, settings).sweep()

        assert [orphan.path for orphan in swept] == [ended.worktree]
        assert not Path(ended.worktree).exists()
        assert Path(live.worktree).is_dir()  # its task is live
        assert Path(young.worktree).is_dir()  # may be a task being made right now
        listed = (repo / ".git" / "worktrees").iterdir()
        assert Path(ended.worktree).name not in {entry.name for entry in listed}
    finally:
        store.close()
