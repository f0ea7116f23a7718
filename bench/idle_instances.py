"""Idle ``orch serve`` instances on one PostgreSQL database: transactions and CPU.

Theory of operation
-------------------
Decision 0027 lets an idle engine on PostgreSQL poll only every ``ENGINE_IDLE_POLL_S``
instead of every 50 ms tick while its ``wakeups`` loop listens for ``NOTIFY
orch_jobs`` (and decision 0029 the maintenance loops once the store is quiet).
This script measures what an idle instance costs, in one run, in three
configurations over a fresh database each (created on ``$ORCH_TEST_PG_URL``'s server,
dropped after):

* ``tick`` (the baseline): one instance whose engine polls every tick while idle, as
  before the wake-ups (``engine.idle_poll_s = ENGINE_TICK_S``);
* ``wakeups``: one instance as shipped;
* ``wakeups x N``: ``--instances`` instances as shipped (one leads the maintenance,
  the others are on standby).

Each instance is ``run_server`` in its own process on its own port with its own data
dir. After ``--settle-s`` (start-up, the first sweeps) the script reads the database's
committed and rolled-back transactions (``pg_stat_database``, which PostgreSQL flushes
about every second) and each process's CPU time (``/proc/<pid>/stat``), waits
``--window-s``, reads them again, and reports transactions a second and CPU % (of one
core, summed over the instances), each also as a ratio to the baseline's.

Usage::

    .venv/bin/python bench/idle_instances.py                  # 30 s windows, 2 instances
    .venv/bin/python bench/idle_instances.py --window-s 60 --instances 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import httpx
import sqlalchemy as sa

DEFAULT_PG_URL: Final = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S: Final = 120.0
# One instance: run_server with the engine's idle poll chosen by argv[2].
SERVE: Final = """
import sys
from pathlib import Path
from orchestrator.api.serve import run_server
from orchestrator.engine.core import ENGINE_TICK_S, Engine
from orchestrator.settings import load_settings
from orchestrator.store import Store

settings = load_settings(cwd=Path(sys.argv[1]))
store = Store.open(settings.effective_database_url)
engine = Engine(store, settings)
if sys.argv[2] == "tick":
    engine.idle_poll_s = ENGINE_TICK_S
sys.exit(run_server(settings, store, engine=engine))
"""


@dataclass
class Result:
    name: str
    instances: int
    transactions_per_s: float
    cpu_percent: float
    transactions_ratio: float = 1.0
    cpu_ratio: float = 1.0


def pg_admin_url() -> sa.URL:
    url = sa.make_url(os.environ.get("ORCH_TEST_PG_URL") or DEFAULT_PG_URL)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


@contextmanager
def fresh_database() -> Iterator[str]:
    admin = sa.create_engine(pg_admin_url(), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    name = f"orch_idle_{secrets.token_hex(5)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield pg_admin_url().set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def transactions(url: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT xact_commit + xact_rollback FROM pg_stat_database"
                        " WHERE datname = current_database()"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()


def start(root: Path, url: str, mode: str, index: int) -> subprocess.Popen[bytes]:
    home = root / f"instance-{index}"
    home.mkdir()
    port = free_port()
    (home / "orch.toml").write_text(
        f"database_url = {json.dumps(url)}\ndata_dir = {json.dumps(str(home / 'data'))}\n"
        f'host = "127.0.0.1"\nport = {port}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    with (home / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(home), mode],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"orch serve exited: {(home / 'serve.log').read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).is_success:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit("orch serve did not answer /health")


def measure(name: str, mode: str, instances: int, settle_s: float, window_s: float) -> Result:
    with tempfile.TemporaryDirectory(prefix="orch-idle-") as tmp, fresh_database() as url:
        processes = [start(Path(tmp), url, mode, n) for n in range(instances)]
        try:
            time.sleep(settle_s)
            tx0, cpu0 = transactions(url), sum(cpu_seconds(p.pid) for p in processes)
            began = time.monotonic()
            time.sleep(window_s)
            # pg_stat_database is flushed about every second: let the last one land.
            elapsed = time.monotonic() - began
            cpu1 = sum(cpu_seconds(p.pid) for p in processes)
            time.sleep(1.5)
            tx1 = transactions(url)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=60)
    return Result(
        name,
        instances,
        transactions_per_s=round((tx1 - tx0 - 1) / elapsed, 2),  # minus our own read
        cpu_percent=round(100 * (cpu1 - cpu0) / elapsed, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window-s", type=float, default=30.0, help="measured idle time")
    parser.add_argument("--settle-s", type=float, default=40.0, help="idle time before it")
    parser.add_argument("--instances", type=int, default=2, help="instances of the last run")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    base = measure("tick (baseline)", "tick", 1, args.settle_s, args.window_s)
    results = [
        base,
        measure("wakeups", "wakeups", 1, args.settle_s, args.window_s),
        measure(
            f"wakeups x {args.instances}",
            "wakeups",
            args.instances,
            args.settle_s,
            args.window_s,
        ),
    ]
    for result in results:
        result.transactions_ratio = round(
            result.transactions_per_s / base.transactions_per_s if base.transactions_per_s else 0,
            3,
        )
        result.cpu_ratio = round(
            result.cpu_percent / base.cpu_percent if base.cpu_percent else 0, 3
        )
    if args.json:
        print(json.dumps([asdict(result) for result in results], indent=2))
        return
    print(
        f"idle orch serve on PostgreSQL, {args.window_s:.0f} s windows after {args.settle_s:.0f} s"
    )
    print(f"{'configuration':<18} {'inst':>4} {'tx/s':>8} {'ratio':>6} {'CPU %':>7} {'ratio':>6}")
    for r in results:
        print(
            f"{r.name:<18} {r.instances:>4} {r.transactions_per_s:>8.2f} "
            f"{r.transactions_ratio:>6.3f} {r.cpu_percent:>7.2f} {r.cpu_ratio:>6.3f}"
        )


if __name__ == "__main__":
    main()
