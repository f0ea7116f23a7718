"""Launcher memory: what the per-job supervisors of N running jobs cost, native and Python.

Theory of operation
-------------------
Every running job carries a launcher (decision 0026): the native one (``launcher.c``,
built on first use) or the Python one (``python -m orchestrator.procs.launcher``). This
benchmark starts ``--jobs`` jobs running ``sleep --sleep-s`` through the real
:func:`orchestrator.procs.job.spawn_job`, under one launcher at a time, waits until
every launcher's command is the running ``sleep``, lets them settle, then sums over the
launchers (not the sleeps) the proportional set size (PSS: each shared page divided by
the number of processes mapping it, so the sum is what the launchers cost the machine)
and the resident set size (RSS: shared pages counted in full) from
``/proc/<pid>/smaps_rollup``. Then it stops every job with the one tree-kill and checks
each recorded its exit.

The Python launcher, measured in the same run, is the baseline: the ratio native/Python
is the figure that does not depend on the machine. The goal (issue 12) is at most
200 MB of PSS for 100 running jobs, 2 MB each.

Usage::

    .venv/bin/python bench/launcher_memory.py               # 100 jobs of sleep 60
    .venv/bin/python bench/launcher_memory.py --jobs 20 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from orchestrator.procs.job import RunningProcess, kill_job, spawn_job
from orchestrator.procs.native import LAUNCHERS, Launcher, native_launcher
from orchestrator.procs.proc import process_table

GOAL_PSS_PER_JOB_KB: Final = 2 * 1024
KB_PER_MB: Final = 1024
START_TIMEOUT_S: Final = 120.0
SETTLE_S: Final = 1.0
POLL_S: Final = 0.05
STOP_GRACE_S: Final = 5.0


@dataclass(frozen=True)
class Measured:
    launcher: str
    program: str
    jobs: int
    pss_kb: int
    rss_kb: int

    @property
    def pss_per_job_kb(self) -> float:
        return self.pss_kb / self.jobs


def smaps_rollup_kb(pid: int) -> dict[str, int]:
    """The ``Pss`` and ``Rss`` lines of ``/proc/<pid>/smaps_rollup``, in kB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Rss"):
            values[key] = int(rest.split()[0])
    return values


def wait_until_running(jobs: list[RunningProcess]) -> None:
    """Until every launcher's command is the ``sleep`` (the launcher's start is over)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    waiting = {job.pid for job in jobs}
    while waiting:
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(waiting)} launchers did not start their sleep")
        table = process_table()
        for stat in table.values():
            if stat.ppid in waiting and stat.comm == "sleep":
                waiting.discard(stat.ppid)
        time.sleep(POLL_S)


def measure(launcher: Launcher, count: int, sleep_s: float, workdir: Path) -> Measured:
    jobs: list[RunningProcess] = []
    try:
        for index in range(count):
            jobs.append(
                spawn_job(
                    ["sleep", f"{sleep_s:g}"],
                    cwd=workdir,
                    env={"PATH": "/usr/bin:/bin"},
                    log_path=workdir / launcher / f"{index:04d}.log",
                    max_log_bytes=1_000_000,
                    launcher=launcher,
                )
            )
        wait_until_running(jobs)
        time.sleep(SETTLE_S)
        program = Path(f"/proc/{jobs[0].pid}/exe").resolve().name
        rollups = [smaps_rollup_kb(job.pid) for job in jobs]
    finally:
        for job in jobs:
            kill_job(job.pid, STOP_GRACE_S, reap=job._reap)
            if job.popen is not None:
                job.popen.wait()
    unrecorded = [job.pid for job in jobs if job.recorded_exit() < 0]
    if unrecorded:
        raise SystemExit(f"{launcher}: {len(unrecorded)} jobs ended without a recorded exit")
    return Measured(
        launcher=launcher,
        program=program,
        jobs=count,
        pss_kb=sum(rollup["Pss"] for rollup in rollups),
        rss_kb=sum(rollup["Rss"] for rollup in rollups),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--sleep-s", type=float, default=60.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if native_launcher() is None:
        print("the native launcher could not be built (see the line above)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="orch-launcher-memory-") as temporary:
        workdir = Path(temporary)
        results = {
            launcher: measure(launcher, args.jobs, args.sleep_s, workdir) for launcher in LAUNCHERS
        }
    native, python = results["native"], results["python"]
    ratio = native.pss_kb / python.pss_kb
    goal_kb = GOAL_PSS_PER_JOB_KB * args.jobs
    if args.json:
        print(
            json.dumps(
                {
                    "machine": platform.platform(),
                    "results": [
                        {**asdict(m), "pss_per_job_kb": m.pss_per_job_kb} for m in results.values()
                    ],
                    "pss_ratio_native_to_python": ratio,
                    "goal_pss_kb": goal_kb,
                    "goal_met": native.pss_kb <= goal_kb,
                },
                indent=2,
            )
        )
        return 0
    print(f"{args.jobs} running jobs (sleep {args.sleep_s:g}), launchers only:")
    for m in results.values():
        print(
            f"  {m.launcher:<7} ({m.program}): PSS {m.pss_kb / KB_PER_MB:7.1f} MB "
            f"({m.pss_per_job_kb:6.0f} kB a job), RSS {m.rss_kb / KB_PER_MB:7.1f} MB"
        )
    print(f"  PSS ratio native/python: {ratio:.3f}")
    verdict = "met" if native.pss_kb <= goal_kb else "NOT met"
    print(f"  goal: native PSS <= {goal_kb / KB_PER_MB:.0f} MB for {args.jobs} jobs: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
