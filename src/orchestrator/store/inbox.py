"""The inbox table: webhook intents, recorded once and applied once (decision 0015).

Every operation is one short transaction with a name that says what it does. The
claim is a compare-and-swap ``pending -> applying`` stamped with the applier's boot id
and bumping ``attempts`` (the claim's fencing token); every later write of the claim is
fenced by (status, owner, attempts), so an owner whose claim was taken over writes
nothing. Deciding what to do with an intent is :mod:`orchestrator.webhooks.inbox`'s business.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa

from orchestrator.store.records import _Record
from orchestrator.store.schema import inbox, webhook_deliveries
from orchestrator.store.store import Store

__all__ = ["INBOX_OPEN_STATUSES", "InboxStatus", "InboxStore", "Intent"]

# Intents looked at per sweep.
INBOX_BATCH: Final = 100


class InboxStatus:
    PENDING: Final = "pending"
    APPLYING: Final = "applying"
    APPLIED: Final = "applied"
    REFUSED: Final = "refused"
    FAILED: Final = "failed"


# Intents not finished yet.
INBOX_OPEN_STATUSES: Final = (InboxStatus.PENDING, InboxStatus.APPLYING)
_FINAL: Final = (InboxStatus.APPLIED, InboxStatus.REFUSED, InboxStatus.FAILED)


@dataclass(frozen=True)
class Intent(_Record):
    """One inbox row."""

    id: int
    task_id: int
    action: str
    actor: str
    reason: str
    source: str
    delivery_id: str
    status: str
    attempts: int
    next_attempt_at: float
    outcome: str | None
    created_at: float
    finished_at: float | None
    claimed_by: str | None
    claimed_at: float | None


def _intent(row: sa.Row[Any]) -> Intent:
    return Intent(**row._mapping)


class InboxStore:
    """The inbox's reads and writes over one :class:`~orchestrator.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- writes ------------------------------------------------------------------------
    def record_intent(
        self,
        *,
        task_id: int,
        action: str,
        actor: str,
        reason: str,
        source: str,
        delivery_id: str,
        event_kind: str,
        event_reason: str,
        now: float | None = None,
    ) -> tuple[Intent, bool]:
        """Record an intent, its event and its delivery's outcome (``accepted: intent
        <id>``) in one transaction; ``(intent, True)``.

        A delivery already recorded (same source and delivery id) is not recorded again:
        ``(the existing intent, False)``.
        """
        now = time.time() if now is None else now
        try:
            with self.store.transaction() as tx:
                inserted = tx.conn.execute(
                    inbox.insert().values(
                        task_id=task_id,
                        action=action,
                        actor=actor,
                        reason=reason,
                        source=source,
                        delivery_id=delivery_id,
                        status=InboxStatus.PENDING,
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                    )
                ).inserted_primary_key
                assert inserted is not None
                intent_id = int(inserted[0])
                tx.add_event(
                    event_kind,
                    actor=actor,
                    task_id=task_id,
                    reason=event_reason,
                    data=_event_data(intent_id, action, source, delivery_id),
                )
                tx.conn.execute(
                    webhook_deliveries.update()
                    .where(
                        webhook_deliveries.c.source == source,
                        webhook_deliveries.c.delivery_id == delivery_id,
                    )
                    .values(outcome=f"accepted: intent {intent_id}", task_id=task_id)
                )
        except sa.exc.IntegrityError:
            existing = self.intent_of_delivery(source, delivery_id)
            if existing is None:  # the task itself is gone (foreign key): not ours to hide
                raise
            return existing, False
        return self.get_intent(intent_id), True

    def claim_intent(self, intent: Intent, owner: str, now: float) -> Intent | None:
        """Claim ``intent`` as it was read (pending, or applying under a dead owner);
        None when someone else changed it first."""
        condition = sa.and_(
            inbox.c.id == intent.id,
            inbox.c.status == intent.status,
            inbox.c.attempts == intent.attempts,
            inbox.c.claimed_by.is_(None)
            if intent.claimed_by is None
            else inbox.c.claimed_by == intent.claimed_by,
        )
        with self.store.transaction() as tx:
            won = tx.conn.execute(
                inbox.update()
                .where(condition)
                .values(
                    status=InboxStatus.APPLYING,
                    attempts=inbox.c.attempts + 1,
                    claimed_by=owner,
                    claimed_at=now,
                )
            ).rowcount
            if won != 1:
                return None
            row = tx.conn.execute(sa.select(inbox).where(inbox.c.id == intent.id)).one()
        return _intent(row)

    def release_intent(
        self, claim: Intent, *, next_attempt_at: float, outcome: str, count_attempt: bool
    ) -> bool:
        """Put a claimed intent back to pending (try again at ``next_attempt_at``).

        ``count_attempt`` False: it waited (a lease was held) rather than failed, so the
        attempt does not count toward giving up.
        """
        attempts = claim.attempts if count_attempt else max(claim.attempts - 1, 0)
        with self.store.transaction() as tx:
            won = tx.conn.execute(
                inbox.update()
                .where(_fenced(claim))
                .values(
                    status=InboxStatus.PENDING,
                    attempts=attempts,
                    next_attempt_at=next_attempt_at,
                    outcome=outcome[:2000],
                    claimed_by=None,
                    claimed_at=None,
                )
            ).rowcount
        return bool(won == 1)

    def finish_intent(
        self,
        claim: Intent,
        *,
        status: str,
        outcome: str,
        event_kind: str,
        actor: str,
        data: Mapping[str, Any] | None = None,
        now: float | None = None,
    ) -> bool:
        """Mark a claimed intent applied, refused or failed, with its event, in one
        transaction; False (nothing written) when the claim was taken over."""
        if status not in _FINAL:
            raise ValueError(f"an intent cannot finish as {status!r}")
        now = time.time() if now is None else now
        with self.store.transaction() as tx:
            won = tx.conn.execute(
                inbox.update()
                .where(_fenced(claim))
                .values(status=status, outcome=outcome[:2000], finished_at=now)
            ).rowcount
            if won != 1:
                return False
            tx.add_event(
                event_kind,
                actor=actor,
                task_id=claim.task_id,
                reason=outcome[:2000],
                data=_event_data(claim.id, claim.action, claim.source, claim.delivery_id)
                | {"status": status}
                | dict(data or {}),
            )
        return True

    def note_waiting(self, intent: Intent, outcome: str, next_attempt_at: float) -> bool:
        """Say why a pending intent waits (a lease is held) without claiming it."""
        with self.store.transaction() as tx:
            won = tx.conn.execute(
                inbox.update()
                .where(
                    inbox.c.id == intent.id,
                    inbox.c.status == InboxStatus.PENDING,
                    inbox.c.attempts == intent.attempts,
                )
                .values(outcome=outcome[:2000], next_attempt_at=next_attempt_at)
            ).rowcount
        return bool(won == 1)

    # --- reads -------------------------------------------------------------------------
    def get_intent(self, intent_id: int) -> Intent:
        with self.store.engine.connect() as conn:
            return _intent(conn.execute(sa.select(inbox).where(inbox.c.id == intent_id)).one())

    def intent_of_delivery(self, source: str, delivery_id: str) -> Intent | None:
        query = sa.select(inbox).where(inbox.c.source == source, inbox.c.delivery_id == delivery_id)
        with self.store.engine.connect() as conn:
            row = conn.execute(query).first()
        return _intent(row) if row is not None else None

    def next_attempt_at(self) -> float | None:
        """When the earliest pending intent is due again (None: no pending intent)."""
        query = sa.select(sa.func.min(inbox.c.next_attempt_at)).where(
            inbox.c.status == InboxStatus.PENDING
        )
        with self.store.engine.connect() as conn:
            due = conn.execute(query).scalar()
        return None if due is None else float(due)

    def open_intents(self, now: float, limit: int = INBOX_BATCH) -> list[Intent]:
        """Pending intents that are due, and every intent being applied (whose owner
        may have died), oldest first."""
        query = (
            sa.select(inbox)
            .where(
                sa.or_(
                    sa.and_(inbox.c.status == InboxStatus.PENDING, inbox.c.next_attempt_at <= now),
                    inbox.c.status == InboxStatus.APPLYING,
                )
            )
            .order_by(inbox.c.id)
            .limit(limit)
        )
        with self.store.engine.connect() as conn:
            return [_intent(row) for row in conn.execute(query)]

    def intents(self, *, task_id: int | None = None, status: str | None = None) -> list[Intent]:
        """Inbox rows, oldest first (for operators and tests)."""
        query = sa.select(inbox).order_by(inbox.c.id)
        if task_id is not None:
            query = query.where(inbox.c.task_id == task_id)
        if status is not None:
            query = query.where(inbox.c.status == status)
        with self.store.engine.connect() as conn:
            return [_intent(row) for row in conn.execute(query)]

    def inbox_summary(self, now: float) -> dict[str, Any]:
        """For ``GET /status``: intents not applied yet, the oldest one's age, failures."""
        with self.store.engine.connect() as conn:
            open_count, oldest = conn.execute(
                sa.select(sa.func.count(), sa.func.min(inbox.c.created_at)).where(
                    inbox.c.status.in_(INBOX_OPEN_STATUSES)
                )
            ).one()
            failed = conn.execute(
                sa.select(sa.func.count()).where(inbox.c.status == InboxStatus.FAILED)
            ).scalar_one()
        return {
            "pending": int(open_count),
            "oldest_pending_age_s": round(max(now - float(oldest), 0.0), 3)
            if oldest is not None
            else None,
            "failed": int(failed),
        }


def _fenced(claim: Intent) -> sa.ColumnElement[bool]:
    return sa.and_(
        inbox.c.id == claim.id,
        inbox.c.status == InboxStatus.APPLYING,
        inbox.c.claimed_by == claim.claimed_by,
        inbox.c.attempts == claim.attempts,
    )


def _event_data(intent_id: int, action: str, source: str, delivery_id: str) -> dict[str, Any]:
    return {"intent": intent_id, "action": action, "source": source, "delivery": delivery_id}
