"""``GET /costs`` and ``orch costs``: the cost report through the API (a viewer's read,
hostile query values refused in one line) and the CLI (tables, ``--json``, one error
line and exit 2 for a bad date). The report's figures are tested on both databases in
``test_cost_report.py``; here the edges.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from support import api_client
from test_cost_report import DEC_1, add_run, add_task, queue_job

from orchestrator.api.server import create_app
from orchestrator.auth import issue_token
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import load_settings
from orchestrator.store import Store

DAY: Final = 86_400.0
PERIOD: Final = {"since": "2026-12-01", "until": "2026-12-03"}
HOSTILE: Final = (
    {"since": "yesterday"},
    {"until": "2026-13-01"},
    {"since": "2026-12-02", "until": "2026-12-01"},
    {"since": "2026-12-01", "until": "2026-12-01"},
    {"since": "1969-01-01"},
    {"since": "2000-01-01", "until": "2026-01-01"},
    {"since": "9999-12-31T23:59:59-14:00"},
    {"since": "2026-12-01" + "9" * 5_000},
    {"since": "2026-12-01\x00"},
    {"since": "2026-12-01%00"},
    {"top": "0"},
    {"top": "101"},
    {"top": "-1"},
    {"top": "ten"},
    {"top": "9" * 40},
)


class World:
    def __init__(self, root: Path) -> None:
        (root / "orch.toml").write_text('data_dir = ".orch"\ntask_budget_usd = 4.0\n')
        self.root = root
        self.settings = load_settings(cwd=root)
        self.store = Store.open(self.settings.effective_database_url)
        self.app = create_app(
            store=self.store, settings=self.settings, service=TaskService(self.store, self.settings)
        )
        self.viewer = issue_token(self.store, "viewer-1", "viewer", actor="test")
        alpha = add_task(self.store, "/srv/alpha")
        add_run(self.store, alpha, at=DEC_1 + 3600, cost=1.5, tokens=1000)
        add_run(self.store, alpha, at=DEC_1 + DAY + 3600, cost=0.5, stage="analysis")
        queue_job(self.store, alpha)
        beta = add_task(self.store, "/srv/beta")
        add_run(self.store, beta, at=DEC_1 + 7200, cost=0.25, agent="codex", model="gpt-5")

    def client(self, token: str | None) -> Any:
        return api_client(self.app, token)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    yield made
    made.store.close()


def test_a_viewer_reads_the_report(world: World) -> None:
    with world.client(world.viewer) as client:
        answer = client.get("/costs", params={**PERIOD, "top": 1})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["since"] == "2026-12-01T00:00:00.000Z"
    assert report["until"] == "2026-12-03T00:00:00.000Z"
    assert report["total"] == {
        "cost_usd": 2.25,
        "input_tokens": 1200,
        "output_tokens": 600,
        "runs": 3,
    }
    assert [(d["day"], d["cost_usd"]) for d in report["by_day"]] == [
        ("2026-12-01", 1.75),
        ("2026-12-02", 0.5),
    ]
    assert [(r["repository"], r["cost_usd"]) for r in report["by_repository"]] == [
        ("/srv/alpha", 2.0),
        ("/srv/beta", 0.25),
    ]
    assert [(r["agent"], r["model"]) for r in report["by_agent_model"]] == [
        ("claude", "opus"),
        ("codex", "gpt-5"),
    ]
    assert [(r["stage"], r["runs"]) for r in report["by_stage"]] == [
        ("development", 2),
        ("analysis", 1),
    ]
    assert [t["work_item"] for t in report["top_tasks"]] == [report["top_tasks"][0]["work_item"]]
    assert report["top_tasks"][0]["cost_usd"] == 2.0
    budget = report["budgets"]["tasks"]
    assert [(b["repository"], b["spent_usd"], b["budget_usd"], b["used"]) for b in budget] == [
        ("/srv/alpha", 2.0, 4.0, 0.5)
    ]


def test_the_report_needs_a_token(world: World) -> None:
    with world.client(None) as client:
        answer = client.get("/costs", params=PERIOD)
    assert answer.status_code == 401
    assert "token" in answer.json()["error"]
    with world.client("orch_not-a-real-token") as client:
        assert client.get("/costs").status_code == 401


@pytest.mark.parametrize("params", HOSTILE, ids=lambda p: ",".join(f"{k}" for k in p))
def test_hostile_query_values_are_one_line_422(world: World, params: dict[str, str]) -> None:
    with world.client(world.viewer) as client:
        answer = client.get("/costs", params=params)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert set(body) == {"error"}
    assert "\n" not in body["error"]
    assert "Traceback" not in body["error"]
    assert len(body["error"]) <= 500


@pytest.mark.parametrize("query", ["since=%ED%A0%80", "since=%FF%FE", "until=2026-12-01%0A"])
def test_undecodable_query_bytes_are_one_line_422(world: World, query: str) -> None:
    with world.client(world.viewer) as client:
        answer = client.get(f"/costs?{query}")
    assert answer.status_code == 422, answer.text
    assert "\n" not in answer.json()["error"]


def test_the_default_period_is_the_last_30_days(world: World) -> None:
    with world.client(world.viewer) as client:
        report = client.get("/costs").json()
    assert len(report["by_day"]) == 31  # 30 days from a moment inside a day: 31 dates
    assert report["until"] > "2026-"


def orch(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_orch_costs_prints_tables_and_json(world: World) -> None:
    shown = orch(world.root, "costs", "--since", "2026-12-01", "--until", "2026-12-03")
    assert shown.returncode == 0, shown.stderr
    for heading in ("per day", "per repository", "per agent and model", "per stage", "top"):
        assert heading in shown.stdout
    assert "total: $2.25 in 3 runs" in shown.stdout
    assert "2026-12-02" in shown.stdout
    assert "gpt-5" in shown.stdout
    assert "task budgets" in shown.stdout
    assert "50%" in shown.stdout

    as_json = orch(world.root, "costs", "--since", "2026-12-01", "--until", "2026-12-03", "--json")
    assert as_json.returncode == 0, as_json.stderr
    with world.client(world.viewer) as client:
        api = client.get("/costs", params=PERIOD).json()
    assert json.loads(as_json.stdout) == api


@pytest.mark.parametrize(
    "args",
    [
        ("--since", "last week"),
        ("--until", "2026-02-30"),
        ("--since", "2026-12-03", "--until", "2026-12-01"),
        ("--top", "0"),
    ],
)
def test_orch_costs_refuses_bad_input_in_one_line(world: World, args: tuple[str, ...]) -> None:
    done = orch(world.root, "costs", *args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    # Ours is one line; click's own (--top out of range) ends with its one error line.
    assert lines
    assert lines[-1].lower().startswith("error: ")
    assert done.stdout == ""


def test_orch_costs_help_says_what_it_reports() -> None:
    done = orch(Path.cwd(), "costs", "--help")
    assert done.returncode == 0
    for word in ("--since", "--until", "--json", "--top", "ISO 8601", "budget"):
        assert word in done.stdout


def test_orch_costs_without_a_database_says_so_and_creates_none(tmp_path: Path) -> None:
    (tmp_path / "orch.toml").write_text('data_dir = ".orch"\n')
    done = orch(tmp_path, "costs", "--json")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].startswith("error: no database at ")
    assert not (tmp_path / ".orch" / "orch.db").exists()
