"""Inbound webhook deliveries: replay protection, and the reads that find a delivery's
task. Every operation is one short transaction with a name that says what it does.

A delivery id is *claimed* by a unique row (source, delivery id) whose ``outcome`` is
``received`` until the delivery is recorded or released. A claim still ``received``
after ``stale_after_s`` belongs to a request that died mid-way (the process was killed
between the claim and its outcome): the sender saw no answer, so its redelivery takes
the claim over instead of being answered ``duplicate`` and lost.
"""

from __future__ import annotations

import time
from typing import Final

import sqlalchemy as sa

from orchestrator.store.records import Task
from orchestrator.store.schema import tasks, webhook_deliveries
from orchestrator.store.store import Store

__all__ = ["RECEIVED", "DeliveryStore"]

# The outcome of a claimed delivery not decided yet.
RECEIVED: Final = "received"
MAX_OUTCOME_CHARS: Final = 200


def _where(source: str, delivery_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(
        webhook_deliveries.c.source == source, webhook_deliveries.c.delivery_id == delivery_id
    )


class DeliveryStore:
    """The ``webhook_deliveries`` table and the task lookups of webhooks."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def claim_delivery(
        self, source: str, delivery_id: str, *, stale_after_s: float, now: float | None = None
    ) -> bool:
        """Claim a delivery id; False when it was seen (and not abandoned) before."""
        now = time.time() if now is None else now
        try:
            with self.store.transaction() as tx:
                tx.conn.execute(
                    webhook_deliveries.insert().values(
                        source=source, delivery_id=delivery_id, outcome=RECEIVED, received_at=now
                    )
                )
        except sa.exc.IntegrityError:
            return self._take_over_abandoned(source, delivery_id, stale_after_s, now)
        return True

    def _take_over_abandoned(
        self, source: str, delivery_id: str, stale_after_s: float, now: float
    ) -> bool:
        with self.store.transaction() as tx:
            won = tx.conn.execute(
                webhook_deliveries.update()
                .where(
                    _where(source, delivery_id),
                    webhook_deliveries.c.outcome == RECEIVED,
                    webhook_deliveries.c.received_at <= now - stale_after_s,
                )
                .values(received_at=now)
            ).rowcount
        return bool(won == 1)

    def remember_delivery(
        self, source: str, delivery_id: str, outcome: str, task_id: int | None
    ) -> bool:
        """Record a delivery with its outcome at once; False when it was seen before."""
        try:
            with self.store.transaction() as tx:
                tx.conn.execute(
                    webhook_deliveries.insert().values(
                        source=source,
                        delivery_id=delivery_id,
                        task_id=task_id,
                        outcome=outcome[:MAX_OUTCOME_CHARS],
                        received_at=time.time(),
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    def record_delivery(
        self, source: str, delivery_id: str, outcome: str, task_id: int | None
    ) -> None:
        """What became of a claimed delivery (it is remembered: a replay is a duplicate)."""
        with self.store.transaction() as tx:
            tx.conn.execute(
                webhook_deliveries.update()
                .where(_where(source, delivery_id))
                .values(outcome=outcome[:MAX_OUTCOME_CHARS], task_id=task_id)
            )

    def release_delivery(self, source: str, delivery_id: str) -> None:
        """Forget a claimed delivery, so a redelivery is processed again."""
        with self.store.transaction() as tx:
            tx.conn.execute(webhook_deliveries.delete().where(_where(source, delivery_id)))

    def delivery_outcome(self, source: str, delivery_id: str) -> str | None:
        """The recorded outcome of a delivery; None if it was never claimed."""
        with self.store.engine.connect() as conn:
            row = conn.execute(
                sa.select(webhook_deliveries.c.outcome).where(_where(source, delivery_id))
            ).first()
        return None if row is None else str(row.outcome)

    # --- finding a delivery's task ---------------------------------------------------------
    def tasks_on_branch(self, branch: str) -> list[Task]:
        """Every task (in any repository) whose branch is ``branch``."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(tasks).where(tasks.c.branch == branch)).all()
        return [Task(**row._mapping) for row in rows]

    def task_of_origin(self, key: str) -> Task | None:
        """The (first) task created from the tracker issue whose origin key is ``key``
        (``kernel/origins.py``), by its indexed column."""
        with self.store.engine.connect() as conn:
            row = conn.execute(
                sa.select(tasks).where(tasks.c.origin_key == key).order_by(tasks.c.id).limit(1)
            ).first()
        return None if row is None else Task(**row._mapping)
