"""The leader's PostgreSQL advisory lock (``store/advisory.py``, decision 0027).

Two holders over one real database: only one gets the lock; it is free again when the
holder releases it or when the holder's connection is cut (``pg_terminate_backend``, as
the server does when a leader's process dies), and the cut holder notices it lost it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from orchestrator.store import Store
from orchestrator.store.advisory import AdvisoryLock

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(pg_database: str) -> Iterator[Store]:
    opened = Store.open(pg_database)
    yield opened
    opened.close()


def test_one_holder_at_a_time_and_a_cut_connection_frees_it(store: Store) -> None:
    first, second = AdvisoryLock(store, name="first"), AdvisoryLock(store, name="second")
    try:
        assert first.holder() is None
        assert first.try_acquire()
        assert (first.holder(), second.holder()) == ("first", "first")
        assert first.try_acquire()  # re-entrant for its holder
        assert not second.try_acquire()
        assert first.still_held()

        with store.engine.connect() as admin:
            cut = admin.execute(
                sa.text(
                    # pg_locks is the whole server's: only this database's holder.
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND objid = :key AND granted AND database ="
                    " (SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"key": first.key},
            ).all()
            admin.commit()
        assert cut == [(True,)]

        assert not first.still_held()  # the holder notices
        assert second.try_acquire()
        assert not first.try_acquire()
        assert first.holder() == "second"
    finally:
        first.close()
        second.close()


def test_release_frees_it(store: Store) -> None:
    first, second = AdvisoryLock(store), AdvisoryLock(store)
    try:
        assert first.try_acquire()
        first.release()
        assert not first.still_held()
        assert second.try_acquire()
    finally:
        first.close()
        second.close()


def test_sqlite_has_no_advisory_lock(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("sqlite") / "orch.db"
    sqlite = Store.open(f"sqlite:///{path}")
    try:
        with pytest.raises(ValueError, match="PostgreSQL"):
            AdvisoryLock(sqlite)
    finally:
        sqlite.close()
