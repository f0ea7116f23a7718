"""Chaos, small: ``bench/chaos.py`` at a CI-sized count, on SQLite and on PostgreSQL.

A few tasks go through the whole pipeline (scripted agents, real git, a real deploy
command) while ``orch serve`` is SIGKILLed at random moments and restarted; at the end
every task is done, each merge and deploy happened exactly once (in git, in the deploy
log and in the effect journal), no lease is held, no job is pending and no process is
left running. The full count (50 tasks, 30 kills, both databases) is ``make chaos``.

The seed is fixed so that a failure can be replayed (``.venv/bin/python bench/chaos.py
--tasks 4 --kills 5 --max-kills 10 --seed 3``); the kill moments still vary with the
machine's speed, which is the point of a chaos run.

A chaos run is a net, not a proof: the deterministic proof of each failure class is
its own test (``docs/reliability.md``). Seen failing (mutants in a copy of ``src/``
put first on ``PYTHONPATH``, the checkout untouched), at this count:

* ``Journal.run`` not waiting for an effect process that still runs: ``CHAOS-1
  deployed 2 times`` (SQLite, seed 3); at 5 tasks ``deploys went backwards`` (a killed
  server's deploy of an older commit ending after a newer one; seeds 3 and 5). Not
  every run catches it (seed 5 at this count, seed 3 on PostgreSQL did not).
* ``DeployEffect.observe`` comparing with ``main``'s head only: the 6-task run that
  found it reported ``CHAOS-3 deployed 2 times``; at this count two runs missed it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

pytestmark = pytest.mark.e2e

CHAOS: Final = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"
TASKS: Final = 4
KILLS: Final = 5
MAX_KILLS: Final = 10  # then the last server finishes undisturbed: bounded time
SEED: Final = 3
RUN_TIMEOUT_S: Final = 240


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_chaos_every_task_done_every_effect_once(database: str) -> None:
    command = [
        sys.executable,
        str(CHAOS),
        *("--tasks", str(TASKS), "--kills", str(KILLS), "--max-kills", str(MAX_KILLS)),
        *("--seed", str(SEED)),
        *("--database", database, "--timeout-s", str(RUN_TIMEOUT_S - 40), "--json"),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert done.stdout.strip(), f"no report; stderr:\n{done.stderr}"
    report = json.loads(done.stdout)
    assert report["violations"] == [], "\n".join(report["violations"])
    assert done.returncode == 0, done.stderr
    assert report["ok"] is True
    assert report["kills"] >= KILLS
    assert report["tasks_done"] == TASKS


INSTANCES: Final = 3
FLEET_MAX_KILLS: Final = 8


@pytest.mark.postgres
def test_chaos_with_three_instances_every_task_done_every_effect_once() -> None:
    """Three ``orch serve`` on one PostgreSQL database, one of them (the leader every
    third time) SIGKILLed and restarted every few moments (issue 12): the survivors take
    its jobs and, when it led, the maintenance over."""
    command = [
        sys.executable,
        str(CHAOS),
        *("--tasks", str(TASKS), "--kills", str(KILLS), "--max-kills", str(FLEET_MAX_KILLS)),
        *("--seed", str(SEED), "--instances", str(INSTANCES)),
        *("--database", "postgres", "--timeout-s", str(RUN_TIMEOUT_S - 40), "--json"),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert done.stdout.strip(), f"no report; stderr:\n{done.stderr}"
    report = json.loads(done.stdout)
    assert report["violations"] == [], "\n".join(report["violations"])
    assert done.returncode == 0, done.stderr
    assert report["instances"] == INSTANCES
    assert report["kills_of_leader"] >= 1
    assert report["tasks_done"] == TASKS


def test_several_instances_on_sqlite_are_refused_with_one_line() -> None:
    done = subprocess.run(
        [sys.executable, str(CHAOS), "--instances", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--instances above 1 needs --database postgres" in done.stderr
