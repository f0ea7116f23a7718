"""What an idle ``orch serve`` costs: CPU and database statements with nothing to do.

Issue 12 asks for no measurable CPU at idle and at most one query a second on
PostgreSQL. This starts a real ``orch serve`` (its own data dir, port and database: a
fresh SQLite file, or a fresh PostgreSQL database dropped afterwards), lets it settle
(40 s: past the 30 s after which no work moving counts as quiet),
then over ``--seconds`` reads

* its **CPU**: user + system time of the process and its threads from
  ``/proc/<pid>/stat``, as a share of the wall time;
* its **database statements**: ``orch_db_statements_total`` from ``GET /metrics`` at the
  start and the end, less what one scrape itself sends (measured by two back-to-back
  scrapes first);
* on PostgreSQL, also the database's **transactions** (``pg_stat_database``:
  ``xact_commit + xact_rollback`` of the fresh database, less the scrapes').

The baseline, measured the same way in the same run, is an idle Python process
(``time.sleep``): the floor of what the machine reports as CPU for a process doing
nothing. Figures and the command: docs/benchmarks.md.

    .venv/bin/python bench/idle.py                  # both databases, 60 s each
    .venv/bin/python bench/idle.py --seconds 20 --database sqlite --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import httpx
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

DEFAULT_SECONDS: Final = 60.0
# Past the store's QUIET_AFTER_S (30 s): the maintenance loops have slowed down.
SETTLE_S: Final = 40.0
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 20.0
LISTENING: Final = "orch serve: listening on"
PG_ADMIN_URL: Final = os.environ.get(
    "ORCH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
STATEMENTS: Final = "orch_db_statements_total"
ORCH: Final = Path(sys.executable).with_name("orch")


class BenchError(Exception):
    """The benchmark could not run (the message says why)."""


@dataclass
class Idle:
    """One process watched for ``seconds``."""

    what: str
    seconds: float
    cpu_percent: float
    statements_per_s: float | None = None
    transactions_per_s: float | None = None


def cpu_seconds(pid: int) -> float:
    """User + system time of ``pid`` (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def baseline(seconds: float) -> Idle:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1e6)"])
    try:
        time.sleep(1.0)
        cpu, wall = cpu_seconds(sleeper.pid), time.monotonic()
        time.sleep(seconds)
        used, took = cpu_seconds(sleeper.pid) - cpu, time.monotonic() - wall
    finally:
        sleeper.kill()
        sleeper.wait()
    return Idle("idle python (baseline)", took, 100 * used / took)


def statements(client: httpx.Client) -> float:
    answer = client.get("/metrics")
    answer.raise_for_status()
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == STATEMENTS:
                return sample.value
    raise BenchError(f"GET /metrics has no {STATEMENTS}; is this orch serve too old?")


@contextmanager
def fresh_postgres_database() -> Iterator[tuple[str, sa.Engine]]:
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"orch_idle_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        raise BenchError(
            f"cannot create a database: {str(exc.orig).strip().splitlines()[0]}; "
            "start PostgreSQL or set ORCH_TEST_PG_URL"
        ) from None
    try:
        url = sa.make_url(PG_ADMIN_URL).set(database=name)
        yield url.render_as_string(hide_password=False), admin
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def pg_transactions(admin: sa.Engine, url: str) -> int:
    name = sa.make_url(url).database
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        value = conn.execute(
            sa.text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :n"),
            {"n": name},
        ).scalar_one()
    return int(value)


@contextmanager
def serving(root: Path, database_url: str) -> Iterator[tuple[int, str, str]]:
    """``orch serve`` in its own session; (pid, base URL, operator token)."""
    with tempfile.TemporaryDirectory() as scratch:
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import socket; s=socket.socket(); s.bind(('127.0.0.1',0));"
                "print(s.getsockname()[1])",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        port = int(probe.stdout)
        env = {**os.environ, "ORCH_DATABASE_URL": database_url}
        subprocess.run([str(ORCH), "init"], cwd=root, env=env, check=True, capture_output=True)
        token = (root / ".orch" / "api-token").read_text().strip()
        log = Path(scratch) / "serve.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                [str(ORCH), "serve", "--port", str(port)],
                cwd=root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while LISTENING not in log.read_text(errors="replace"):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"orch serve did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.1)
            yield server.pid, f"http://127.0.0.1:{port}", token
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def watch(database: str, seconds: float) -> Idle:
    with tempfile.TemporaryDirectory(prefix="orch-idle-") as tmp:
        root = Path(tmp)
        with _database(database, root) as (url, admin), serving(root, url) as (pid, base, token):
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
                time.sleep(SETTLE_S)
                # What one scrape sends (and, on PostgreSQL, how many transactions).
                tx0 = pg_transactions(admin, url) if admin is not None else 0
                first, second = statements(client), statements(client)
                scrape_tx = (pg_transactions(admin, url) - tx0) / 2 if admin else 0.0
                scrape = second - first
                start_tx = pg_transactions(admin, url) if admin is not None else 0
                cpu, wall = cpu_seconds(pid), time.monotonic()
                start = statements(client)
                time.sleep(seconds)
                end = statements(client)
                used, took = cpu_seconds(pid) - cpu, time.monotonic() - wall
                end_tx = pg_transactions(admin, url) if admin is not None else 0
        sent = max(0.0, end - start - scrape)
        idle = Idle(f"orch serve, {database}", took, 100 * used / took, sent / took)
        if admin is not None:
            idle.transactions_per_s = max(0.0, end_tx - start_tx - 2 * scrape_tx) / took
        return idle


@contextmanager
def _database(database: str, root: Path) -> Iterator[tuple[str, sa.Engine | None]]:
    if database == "sqlite":
        yield f"sqlite:///{root / 'orch.db'}", None
        return
    with fresh_postgres_database() as (url, admin):
        yield url, admin


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    parser.add_argument(
        "--database", choices=("sqlite", "postgres", "both"), default="both", help="default both"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    databases = ("sqlite", "postgres") if args.database == "both" else (args.database,)
    try:
        results = [baseline(args.seconds)]
        for database in databases:
            print(
                f"watching an idle orch serve on {database} for {args.seconds:g} s...",
                file=sys.stderr,
                flush=True,
            )
            results.append(watch(database, args.seconds))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
        return 0
    floor = results[0].cpu_percent
    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, {args.seconds:g} s each"
    )
    print(
        f"{'process':<28} {'CPU %':>7} {'minus baseline':>15} {'statements/s':>13} "
        f"{'transactions/s':>15}"
    )
    for r in results:
        stmts = "" if r.statements_per_s is None else f"{r.statements_per_s:.2f}"
        txs = "" if r.transactions_per_s is None else f"{r.transactions_per_s:.2f}"
        print(
            f"{r.what:<28} {r.cpu_percent:>7.2f} {r.cpu_percent - floor:>15.2f} "
            f"{stmts:>13} {txs:>15}"
        )
    print("goal (issue 12): no measurable CPU at idle; at most 1 query a second on PostgreSQL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
