"""The webhook inbox end to end: the real ``orch serve`` as a subprocess (on SQLite and
PostgreSQL), a real transition lease held by this test process, a Gitea-signed "closed
without merging" delivery posted over HTTP.

The cancel arrives while the lease's owner lives: it is answered 202 with the intent's
id and recorded; the server's inbox loop looks at it and leaves it waiting. The server
is SIGKILLed, the lease released; the next ``orch serve`` applies the cancel, exactly
once (one ``task.cancelled`` event, one ``inbox.applied``), and ``GET /status`` shows the
inbox empty again.

Seen failing with the inbox's lease checks removed (the intent was retried as a service
conflict instead of waiting). The code before the inbox answers the delivery 200
``deferred`` and drops it (the first assertion).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.e2e.test_integrations import SCRIPTED, Serve, free_port, wait_for
from tests.integration.support import make_repo

from orchestrator.effects.leases import LeaseManager, Owner
from orchestrator.lifecycle.service import TaskService
from orchestrator.lifecycle.transitions import EventKind, advance_stage
from orchestrator.settings import load_settings
from orchestrator.store import InboxStore, Store
from orchestrator.testing.fake_forge import DEFAULT_TOKEN, FakeGitea

pytestmark = pytest.mark.e2e

GITEA_SECRET = "gitea-secret"
REPO = "acme/shop"


def test_a_cancel_recorded_while_the_lease_is_held_survives_a_sigkill_and_is_applied_once(
    tmp_path: Path, db_url: str
) -> None:
    repo = make_repo(tmp_path / "shop")
    with FakeGitea() as gitea:
        config = tmp_path / "orch.toml"
        config.write_text(
            f'data_dir = ".orch"\ndatabase_url = {json.dumps(db_url)}\nretry_backoff_s = 0\n'
            f'forge = "gitea"\nforge_base_url = "{gitea.api_url}"\n'
            f'forge_token = "{DEFAULT_TOKEN}"\nforge_remote = ""\n'
            f'gitea_webhook_secret = "{GITEA_SECRET}"\n'
            + SCRIPTED
            + f"[repos.shop]\npath = {json.dumps(str(repo))}\n"
            f'forge_repo = "{REPO}"\n'
        )
        settings = load_settings(config)
        store = Store.open(settings.effective_database_url)
        inbox = InboxStore(store)
        try:
            # A task waiting for a person (no job runs), and a live lease on it: ours.
            service = TaskService(store, settings)
            task = service.create_task(repo_path=repo, title="Add a cart", actor="t")
            with store.transaction() as tx:
                tx.cancel_waiting_jobs(task.id, "the test walks the task on")
                assert advance_stage(
                    tx, settings, task, "analysis", "brd-approval", actor="t", reason="walk"
                )
            holder = Owner.current("the-test", "boot-the-test")
            holder.register(store)
            leases = LeaseManager(store, settings, holder)
            lease = leases.acquire(store.get_task(task.id), "deploy->done", "the-test")
            assert lease is not None

            first = Serve(tmp_path, free_port()).start()
            try:
                pull = gitea.add_pull(REPO, task.branch)
                body, headers = gitea.webhook(
                    "pull_request", gitea.pull_request_event(pull, "closed"), GITEA_SECRET, "d-1"
                )
                accepted = first.post("/webhooks/gitea", content=body, headers=headers)
                assert accepted.status_code == 202, accepted.text
                assert accepted.json()["status"] == "accepted"
                intent_id = accepted.json()["intent"]
                # The inbox loop saw it and left it waiting for the lease.
                wait_for(
                    lambda: (
                        inbox.intents()[0].outcome == "waiting: deploy->done (the-test) "
                        "is under way"
                    ),
                    "the inbox loop waits for the lease",
                    first.log,
                )
                status = first.get("/status")["inbox"]
                assert status["pending"] == 1
                assert status["oldest_pending_age_s"] >= 0
            finally:
                first.kill()
            assert store.get_task(task.id).stage == "brd-approval"
            assert leases.release(lease)

            second = Serve(tmp_path, free_port()).start()
            try:
                wait_for(
                    lambda: second.get(f"/tasks/{task.work_item}")["stage"] == "cancelled",
                    "the next orch serve applies the cancel",
                    second.log,
                )
                wait_for(
                    lambda: second.get("/status")["inbox"]["pending"] == 0,
                    "the inbox is empty",
                    second.log,
                )
                again = second.post("/webhooks/gitea", content=body, headers=headers)
                duplicate = {"status": "duplicate", "delivery": "d-1", "intent": intent_id}
                assert again.json() == duplicate
            finally:
                second.stop()
            [intent] = inbox.intents()
            assert (intent.id, intent.status, intent.outcome) == (intent_id, "applied", "cancelled")
            kinds = [event.kind for event in store.task_events(task.id)]
            assert kinds.count(EventKind.CANCELLED) == 1
            assert kinds.count(EventKind.INBOX_RECORDED) == 1
            assert kinds.count(EventKind.INBOX_APPLIED) == 1
            # An operator sees both ends of the intent in the task's trail.
            env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
            env["COLUMNS"] = "400"  # one event per line
            shown = subprocess.run(
                [sys.executable, "-m", "orchestrator", "task", "show", task.work_item],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert "inbox.recorded" in shown
            assert "cancel from gitea recorded: pull request #1 closed without merging" in shown
            assert "inbox.applied" in shown
        finally:
            store.close()
