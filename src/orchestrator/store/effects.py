"""The ``effects`` table: the effect journal's rows (decision 0002).

An effect is recorded as an ``intent`` before it runs and completed as ``done`` or
``failed`` after; an intent of an earlier lease epoch is closed as ``interrupted`` when
a later run decides about it. The writes run inside the caller's transaction, after it
checked the lease (:meth:`orchestrator.effects.leases.LeaseManager.check`), so a fenced-off
owner writes nothing. Deciding what to do is :mod:`orchestrator.effects.journal`'s business.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import sqlalchemy as sa

from orchestrator.store.schema import effects, tasks
from orchestrator.store.store import Store, Tx

__all__ = [
    "INTENT",
    "EffectRows",
    "close_intent",
    "close_intents",
    "open_intent_epochs",
    "record_effect",
    "set_intent_result",
]

INTENT: Final = "intent"


def _same_effect(task_id: int, transition: str, name: str) -> sa.ColumnElement[bool]:
    return sa.and_(
        effects.c.task_id == task_id,
        effects.c.transition == transition,
        effects.c.effect == name,
        effects.c.status == INTENT,
    )


# --- inside the caller's (lease-checked) transaction ------------------------------------
def record_effect(
    tx: Tx,
    *,
    key: str,
    task_id: int,
    transition: str,
    name: str,
    lease_epoch: int,
    actor: str,
    status: str,
    result: Mapping[str, Any] | None = None,
) -> None:
    """Write a journal row: an ``intent``, or an effect found ``done`` in the world."""
    now = time.time()
    tx.conn.execute(
        effects.insert().values(
            task_id=task_id,
            transition=transition,
            effect=name,
            lease_epoch=lease_epoch,
            idempotency_key=key,
            status=status,
            actor=actor,
            result=dict(result) if result is not None else None,
            created_at=now,
            completed_at=None if status == INTENT else now,
        )
    )


def open_intent_epochs(tx: Tx, task_id: int, transition: str, name: str) -> list[int]:
    """The lease epochs of this effect's intents still open, oldest first."""
    rows = tx.conn.execute(
        sa.select(effects.c.lease_epoch).where(_same_effect(task_id, transition, name))
    ).scalars()
    return sorted(int(epoch) for epoch in rows)


def close_intents(tx: Tx, task_id: int, transition: str, name: str, why: str) -> None:
    """Close this effect's open intents as ``interrupted``: a later run decides."""
    tx.conn.execute(
        effects.update()
        .where(_same_effect(task_id, transition, name))
        .values(status="interrupted", error=why, completed_at=time.time())
    )


def close_intent(tx: Tx, key: str, *, status: str, **values: Any) -> None:
    """Complete the open intent ``key`` as ``status`` (done or failed) with ``values``."""
    tx.conn.execute(
        effects.update()
        .where(effects.c.idempotency_key == key, effects.c.status == INTENT)
        .values(status=status, completed_at=time.time(), **values)
    )


def set_intent_result(tx: Tx, key: str, result: Mapping[str, Any]) -> None:
    """Record on the open intent ``key`` what is running it (its pid)."""
    tx.conn.execute(
        effects.update()
        .where(effects.c.idempotency_key == key, effects.c.status == INTENT)
        .values(result=dict(result))
    )


class EffectRows:
    """Reads of the journal, each in its own connection."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def open_intents_in_repository_of(self, task_id: int) -> list[dict[str, Any]]:
        """Every open intent of any task in ``task_id``'s repository, with its task's id
        and work item (an effect process of another task may still run there)."""
        repository = sa.select(tasks.c.repository).where(tasks.c.id == task_id).scalar_subquery()
        query = (
            sa.select(
                effects.c.result,
                effects.c.lease_epoch,
                effects.c.effect,
                effects.c.transition,
                tasks.c.id,
                tasks.c.work_item,
            )
            .select_from(effects.join(tasks, tasks.c.id == effects.c.task_id))
            .where(effects.c.status == INTENT, tasks.c.repository == repository)
        )
        with self.store.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def of_task(self, task_id: int) -> list[dict[str, Any]]:
        """Every journal row of a task, oldest first."""
        query = sa.select(effects).where(effects.c.task_id == task_id).order_by(effects.c.id)
        with self.store.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def open_intents(self) -> list[dict[str, Any]]:
        """Intents without a completion, over all tasks."""
        query = sa.select(effects).where(effects.c.status == INTENT).order_by(effects.c.id)
        with self.store.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]
