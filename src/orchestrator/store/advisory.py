"""A PostgreSQL session advisory lock held on a connection of its own.

``pg_try_advisory_lock`` takes a lock that belongs to the database session, not to a
transaction: it is held until it is unlocked or the session ends. So the lock lives on a
dedicated connection (outside the store's pool, where a checkout would hand it to the
next borrower), and it is lost exactly when that connection is: the holder's process
dies (the kernel closes its socket, the server ends the session) or the network drops
it. The connection asks for TCP keepalives and a user timeout, so a silent peer is
noticed in seconds rather than after the system's default of hours.

Advisory locks are scoped to the database, so instances on other databases of the same
server never meet.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator.store.store import Store

__all__ = ["PG_LEADER_LOCK_ID", "AdvisoryLock"]

log = logging.getLogger("orchestrator.store.advisory")

# Arbitrary constant beside PG_MIGRATION_LOCK_ID: the lock the maintenance leader holds.
PG_LEADER_LOCK_ID: Final = 7_114_066
# libpq: keepalives after 5 s idle, every 2 s, 3 lost = dead; unacknowledged data for
# 10 s = dead (tcp_user_timeout, milliseconds).
KEEPALIVE_ARGS: Final = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
    "connect_timeout": 5,
}
# The holding session's application_name is this prefix and the holder's name.
APPLICATION_PREFIX: Final = "orch-leader:"
# Who holds the lock: the application_name of the granted session.
HOLDER_QUERY: Final = sa.text(
    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND ((l.classid::bigint << 32) | l.objid::bigint) = :key LIMIT 1"
)
# Whether this session holds the lock (a bigint key is stored as classid:objid).
HELD_QUERY: Final = sa.text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid() AND objsubid = 1"
    " AND ((classid::bigint << 32) | objid::bigint) = :key)"
)


class AdvisoryLock:
    """One session advisory lock: try to take it, check it is still held, release it."""

    def __init__(self, store: Store, key: int = PG_LEADER_LOCK_ID, *, name: str = "") -> None:
        """``name`` labels the holding session (its ``application_name``), so any session
        can tell who holds the lock (:meth:`holder`)."""
        if store.engine.dialect.name != "postgresql":
            raise ValueError("advisory locks are PostgreSQL's")
        self.key = key
        self._store = store
        connect_args: dict[str, object] = dict(KEEPALIVE_ARGS)
        if name:
            connect_args["application_name"] = f"{APPLICATION_PREFIX}{name}"
        self._engine = sa.create_engine(
            store.engine.url, poolclass=sa.NullPool, connect_args=connect_args
        )
        self._conn: Connection | None = None

    def holder(self) -> str | None:
        """The ``name`` of the session holding the lock now (None: nobody, or unnamed);
        read through the store's pool, from ``pg_locks`` and ``pg_stat_activity``."""
        with self._store.engine.connect() as conn:
            found = conn.execute(HOLDER_QUERY, {"key": self.key}).scalar()
        if not isinstance(found, str) or not found.startswith(APPLICATION_PREFIX):
            return None
        return found.removeprefix(APPLICATION_PREFIX)

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; True when this session holds it now."""
        try:
            if self._conn is None:
                self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            taken = self._conn.execute(
                sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}
            )
            return bool(taken.scalar())
        except sa.exc.DBAPIError:
            self._drop()
            raise

    def still_held(self) -> bool:
        """Whether the lock is still ours; False (and the connection dropped) when the
        connection broke or the lock is gone."""
        if self._conn is None:
            return False
        try:
            held = bool(self._conn.execute(HELD_QUERY, {"key": self.key}).scalar())
        except sa.exc.DBAPIError as exc:
            log.warning("the advisory lock's connection broke: %s", str(exc).splitlines()[0])
            held = False
        if not held:
            self._drop()
        return held

    def release(self) -> None:
        """Unlock and close the connection (closing alone would release it too)."""
        if self._conn is not None:
            with contextlib.suppress(sa.exc.DBAPIError):
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
        self._drop()

    def close(self) -> None:
        self.release()
        self._engine.dispose()

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
