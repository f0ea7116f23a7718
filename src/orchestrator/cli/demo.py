"""``orch demo``: DEMO-1 through the whole pipeline, offline, in under a minute.

It builds a small real Python project with a git history and a pytest suite, creates
task DEMO-1 ("add a slugify() helper"), approves the BRD gate on the user's behalf
(saying so), and drives every stage with the built-in scripted agent, real git and
real pytest. It ends with a summary table and the merged commit on ``main``.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.api.format import format_age
from orchestrator.cli.demo_project import (
    DEMO_BRANCH,
    DEMO_TASK_DESCRIPTION,
    DEMO_TASK_TITLE,
    DEMO_WORK_ITEM,
    create_demo_repository,
)
from orchestrator.cli.progress import EventPrinter, task_summary_rows
from orchestrator.engine.core import Engine
from orchestrator.errors import UsageError
from orchestrator.kernel.gates import ARTIFACT_ROOT
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import load_settings
from orchestrator.store import Store
from orchestrator.workspace.git import git

__all__ = ["DEMO_CONFIG", "run_demo"]

DEMO_TIMEOUT_S: Final = 300.0
DEMO_CONFIG: Final = """\
# Written by `orch demo`: every agent stage uses the built-in scripted agent.
data_dir = ".orch"
retry_backoff_s = 0.5

[stages.analysis]
agent = "scripted"
[stages.architecture]
agent = "scripted"
[stages.development]
agent = "scripted"
"""
EXPECTED_ARTIFACTS: Final = (
    "01-brd.md",
    "06-adr",
    "10-dev-notes.md",
    "13-test-report.md",
    "14-staging-report.md",
    "15-deploy-report.md",
)


def _prepare_dir(keep: Path | None) -> tuple[Path, bool]:
    if keep is None:
        return Path(tempfile.mkdtemp(prefix="orch-demo-")), True
    if keep.exists() and any(keep.iterdir()):
        raise UsageError(f"{keep} is not empty; give --keep a new or empty directory")
    keep.mkdir(parents=True, exist_ok=True)
    return keep.resolve(), False


def run_demo(keep: Path | None, console: Console) -> int:
    """Run the demo; returns the process exit code (0 when DEMO-1 is done)."""
    root, temporary = _prepare_dir(keep)
    try:
        return _run(root, console, temporary)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def _run(root: Path, console: Console, temporary: bool) -> int:
    started = time.monotonic()
    config_path = root / "orch.toml"
    config_path.write_text(DEMO_CONFIG, encoding="utf-8")
    settings = load_settings(config_path)
    repo_path = create_demo_repository(root / "textkit")
    console.print(
        f"demo project: {repo_path} (git, pytest suite, branch {DEMO_BRANCH})", markup=False
    )
    store = Store.open(settings.effective_database_url)
    try:
        service = TaskService(store, settings)
        printer = EventPrinter(store, console, settings.language)
        task = service.create_task(
            repo_path=repo_path,
            title=DEMO_TASK_TITLE,
            work_item=DEMO_WORK_ITEM,
            description=DEMO_TASK_DESCRIPTION,
            actor="demo",
        )
        engine = Engine(store, settings)
        stop = threading.Event()
        deadline = time.monotonic() + DEMO_TIMEOUT_S

        def finished() -> bool:
            current = store.get_task(task.id)
            if current.stage == "brd-approval" and not current.failed:
                console.print(
                    Text.assemble(
                        (DEMO_WORK_ITEM, "bold"),
                        "   BRD gate: auto-approved by the demo "
                        f"(in real use a person runs `orch task approve {DEMO_WORK_ITEM}`)",
                    )
                )
                service.approve(current, actor="demo (auto-approve)")
            return (
                current.stage in ("done", "cancelled")
                or current.failed
                or time.monotonic() > deadline
            )

        try:
            engine.run(stop, until=finished, on_tick=printer.poll)
        finally:
            engine.shutdown(kill=True)
        printer.poll()
        final = store.get_task(task.id)
        console.print()
        table = Table("stage", "agent", "attempts", "duration", "cost", "result", box=None)
        for row in task_summary_rows(store, final):
            table.add_row(*row)
        console.print(table)
        total_cost = sum(run.cost_usd for run in store.task_runs(final.id))
        console.print(f"total cost ${total_cost:.4f} in {format_age(time.monotonic() - started)}")
        if final.stage != "done":
            reason = final.failed_reason or f"stopped in {final.stage}"
            console.print(f"demo did not finish: {reason}", style="red", markup=False)
            return 1
        merged = git(repo_path, "log", "-1", "--format=%h %s", DEMO_BRANCH).stdout.strip()
        console.print(f"merged on {DEMO_BRANCH}: {merged}", markup=False)
        docs = repo_path / ARTIFACT_ROOT / DEMO_WORK_ITEM
        missing = [name for name in EXPECTED_ARTIFACTS if not (docs / name).exists()]
        if missing:
            console.print(
                f"missing artifacts on {DEMO_BRANCH}: {', '.join(missing)}",
                style="red",
                markup=False,
            )
            return 1
        console.print(f"artifacts on {DEMO_BRANCH}: {docs}", markup=False)
        if temporary:
            console.print("(the demo ran in a temporary directory; --keep DIR keeps it)")
        else:
            console.print(
                f"inspect: orch --config {config_path} task show {DEMO_WORK_ITEM}", markup=False
            )
        return 0
    finally:
        store.close()
