"""The outbox table: messages written in the caller's transaction, delivered once.

Every operation has a name that says what it does. Writing a message happens inside
the caller's transaction (:func:`insert_message`, the card coalescing of
:func:`pending_cards` and :func:`set_payload`), so a message exists exactly when the
change it announces committed. Delivery claims a row with a compare-and-swap on (status,
attempts, and for a take-over the previous owner) that stamps the claimer and bumps
``attempts`` (the claim's fencing token); every later write of the claim is fenced by
(status ``sending``, owner, attempts), so an owner whose claim was taken over writes
nothing. What to deliver, when, and what a failure means is
:mod:`orchestrator.outbox.delivery`'s business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa

from orchestrator.store.records import _Record
from orchestrator.store.schema import outbox
from orchestrator.store.store import Store, Tx

__all__ = [
    "OutboxMessage",
    "OutboxStatus",
    "OutboxStore",
    "insert_message",
    "pending_cards",
    "set_payload",
]


class OutboxStatus:
    PENDING: Final = "pending"
    SENDING: Final = "sending"
    SENT: Final = "sent"
    FAILED: Final = "failed"


@dataclass(frozen=True)
class OutboxMessage(_Record):
    """One outbox row."""

    id: int
    task_id: int | None
    channel: str
    kind: str
    idempotency_key: str
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    sent_at: float | None
    claimed_by: str | None
    claimed_at: float | None


def _message(row: sa.Row[Any]) -> OutboxMessage:
    values = dict(row._mapping)
    values["payload"] = dict(values.get("payload") or {})
    return OutboxMessage(**values)


# --- inside the caller's transaction -----------------------------------------------------
def insert_message(
    tx: Tx,
    *,
    channel: str,
    kind: str,
    key: str,
    payload: Mapping[str, Any],
    task_id: int | None,
    next_attempt_at: float,
    created_at: float,
) -> int:
    """Write one pending message; its id. A ``key`` met twice is a DuplicateError."""
    result = tx.conn.execute(
        outbox.insert().values(
            task_id=task_id,
            channel=channel,
            kind=kind,
            idempotency_key=key,
            payload=dict(payload),
            status=OutboxStatus.PENDING,
            attempts=0,
            next_attempt_at=next_attempt_at,
            created_at=created_at,
        )
    )
    inserted = result.inserted_primary_key
    assert inserted is not None
    tx.moved = True  # delivery wakes at commit
    return int(inserted[0])


def pending_cards(tx: Tx, *, task_id: int, channel: str, kind: str) -> list[OutboxMessage]:
    """The task's messages of ``kind`` on ``channel`` not yet picked up, oldest first."""
    query = (
        sa.select(outbox)
        .where(
            outbox.c.task_id == task_id,
            outbox.c.channel == channel,
            outbox.c.kind == kind,
            outbox.c.status == OutboxStatus.PENDING,
        )
        .order_by(outbox.c.id)
    )
    return [_message(row) for row in tx.conn.execute(query)]


def set_payload(tx: Tx, message_id: int, payload: Mapping[str, Any]) -> None:
    """Replace a message's payload (a pending card coalesced with a newer update)."""
    tx.conn.execute(outbox.update().where(outbox.c.id == message_id).values(payload=dict(payload)))


# --- delivery: each operation its own short transaction ---------------------------------
class OutboxStore:
    """The delivery side of the outbox table."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def next_attempt_at(self) -> float | None:
        """When the earliest pending message is due (None: no pending message)."""
        query = sa.select(sa.func.min(outbox.c.next_attempt_at)).where(
            outbox.c.status == OutboxStatus.PENDING
        )
        with self.store.engine.connect() as conn:
            due = conn.execute(query).scalar()
        return None if due is None else float(due)

    def candidates(self, now: float, limit: int) -> list[OutboxMessage]:
        """Pending messages due by ``now`` and every ``sending`` one, oldest first."""
        query = (
            sa.select(outbox)
            .where(
                sa.or_(
                    sa.and_(
                        outbox.c.status == OutboxStatus.PENDING, outbox.c.next_attempt_at <= now
                    ),
                    outbox.c.status == OutboxStatus.SENDING,
                )
            )
            .order_by(outbox.c.id)
            .limit(limit)
        )
        with self.store.engine.connect() as conn:
            return [_message(row) for row in conn.execute(query)]

    def claim(self, message: OutboxMessage, *, owner: str, at: float) -> OutboxMessage | None:
        """Claim ``message`` as it was read (same status and attempts; for a take-over of
        a ``sending`` row, the same previous owner): the row as claimed, or None when
        someone else changed it first."""
        condition = sa.and_(
            outbox.c.id == message.id,
            outbox.c.status == message.status,
            outbox.c.attempts == message.attempts,
        )
        if message.status == OutboxStatus.SENDING:
            condition = sa.and_(
                condition,
                outbox.c.claimed_by.is_(None)
                if message.claimed_by is None
                else outbox.c.claimed_by == message.claimed_by,
            )
        with self.store.transaction() as tx:
            won = tx.conn.execute(
                outbox.update()
                .where(condition)
                .values(
                    status=OutboxStatus.SENDING,
                    attempts=outbox.c.attempts + 1,
                    claimed_by=owner,
                    claimed_at=at,
                )
            ).rowcount
            if won != 1:
                return None
            return _message(
                tx.conn.execute(sa.select(outbox).where(outbox.c.id == message.id)).one()
            )

    def update_claimed(self, claimed: OutboxMessage, **values: Any) -> bool:
        """Write ``values`` to a message still claimed as ``claimed`` (its owner and
        attempts); False when the claim was taken over meanwhile."""
        fence = sa.and_(
            outbox.c.id == claimed.id,
            outbox.c.status == OutboxStatus.SENDING,
            outbox.c.claimed_by == claimed.claimed_by,
            # Every claim bumps attempts: it is the claim's fencing token.
            outbox.c.attempts == claimed.attempts,
        )
        with self.store.transaction() as tx:
            return bool(
                tx.conn.execute(outbox.update().where(fence).values(**values)).rowcount == 1
            )

    def messages(self, *, status: str | None = None) -> list[OutboxMessage]:
        """Outbox rows, oldest first."""
        query = sa.select(outbox).order_by(outbox.c.id)
        if status is not None:
            query = query.where(outbox.c.status == status)
        with self.store.engine.connect() as conn:
            return [_message(row) for row in conn.execute(query)]
