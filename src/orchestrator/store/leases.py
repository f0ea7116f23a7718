"""The ``instances`` and ``transition_lease`` tables (decision 0002).

Every operation has a name that says what it does; whether an owner is alive, and so
whether a lease may be taken over, is :mod:`orchestrator.effects.leases`' business. The lease
row's ``lease_epoch`` is the fencing token: taking a lease is a compare-and-swap from the
epoch that was read, releasing one is fenced by (epoch, owner), and :func:`lease_for_share`
locks the row ``FOR SHARE`` on PostgreSQL so a concurrent take-over waits for the
transaction that checks it (SQLite's ``BEGIN IMMEDIATE`` already serialises writers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Final

import sqlalchemy as sa

from orchestrator.store.schema import instances, tasks, transition_lease
from orchestrator.store.store import Store, Tx

__all__ = [
    "RELEASED",
    "LeaseStore",
    "lease_for_share",
    "lease_row",
    "release_lease",
    "take_lease",
]

# What a released lease row holds: no owner, no transition.
RELEASED: Final[Mapping[str, Any]] = {
    "transition": None,
    "actor": None,
    "owner_instance": None,
    "owner_host": None,
    "owner_pid": None,
    "owner_boot_id": None,
    "acquired_at": None,
}


# --- inside the caller's transaction -----------------------------------------------------
def lease_row(tx: Tx, task_id: int, *, for_share: bool = False) -> dict[str, Any] | None:
    """The task's lease row as it is now (a mapping of its columns); ``for_share`` locks
    it on PostgreSQL, so a concurrent take-over waits for ``tx``."""
    query = sa.select(transition_lease).where(transition_lease.c.task_id == task_id)
    if for_share:
        query = query.with_for_update(read=True)
    row = tx.conn.execute(query).first()
    return None if row is None else dict(row._mapping)


def take_lease(tx: Tx, task_id: int, *, from_epoch: int, owner: Mapping[str, Any]) -> bool:
    """Move the lease from ``from_epoch`` to the next epoch, held by ``owner`` (its
    columns); False when another taker moved it first."""
    won = tx.conn.execute(
        transition_lease.update()
        .where(
            transition_lease.c.task_id == task_id,
            transition_lease.c.lease_epoch == from_epoch,
        )
        .values(lease_epoch=from_epoch + 1, released_at=None, **owner)
    ).rowcount
    return bool(won == 1)


def lease_for_share(tx: Tx, task_id: int) -> tuple[int, str | None] | None:
    """(epoch, owner boot id) of the task's lease, the row locked for share."""
    row = tx.conn.execute(
        sa.select(transition_lease.c.lease_epoch, transition_lease.c.owner_boot_id)
        .where(transition_lease.c.task_id == task_id)
        .with_for_update(read=True)
    ).first()
    return None if row is None else (int(row.lease_epoch), row.owner_boot_id)


def release_lease(
    tx: Tx, task_id: int, *, epoch: int, owner_boot_id: str | None, at: float
) -> bool:
    """Release the lease still at ``epoch`` (and, given ``owner_boot_id``, still held by
    it); False when it was reclaimed or released meanwhile."""
    condition = sa.and_(
        transition_lease.c.task_id == task_id, transition_lease.c.lease_epoch == epoch
    )
    if owner_boot_id is not None:
        condition = sa.and_(condition, transition_lease.c.owner_boot_id == owner_boot_id)
    released = tx.conn.execute(
        transition_lease.update().where(condition).values({**RELEASED, "released_at": at})
    ).rowcount
    return bool(released == 1)


class LeaseStore:
    """The lease and instance rows, each operation its own short transaction."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- instances ---------------------------------------------------------------------
    def register_instance(self, values: Mapping[str, Any]) -> None:
        """Record a process start (``values``: its columns) once."""
        with self.store.transaction() as tx:
            exists = tx.conn.execute(
                sa.select(instances.c.boot_id).where(instances.c.boot_id == values["boot_id"])
            ).first()
            if exists is None:
                tx.conn.execute(instances.insert().values(**values))

    def beat(self, boot_id: str, at: float) -> None:
        with self.store.transaction() as tx:
            tx.conn.execute(
                instances.update().where(instances.c.boot_id == boot_id).values(heartbeat_at=at)
            )

    def mark_stopped(self, boot_id: str, at: float) -> None:
        with self.store.transaction() as tx:
            tx.conn.execute(
                instances.update().where(instances.c.boot_id == boot_id).values(stopped_at=at)
            )

    def host_last_seen(self, host: str) -> float | None:
        """The newest heartbeat of any process start on ``host``, stopped ones included."""
        with self.store.engine.connect() as conn:
            seen = conn.execute(
                sa.select(sa.func.max(instances.c.heartbeat_at)).where(instances.c.host == host)
            ).scalar()
        return None if seen is None else float(seen)

    def instance(self, boot_id: str) -> dict[str, Any] | None:
        """The instance row of a process start (a mapping of its columns)."""
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(instances).where(instances.c.boot_id == boot_id)).first()
        return None if row is None else dict(row._mapping)

    def open_instances(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` process starts not marked stopped (their columns)."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(instances)
                .where(instances.c.stopped_at.is_(None))
                .order_by(instances.c.started_at.desc(), instances.c.boot_id)
                .limit(limit)
            ).all()
        return [dict(row._mapping) for row in rows]

    # --- leases ------------------------------------------------------------------------
    def ensure_row(self, task_id: int) -> None:
        """The task has a lease row (epoch 0, free) afterwards; a racing insert is fine."""
        with contextlib.suppress(sa.exc.IntegrityError), self.store.transaction() as tx:
            present = tx.conn.execute(
                sa.select(transition_lease.c.task_id).where(transition_lease.c.task_id == task_id)
            ).first()
            if present is None:
                tx.conn.execute(transition_lease.insert().values(task_id=task_id, lease_epoch=0))

    def held(self) -> list[dict[str, Any]]:
        """Every held lease row with its task's work item, by task id."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(transition_lease, tasks.c.work_item)
                .join(tasks, tasks.c.id == transition_lease.c.task_id)
                .where(transition_lease.c.owner_boot_id.is_not(None))
                .order_by(transition_lease.c.task_id)
            ).all()
        return [dict(row._mapping) for row in rows]
