"""LISTEN for enqueued jobs on PostgreSQL, on a connection of its own.

:meth:`~orchestrator.store.store.Tx.enqueue_job` sends ``NOTIFY orch_jobs`` in the
enqueuing transaction (PostgreSQL delivers it at commit, to every listening session of
the database, the sender's included). :class:`JobListener` holds the ``LISTEN`` on a
dedicated autocommit connection with TCP keepalives; :meth:`JobListener.wait` blocks
until a notification comes or the timeout passes, and raises when the connection
breaks. A notification sent while nobody listened is lost for good: the listener's user
polls anyway, slowly (see :mod:`orchestrator.engine.wakeups`).
"""

from __future__ import annotations

import contextlib

import psycopg
from psycopg.conninfo import make_conninfo

from orchestrator.store.advisory import KEEPALIVE_ARGS
from orchestrator.store.store import JOBS_CHANNEL, Store

__all__ = ["JobListener"]


class JobListener:
    """``LISTEN orch_jobs`` on a connection of its own; one thread uses it."""

    def __init__(self, store: Store) -> None:
        if store.engine.dialect.name != "postgresql":
            raise ValueError("LISTEN/NOTIFY is PostgreSQL's")
        url = store.engine.url.set(drivername="postgresql")
        self._conninfo = make_conninfo(url.render_as_string(hide_password=False), **KEEPALIVE_ARGS)
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def connect(self) -> None:
        """Open the connection and listen (again, after a drop)."""
        self.close()
        conn = psycopg.connect(self._conninfo, autocommit=True)
        conn.execute(f"LISTEN {JOBS_CHANNEL}")
        self._conn = conn

    def backend_pid(self) -> int | None:
        """The server process of the listening session (tests cut it)."""
        return None if self._conn is None else int(self._conn.info.backend_pid)

    def wait(self, timeout_s: float) -> bool:
        """True when a job was enqueued (a notification came) within ``timeout_s``;
        raises ``psycopg.OperationalError`` when the connection broke."""
        if self._conn is None:
            self.connect()
        assert self._conn is not None
        came = False
        for _notification in self._conn.notifies(timeout=timeout_s, stop_after=1):
            came = True
        return came

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
