"""Two tasks' deploys of one repository, started together by one server, never overlap.

The journal's in-flight wait covers a deploy left running by a killed server; inside one
live server two threads (say the engine and a webhook) may cross ``deploy -> done`` for
two tasks at the same moment. Their deploy commands run one at a time, and the later one
ships the newer head, so the older commit can never end up live.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from support import make_repo

from orchestrator.effects.merge_deploy import DeployEffect
from orchestrator.forges.local import LocalForge
from orchestrator.store import Store
from orchestrator.testing.actors import prepare_deploy_task
from orchestrator.workspace.git import Repo, git

DEPLOY = """\
echo "start $ORCH_WORK_ITEM" >> {log}
sleep 0.3
echo "end $ORCH_WORK_ITEM $ORCH_DEPLOY_COMMIT" >> {log}
"""


def test_two_deploys_of_one_repository_run_one_after_the_other(tmp_path: Path, db_url: str) -> None:
    """Seen failing without the lock in ``DeployEffect.perform``: the log read
    ``start, start, end, end``."""
    repo = make_repo(tmp_path / "repo")
    store = Store.open(db_url)
    try:
        tasks = [prepare_deploy_task(store, repo, tmp_path / "wt", f"L-{n}") for n in (1, 2)]
    finally:
        store.close()
    for task in tasks:
        LocalForge(Repo(repo)).merge(task)
    log = tmp_path / "deploys.log"
    script = tmp_path / "deploy.sh"
    script.write_text(DEPLOY.format(log=log))
    barrier = threading.Barrier(len(tasks))
    errors: list[BaseException] = []

    def deploy(effect: DeployEffect) -> None:
        try:
            barrier.wait()
            effect.perform(lambda pid: None)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(
            target=deploy, args=(DeployEffect(Repo(repo), task, ["sh", str(script)], None),)
        )
        for task in tasks
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    lines = log.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["start", "end", "start", "end"], lines
    head = git(repo, "rev-parse", "main").stdout.strip()
    assert lines[-1].split()[2] == head


def test_the_deploy_command_sees_no_secret_of_orchs(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen failing before: the deploy got all of orch's environment, webhook secrets too.
    The operator's own variables (a deploy's credentials) still reach it."""
    monkeypatch.setenv("ORCH_GITHUB_WEBHOOK_SECRET", "sentinel-webhook-secret")
    monkeypatch.setenv("PROXY_WITH_TOKEN", "http://u:sentinel-bot-token@proxy")
    monkeypatch.setenv("KUBECONFIG", "/etc/deploy/kubeconfig")
    repo = make_repo(tmp_path / "repo")
    store = Store.open(db_url)
    try:
        task = prepare_deploy_task(store, repo, tmp_path / "wt", "E-1")
    finally:
        store.close()
    LocalForge(Repo(repo)).merge(task)
    dump = tmp_path / "env.txt"
    effect = DeployEffect(
        Repo(repo),
        task,
        ["sh", "-c", f"env > {dump}"],
        None,
        secrets=frozenset({"sentinel-webhook-secret", "sentinel-bot-token"}),
    )
    effect.perform(lambda pid: None)
    seen = dump.read_text()
    assert "sentinel" not in seen
    assert "ORCH_GITHUB_WEBHOOK_SECRET" not in seen
    assert "KUBECONFIG=/etc/deploy/kubeconfig" in seen
    assert "ORCH_WORK_ITEM=E-1" in seen
