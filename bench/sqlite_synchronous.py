"""SQLite durability cost: synchronous=FULL against NORMAL, measured in the same run.

Each round is the write pattern of one stage transition: a compare-and-swap on the
task, an enqueued job and an event, committed together. Machines are noisy, so the
figure that matters is the ratio FULL / NORMAL, not the absolute times.

    .venv/bin/python bench/sqlite_synchronous.py --transitions 2000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.store import Store


def one_run(directory: Path, synchronous: str, transitions: int) -> float:
    store = Store.open(
        f"sqlite:///{directory / f'{synchronous}.db'}", sqlite_synchronous=synchronous
    )
    try:
        with store.transaction() as tx:
            task_id = tx.insert_task(
                work_item="B-1",
                repository="/r",
                title="t",
                description="",
                stage="testing",
                branch="orch/B-1",
                base_branch="main",
                base_sha="0" * 40,
                worktree="/w",
            )
        stages = ("testing", "development")
        started = time.perf_counter()
        for number in range(transitions):
            expected, new = stages[number % 2], stages[(number + 1) % 2]
            with store.transaction() as tx:
                assert tx.update_task_stage_cas(task_id, expected, new)
                tx.enqueue_job(task_id=task_id, stage=new, kind="agent", agent="a", attempt=1)
                tx.add_event("stage.changed", actor="bench", task_id=task_id)
        return time.perf_counter() - started
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per mode")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    timings: dict[str, list[float]] = {"NORMAL": [], "FULL": []}
    with tempfile.TemporaryDirectory() as temp:
        for number in range(args.rounds):
            for mode in ("NORMAL", "FULL"):
                run_dir = Path(temp) / f"{mode}-{number}"
                run_dir.mkdir()
                timings[mode].append(one_run(run_dir, mode, args.transitions))
    normal, full = statistics.median(timings["NORMAL"]), statistics.median(timings["FULL"])
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "transitions": args.transitions,
        "normal_per_s": round(args.transitions / normal, 1),
        "full_per_s": round(args.transitions / full, 1),
        "full_over_normal_time": round(full / normal, 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
