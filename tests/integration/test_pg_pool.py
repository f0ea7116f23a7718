"""PostgreSQL's pool pings only a rested connection (``store._postgres_engine``, issue 12).

What goes over the wire is read from libpq's own protocol trace of every connection the
store's pool opens (``PGconn.trace``), so the test counts the pings the server really
receives, not what our code believes it sent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import sqlalchemy as sa

from orchestrator.store import Store
from orchestrator.store.store import PING_AFTER_REST_S

pytestmark = pytest.mark.postgres

READS: Final = 20
# What SQLAlchemy's psycopg dialect sends as a ping (an empty query), or a plain one.
PINGS: Final = ('Query\t ";"', 'Query\t "SELECT 1"')


@pytest.fixture
def traced(pg_database: str, tmp_path: Path) -> Iterator[tuple[Store, Path]]:
    store = Store.open(pg_database)
    trace = tmp_path / "libpq.trace"
    sink = trace.open("w")
    files: list[Any] = [sink]

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.pgconn.trace(sink.fileno())

    sa.event.listen(store.engine, "connect", on_connect)
    store.engine.dispose()  # connections opened by the migration check are not traced
    try:
        yield store, trace
    finally:
        store.close()
        for file in files:
            file.close()


def pings(trace: Path) -> int:
    lines = trace.read_text(errors="replace").splitlines()
    return sum(line.endswith(PINGS) for line in lines)


def test_back_to_back_transactions_send_no_ping(traced: tuple[Store, Path]) -> None:
    """Seen failing with ``pool_pre_ping=True``: one ping per read, 20 in all."""
    store, trace = traced
    for _ in range(READS):
        store.list_tasks()
    assert "tasks" in trace.read_text(errors="replace")  # the trace sees the reads
    assert pings(trace) == 0


def test_a_rested_connection_whose_server_session_died_is_replaced(
    traced: tuple[Store, Path], pg_database: str
) -> None:
    """A database restarted (here: the session terminated) while the pool rested: the
    next read pings, finds the connection gone and uses a new one, without an error.
    Seen failing with no ping at all: the read raised ``OperationalError``."""
    store, trace = traced
    with store.engine.connect() as conn:
        backend = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    admin = sa.create_engine(pg_database, poolclass=sa.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
    finally:
        admin.dispose()
    time.sleep(PING_AFTER_REST_S + 0.2)  # the pooled connection rests
    assert store.list_tasks() == []
    assert pings(trace) >= 1
