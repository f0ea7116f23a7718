"""The human gate through the real `orch` command: reject with feedback, and what
`orch task show` tells a person at the gate; and the Telegram card's Reject button
through the real `orch serve` and the fake Bot API (press, force-reply question, reply).

The analysis agent is a small command agent that records, per run, the prompt it read on
stdin and its ``ORCH_FEEDBACK``, then writes a BRD; the other stages use the scripted
agent, as in test_cli.py.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from tests.e2e.test_integrations import CHAT, TELEGRAM_SECRET, Serve, free_port, telegram_config
from tests.e2e.test_integrations import wait_for as wait_until

from orchestrator.cli.demo_project import create_demo_repository
from orchestrator.testing.fake_telegram import FakeTelegram

pytestmark = pytest.mark.e2e

ORCH = [sys.executable, "-m", "orchestrator"]
USER = getpass.getuser()
RECORDER = """\
import os, pathlib, sys
record = pathlib.Path(sys.argv[1])
record.mkdir(exist_ok=True)
run = len(list(record.glob("prompt-*.md"))) + 1
(record / f"prompt-{run}.md").write_text(sys.stdin.read())
(record / f"feedback-{run}.txt").write_text(os.environ.get("ORCH_FEEDBACK", ""))
docs = pathlib.Path(os.environ["ORCH_ARTIFACT_DIR"])
docs.mkdir(parents=True, exist_ok=True)
(docs / "01-brd.md").write_text(
    f"# BRD, version {run}\\n\\n1. textkit gets slugify(text) for URL-safe identifiers.\\n"
)
"""
CONFIG = """\
data_dir = ".orch"
retry_backoff_s = 0
max_attempts = 2

[agents.recorder]
command = [{python}, {script}, {record}]

[stages.analysis]
agent = "recorder"
[stages.architecture]
agent = "scripted"
[stages.development]
agent = "scripted"

[repos.textkit]
path = {repo}
"""
FEEDBACK = "Requirement 1 is vague: say what slugify does with accents (é -> e)."


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def orch(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*ORCH, *args],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(f"orch {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def show(workdir: Path, ref: str) -> dict[str, object]:
    shown = json.loads(orch(workdir, "task", "show", ref, "--json").stdout)
    assert isinstance(shown, dict)
    return shown


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "record"


@pytest.fixture
def workdir(tmp_path: Path, record: Path) -> Path:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    work = tmp_path / "work"
    work.mkdir()
    (work / "orch.toml").write_text(
        CONFIG.format(
            python=json.dumps(sys.executable),
            script=json.dumps(str(script)),
            record=json.dumps(str(record)),
            repo=json.dumps(str(tmp_path / "textkit")),
        )
    )
    return work


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return create_demo_repository(tmp_path / "textkit")


def test_reject_sends_the_brd_back_to_analysis_with_the_feedback_in_the_next_prompt(
    workdir: Path, repo: Path, record: Path
) -> None:
    orch(
        workdir,
        "task",
        "create",
        "--repo",
        str(repo),
        "--title",
        "Add slugify",
        "--work-item",
        "GATE-1",
    )
    orch(workdir, "run")

    # At the gate, `task show` names the BRD and the exact commands.
    at_gate = show(workdir, "GATE-1")
    assert at_gate["stage"] == "brd-approval"
    brd = Path(str(at_gate["artifact"]))
    assert brd == Path(str(at_gate["worktree"])) / "docs/work-items/GATE-1/01-brd.md"
    assert brd.read_text().startswith("# BRD, version 1")
    assert at_gate["commands"] == {
        "approve": "orch task approve GATE-1",
        "reject": "orch task reject GATE-1 --feedback 'what must change'",
    }
    assert at_gate["merge_commit"] is None
    human = orch(workdir, "task", "show", "GATE-1").stdout
    assert f"read:       {brd}" in human
    assert "approve:    orch task approve GATE-1" in human
    assert "reject:     orch task reject GATE-1 --feedback 'what must change'" in human

    # Bad feedback: one line, and the task stays where it is.
    empty = orch(workdir, "task", "reject", "GATE-1", "--feedback", "  ", check=False)
    assert empty.returncode == 2
    assert empty.stderr.strip() == (
        "error: the feedback is empty; say what the BRD must change (--feedback TEXT)"
    )
    assert show(workdir, "GATE-1")["stage"] == "brd-approval"

    rejected = orch(workdir, "task", "reject", "GATE-1", "--feedback", FEEDBACK)
    assert "GATE-1: rejected; now Analysis" in rejected.stdout
    after = show(workdir, "GATE-1")
    assert after["stage"] == "analysis"
    assert after["commands"] == {}
    events = after["events"]
    assert isinstance(events, list)
    [event] = [e for e in events if e["kind"] == "task.rejected"]
    assert (event["actor"], event["from_stage"], event["to_stage"]) == (
        f"cli:{USER}",
        "brd-approval",
        "analysis",
    )
    assert event["data"] == {"feedback": FEEDBACK}

    # Rejecting anywhere but the gate: one line naming the stage.
    again = orch(workdir, "task", "reject", "GATE-1", "--feedback", FEEDBACK, check=False)
    assert again.returncode == 1
    assert again.stderr.strip() == (
        "error: task GATE-1 is in analysis; reject applies at brd-approval"
    )

    orch(workdir, "run")
    assert show(workdir, "GATE-1")["stage"] == "brd-approval"
    assert brd.read_text().startswith("# BRD, version 2")
    first, second = (record / "prompt-1.md").read_text(), (record / "prompt-2.md").read_text()
    assert FEEDBACK not in first
    assert (record / "feedback-1.txt").read_text() == ""
    # The second analysis prompt and ORCH_FEEDBACK carry the feedback, naming the BRD.
    assert FEEDBACK in second
    assert f"docs/work-items/GATE-1/01-brd.md was rejected by cli:{USER}" in second
    feedback = (record / "feedback-2.txt").read_text()
    assert FEEDBACK in feedback
    assert f"docs/work-items/GATE-1/01-brd.md was rejected by cli:{USER}" in feedback

    # Approved now, the task runs to done; `task show` then names the merge commit.
    orch(workdir, "task", "approve", "GATE-1")
    orch(workdir, "run")
    done = show(workdir, "GATE-1")
    assert done["stage"] == "done", done["failed_reason"]
    main = subprocess.run(
        ["git", "rev-parse", "main"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert done["merge_commit"] == main
    assert done["commands"] == {}
    assert done["artifact"] is None
    human = orch(workdir, "task", "show", "GATE-1").stdout
    assert f"merged:     {main} on main" in human


def test_the_cards_reject_button_asks_why_and_the_reply_reaches_the_next_analysis(
    tmp_path: Path, workdir: Path, repo: Path, record: Path
) -> None:
    with FakeTelegram() as telegram:
        config = workdir / "orch.toml"
        config.write_text(telegram_config(telegram) + config.read_text())
        server = Serve(workdir, free_port()).start()
        try:
            httpx.post(
                f"{telegram.url}/bot{telegram.token}/setWebhook",
                json={"url": f"{server.url}/webhooks/telegram", "secret_token": TELEGRAM_SECRET},
            ).raise_for_status()
            created = server.post(
                "/tasks", json={"repo": str(repo), "title": "Add slugify", "work_item": "TG-1"}
            )
            assert created.status_code == 201, created.text
            task_id = created.json()["id"]

            def card_with_reject() -> object:
                cards = telegram.visible(CHAT)
                return (
                    cards and f"reject:{task_id}" in json.dumps(cards[0].reply_markup) and cards[0]
                )

            card = wait_until(card_with_reject, "the card offers Reject", server.log)
            pressed = telegram.press(CHAT, card.message_id, f"reject:{task_id}")
            assert pressed.json()["text"] == "TG-1: reply to my question with what must change"

            def question() -> object:
                found = [m for m in telegram.visible(CHAT) if m.reply_to == card.message_id]
                return found and found[0]

            asked = wait_until(question, "the force-reply question is sent", server.log)
            assert asked.reply_markup["force_reply"] is True
            # A reply to the card itself is not an answer: nothing moves.
            unrelated = telegram.say(CHAT, "looks good to me", reply_to=card.message_id)
            assert unrelated.json()["ignored"] == "not a reply to a reject question"
            assert server.get("/tasks/TG-1")["stage"] == "brd-approval"

            answered = telegram.say(CHAT, FEEDBACK, reply_to=asked.message_id, username="bob")
            assert answered.status_code == 200
            # Telegram performed the sendMessage of the webhook's answer: the person is told.
            [told] = [m for m in telegram.visible(CHAT) if m.text.startswith("TG-1: rejected")]
            assert (
                told.text
                == "TG-1: rejected by telegram:@bob(4242), back to analysis with your feedback."
            )

            wait_until(
                lambda: (
                    (record / "prompt-2.md").exists()
                    and server.get("/tasks/TG-1")["stage"] == "brd-approval"
                ),
                "analysis ran again and the task is back at the gate",
                server.log,
            )
        finally:
            server.stop()
    detail = json.loads(orch(workdir, "task", "show", "TG-1", "--json").stdout)
    [event] = [e for e in detail["events"] if e["kind"] == "task.rejected"]
    assert (event["actor"], event["data"]) == ("telegram:@bob(4242)", {"feedback": FEEDBACK})
    assert FEEDBACK not in (record / "prompt-1.md").read_text()
    assert FEEDBACK in (record / "prompt-2.md").read_text()
    assert FEEDBACK in (record / "feedback-2.txt").read_text()
    assert unrelated.status_code == 200
