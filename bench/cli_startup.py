"""How long ``orch`` takes to start: ``orch --help`` and ``orch task list`` against a bare
Python and a Python that imports SQLAlchemy, measured in the same run.

Theory of operation
-------------------
A command line that takes half a second to print its help feels broken, and most of that
time is imports (issue 12: SQLAlchemy, Rich, pydantic, the dev tools' web stack, Alembic,
all loaded eagerly). Absolute start-up times depend on the machine and its load, so the
figures are **ratios to two baselines timed in the same rounds**:

* ``python -c pass``: the interpreter alone;
* ``python -c "import sqlalchemy"``: the interpreter plus the one library a command that
  reads the database cannot do without. The goals (issue 12) are relative to it:
  ``orch --help`` within 3x and ``orch task list`` within 6x.

Setup, in a temporary directory: an ``orch.toml`` whose agent stages use the offline
``scripted`` agent, a git repository, and ``--tasks`` tasks made through the task
service (real worktrees, a real SQLite database migrated to head). Every command runs as
a subprocess of the installed ``orch`` console script (or ``python -m orchestrator``
when there is none), in that directory, with the ``ORCH_*`` variables of the caller
removed. One warm-up round is not counted (it also writes the bytecode caches); then
each round runs every command once in a shuffled order, so a load spike hits all of them
alike. Reported: the median wall time per command, its ratio to each baseline, and the
two goal lines with pass or fail.

Usage::

    .venv/bin/python bench/cli_startup.py                  # 15 rounds, 20 tasks
    .venv/bin/python bench/cli_startup.py --rounds 30 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import load_settings
from orchestrator.store import Store

DEFAULT_ROUNDS: Final = 15
DEFAULT_TASKS: Final = 20
BASELINE: Final = "python -c 'import sqlalchemy'"
# The goals of issue 12, as ratios to BASELINE.
GOALS: Final = {"orch --help": 3.0, "orch task list": 6.0}
CONFIG: Final = """\
[stages.analysis]
agent = "scripted"
[stages.architecture]
agent = "scripted"
[stages.development]
agent = "scripted"
"""


def orch_command() -> list[str]:
    """The console script next to this interpreter, as a user runs it."""
    script = Path(sys.executable).with_name("orch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator"]


def commands() -> dict[str, list[str]]:
    orch = orch_command()
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        BASELINE: [sys.executable, "-c", "import sqlalchemy"],
        "orch --help": [*orch, "--help"],
        "orch --version": [*orch, "--version"],
        "orch task list": [*orch, "task", "list"],
        "orch task list --json": [*orch, "task", "list", "--json"],
        "orch task show BENCH-1": [*orch, "task", "show", "BENCH-1"],
    }


def make_project(root: Path, tasks: int) -> None:
    """orch.toml, a git repository and ``tasks`` tasks in analysis."""
    (root / "orch.toml").write_text(CONFIG, encoding="utf-8")
    repo = root / "repo"
    git = ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "README.md").write_text("bench\n", encoding="utf-8")
    subprocess.run([*git, "add", "README.md"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    settings = load_settings(root / "orch.toml")
    store = Store.open(settings.effective_database_url)
    try:
        service = TaskService(store, settings)
        for number in range(1, tasks + 1):
            service.create_task(
                repo_path=repo, title=f"Bench task {number}", work_item=f"BENCH-{number}"
            )
    finally:
        store.close()


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}


def time_once(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{argv} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    return elapsed


def measure(root: Path, rounds: int) -> dict[str, list[float]]:
    table = commands()
    env = clean_env()
    for argv in table.values():  # warm-up: bytecode caches, page cache
        time_once(argv, root, env)
    times: dict[str, list[float]] = {name: [] for name in table}
    names = list(table)
    for _ in range(rounds):
        random.shuffle(names)
        for name in names:
            times[name].append(time_once(table[name], root, env))
    return times


@dataclass
class Result:
    rounds: int
    load_average: tuple[float, float, float]
    python: str
    median_s: dict[str, float]
    ratio_to_python: dict[str, float]
    ratio_to_sqlalchemy: dict[str, float]
    # per goal command: its ratio to BASELINE, the goal, and whether it is met
    goals: dict[str, dict[str, float | bool]]

    @property
    def met(self) -> bool:
        return all(goal["met"] for goal in self.goals.values())


def report(times: dict[str, list[float]]) -> Result:
    medians = {name: statistics.median(values) for name, values in times.items()}
    bare, base = medians["python -c pass"], medians[BASELINE]
    return Result(
        rounds=len(times[BASELINE]),
        load_average=os.getloadavg(),
        python=platform.python_version(),
        median_s=medians,
        ratio_to_python={name: m / bare for name, m in medians.items()},
        ratio_to_sqlalchemy={name: m / base for name, m in medians.items()},
        goals={
            name: {"ratio": medians[name] / base, "goal": goal, "met": medians[name] / base <= goal}
            for name, goal in GOALS.items()
        },
    )


def print_report(result: Result) -> None:
    load = ", ".join(f"{x:.2f}" for x in result.load_average)
    print(f"rounds: {result.rounds} · python {result.python} · load average {load}")
    print(f"{'command':<30} {'median s':>9} {'x pass':>8} {'x sqlalchemy':>13}")
    for name, median in result.median_s.items():
        to_python, to_base = result.ratio_to_python[name], result.ratio_to_sqlalchemy[name]
        print(f"{name:<30} {median:9.3f} {to_python:8.1f} {to_base:13.2f}")
    for name, goal in result.goals.items():
        verdict = "pass" if goal["met"] else "FAIL"
        print(f"goal: {name} <= {goal['goal']:.0f}x {BASELINE}: {goal['ratio']:.2f}x, {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="orch-cli-startup-") as tmp:
        root = Path(tmp)
        make_project(root, args.tasks)
        result = report(measure(root, args.rounds))
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print_report(result)
    return 0 if result.met else 1


if __name__ == "__main__":
    sys.exit(main())
