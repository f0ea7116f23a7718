"""The durable outbox: every outbound call is a row, delivered by a supervised loop.

Theory of operation
-------------------
**Enqueue.** :func:`enqueue` writes a row inside the caller's transaction, so the row
exists exactly when the change that caused it committed. A live card is coalesced:
:func:`enqueue_card` replaces the payload of the card's pending row if there is one (one
pending card row per task and chat), so a burst of changes becomes one edit. The card's
text is rendered at delivery from the committed state, never from the payload.

**Claim.** :meth:`OutboxDelivery.deliver_due` takes due rows oldest first and claims each
with a compare-and-swap ``pending -> sending`` stamped with this process's boot id
(``claimed_by``) and time (``claimed_at``); a row someone else claimed first is left
alone. A ``sending`` row whose owner is dead, or that is older than
``OUTBOX_CLAIM_TIMEOUT_S``, is taken over the same way, and the :class:`Claim` says so
(``taken_over_at``), so the channel can check what the dead owner already did before
acting (the Telegram card checks ``task_cards``: a recorded send is not repeated).

**Deliver.** The channel (:class:`Channel`) performs the call and returns facts (the
message id). Marking ``sent`` is fenced by the claim: an owner whose claim was taken over
writes nothing. A failure is a :class:`DeliveryError`; :func:`retry_decision` turns it
into a value (retry at a time, or give up) and only :meth:`OutboxDelivery.deliver_due`
acts on it. A 429's ``retry_after`` is honoured (and pauses the channel for that sweep);
other transient failures back off exponentially from ``outbox_backoff_s``.

**Exactly once.** A card edit is idempotent, so retrying one is harmless. A new message
(the first card, a bump, an alert) is the one call the Bot API cannot deduplicate: its
message id is recorded as soon as the call returns, before the row is marked sent, and
a taken-over card row sends only if no send was recorded since the dead claim. What is
left is the window between Telegram's answer and that write (a crash there can repeat
that one send) — see docs/integrations.md.

::

    pending --claim--> sending --ok--> sent
       ^                  |--error, retry--> pending (next_attempt_at later)
       |                  |--error, give up--> failed
       +---- (owner dead or claim timed out: taken over) ----+
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from orchestrator.errors import OrchestratorError
from orchestrator.settings import Settings
from orchestrator.store import Store, Task, Tx
from orchestrator.store.outbox import (
    OutboxMessage,
    OutboxStatus,
    OutboxStore,
    insert_message,
    pending_cards,
    set_payload,
)

__all__ = [
    "CARD",
    "OUTBOX_CLAIM_TIMEOUT_S",
    "OUTBOX_IDLE_INTERVAL_S",
    "OUTBOX_INTERVAL_S",
    "OUTBOX_MAX_BACKOFF_S",
    "TELEGRAM",
    "Channel",
    "Claim",
    "DeliveryError",
    "GiveUp",
    "OutboxDelivery",
    "OutboxMessage",
    "OutboxNotifier",
    "RetryAt",
    "Status",
    "enqueue",
    "enqueue_alerts",
    "enqueue_card",
    "enqueue_card_updates",
    "retry_decision",
]

log = logging.getLogger("orchestrator.outbox.delivery")

# How often the delivery loop looks for due messages.
OUTBOX_INTERVAL_S: Final = 0.5
# How often it looks once no work has moved for QUIET_AFTER_S (a message written wakes
# it at once; this bounds a retry's wait after its backoff when all is quiet).
OUTBOX_IDLE_INTERVAL_S: Final = 30.0
# A 'sending' claim older than this is taken over even if its owner looks alive (an
# HTTP call is bounded by the client's timeout, far below this).
OUTBOX_CLAIM_TIMEOUT_S: Final = 120.0
# Backoff never grows beyond this.
OUTBOX_MAX_BACKOFF_S: Final = 300.0
# Rows looked at per sweep.
OUTBOX_BATCH: Final = 100

TELEGRAM: Final = "telegram"
CARD: Final = "card"
ALERT: Final = "alert"


# The row's statuses (the table is the store's: store/outbox.py).
Status = OutboxStatus


@dataclass(frozen=True)
class Claim:
    """A message this process is delivering now.

    ``taken_over_at`` is the ``claimed_at`` of an earlier claim whose owner died or timed
    out mid-delivery: whatever it recorded after that moment may already have happened.
    """

    message: OutboxMessage
    owner: str
    claimed_at: float
    taken_over_at: float | None = None


class DeliveryError(OrchestratorError):
    """A channel could not deliver a message.

    ``retry_after_s``: the service said when to come back (HTTP 429). ``permanent``:
    retrying cannot help (a 400 the channel does not handle, a 403 bot blocked).
    """

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, permanent: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.permanent = permanent


class Channel(Protocol):
    """Delivers the outbox messages of one channel (``telegram``, ...)."""

    def deliver(self, claim: Claim) -> Mapping[str, Any] | None:
        """Perform the call; return facts worth keeping (a message id), or raise
        :class:`DeliveryError`."""
        ...


# --- retry decision (pure) ------------------------------------------------------------
@dataclass(frozen=True)
class RetryAt:
    at: float


@dataclass(frozen=True)
class GiveUp:
    reason: str


def retry_decision(
    attempts: int, error: DeliveryError, *, now: float, backoff_s: float, max_attempts: int
) -> RetryAt | GiveUp:
    """What to do after the ``attempts``-th delivery of a message failed with ``error``."""
    if error.permanent:
        return GiveUp(f"permanent error: {error}")
    if error.retry_after_s is not None:
        # The service named the moment; a rate limit is not the message's fault.
        return RetryAt(now + max(error.retry_after_s, 0.0))
    if attempts >= max_attempts:
        return GiveUp(f"gave up after {attempts} attempts: {error}")
    delay = min(backoff_s * 2 ** max(attempts - 1, 0), OUTBOX_MAX_BACKOFF_S)
    return RetryAt(now + delay)


# --- enqueue (inside the caller's transaction) -------------------------------------------
def enqueue(
    tx: Tx,
    *,
    channel: str,
    kind: str,
    payload: Mapping[str, Any],
    task_id: int | None = None,
    key: str | None = None,
    delay_s: float = 0.0,
) -> int:
    """Write one outbox row in ``tx``; ``key`` (default: unique) deduplicates it."""
    now = time.time()
    return insert_message(
        tx,
        channel=channel,
        kind=kind,
        key=key or f"{channel}:{kind}:{uuid.uuid4().hex}",
        payload=payload,
        task_id=task_id,
        next_attempt_at=now + delay_s,
        created_at=now,
    )


def enqueue_card(tx: Tx, *, channel: str, chat_id: str, task_id: int, summary: str) -> int:
    """Ask for the task's card in ``chat_id`` to be brought up to date (coalesced)."""
    payload = {"chat_id": chat_id, "summary": summary[:500]}
    for pending in pending_cards(tx, task_id=task_id, channel=channel, kind=CARD):
        if pending.payload.get("chat_id") == chat_id:
            set_payload(tx, pending.id, payload)
            return pending.id
    return enqueue(
        tx,
        channel=channel,
        kind=CARD,
        payload=payload,
        task_id=task_id,
        key=f"{channel}:{CARD}:{task_id}:{uuid.uuid4().hex}",
    )


def enqueue_card_updates(tx: Tx, settings: Settings, task_id: int, summary: str) -> None:
    """The in-transaction hook: every configured live card of the task gets updated."""
    if settings.telegram_enabled:
        enqueue_card(
            tx,
            channel=TELEGRAM,
            chat_id=settings.telegram_chat_id,
            task_id=task_id,
            summary=summary,
        )


def enqueue_alerts(tx: Tx, settings: Settings, task: Task | None, message: str) -> None:
    """An alert to every configured chat, as its own message (never coalesced)."""
    if settings.telegram_enabled:
        payload = {
            "chat_id": settings.telegram_chat_id,
            "message": message[:2000],
            "work_item": task.work_item if task is not None else None,
            "title": task.title if task is not None else None,
        }
        enqueue(
            tx,
            channel=TELEGRAM,
            kind=ALERT,
            payload=payload,
            task_id=task.id if task is not None else None,
        )


class OutboxNotifier:
    """The :class:`~orchestrator.outbox.notifier.Notifier` that writes to the outbox.

    Called after a commit, it writes in a transaction of its own. Stage moves also write
    their card row inside the transition's own transaction (see
    :func:`~orchestrator.lifecycle.transitions.advance_stage`); the two are coalesced.
    """

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def on_task_changed(self, task: Task, summary: str) -> None:
        with self.store.transaction() as tx:
            enqueue_card_updates(tx, self.settings, task.id, summary)

    def alert(self, task: Task | None, message: str) -> None:
        with self.store.transaction() as tx:
            enqueue_alerts(tx, self.settings, task, message)


# --- delivery --------------------------------------------------------------------------
class OutboxDelivery:
    """Delivers due outbox rows through their channels; one instance per process.

    ``owner`` is this process's boot id; ``is_alive(boot_id)`` tells whether another
    claim's owner still runs (a dead owner's claim is taken over at once).
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        channels: Mapping[str, Channel],
        *,
        owner: str,
        is_alive: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.rows = OutboxStore(store)
        self.settings = settings
        self.channels = dict(channels)
        self.owner = owner
        self._is_alive = is_alive or (lambda _boot_id: True)
        self._clock = clock
        self._on_close = on_close

    def close(self) -> None:
        """Release what the channels hold (their HTTP clients)."""
        if self._on_close is not None:
            self._on_close()

    # --- the loop --------------------------------------------------------------------
    def run(
        self,
        stop: threading.Event,
        interval_s: float = OUTBOX_INTERVAL_S,
        idle_interval_s: float = OUTBOX_IDLE_INTERVAL_S,
    ) -> None:
        """Deliver until ``stop`` is set. A failing sweep (the database) propagates, so
        the supervisor can stop the service. Once no work has moved for
        ``QUIET_AFTER_S`` it looks only every ``idle_interval_s``, and at once when a
        message is written (its commit pokes the store's Activity)."""
        activity = self.store.activity
        while not stop.is_set():
            generation = activity.generation
            delivered = self.deliver_due()
            if delivered:
                continue
            activity.rest(
                generation,
                busy_wait=stop.wait,
                interval_s=interval_s,
                idle_interval_s=idle_interval_s,
                next_due=self.rows.next_attempt_at,
                now=self._clock,
            )

    def wake(self) -> None:
        """End a long idle wait (the supervisor stops the loop)."""
        self.store.activity.touch()

    def deliver_due(self, now: float | None = None) -> int:
        """One sweep: claim and deliver every due message; returns how many were sent."""
        now = self._clock() if now is None else now
        paused: dict[str, float] = {}
        alive: dict[str, bool] = {}
        sent = 0
        for message in self._candidates(now, alive):
            if paused.get(message.channel, 0.0) > now:
                continue
            channel = self.channels.get(message.channel)
            if channel is None:
                continue  # another process (or a later start) has that channel
            claim = self._claim(message, now, alive)
            if claim is None:
                continue
            try:
                result = channel.deliver(claim)
            except DeliveryError as exc:
                decision = retry_decision(
                    claim.message.attempts,
                    exc,
                    now=self._clock(),
                    backoff_s=self.settings.outbox_backoff_s,
                    max_attempts=self.settings.outbox_max_attempts,
                )
                self._record_failure(claim, str(exc), decision)
                if exc.retry_after_s is not None and isinstance(decision, RetryAt):
                    paused[message.channel] = decision.at
                continue
            except Exception as exc:  # a bug in a channel must not stop the others
                log.exception("outbox: delivering message %s failed", message.id)
                decision = retry_decision(
                    claim.message.attempts,
                    DeliveryError(f"{type(exc).__name__}: {exc}"),
                    now=self._clock(),
                    backoff_s=self.settings.outbox_backoff_s,
                    max_attempts=self.settings.outbox_max_attempts,
                )
                self._record_failure(claim, f"{type(exc).__name__}: {exc}", decision)
                continue
            if self._mark_sent(claim, result):
                sent += 1
        return sent

    # --- reads -----------------------------------------------------------------------
    def _candidates(self, now: float, alive: dict[str, bool]) -> list[OutboxMessage]:
        rows = self.rows.candidates(now, OUTBOX_BATCH)
        # A card being delivered right now (a live claim) is not delivered again beside it.
        busy = {
            (m.channel, m.task_id, m.payload.get("chat_id"))
            for m in rows
            if m.status == Status.SENDING and m.kind == CARD and not self._stale(m, now, alive)
        }
        due = []
        for message in rows:
            if message.status == Status.SENDING:
                if self._stale(message, now, alive):
                    due.append(message)
            elif not (
                message.kind == CARD
                and (message.channel, message.task_id, message.payload.get("chat_id")) in busy
            ):
                due.append(message)
        return due

    def _stale(self, message: OutboxMessage, now: float, alive: dict[str, bool]) -> bool:
        """Whether a 'sending' claim may be taken over: its owner died or it timed out."""
        if message.claimed_at is None or now - message.claimed_at >= OUTBOX_CLAIM_TIMEOUT_S:
            return True
        owner = message.claimed_by
        if owner is None:
            return True
        if owner == self.owner:
            return False  # ours: we deliver one row at a time, this sweep finished it
        if owner not in alive:
            alive[owner] = self._is_alive(owner)
        return not alive[owner]

    # --- writes (each its own short transaction) ----------------------------------------
    def _claim(self, message: OutboxMessage, now: float, alive: dict[str, bool]) -> Claim | None:
        claimed_at = self._clock()
        taken_over_at: float | None = None
        if message.status == Status.SENDING:
            if not self._stale(message, now, alive):
                return None
            # The earlier claim may have done part of the work: tell the channel when.
            taken_over_at = message.claimed_at if message.claimed_at is not None else 0.0
        claimed = self.rows.claim(message, owner=self.owner, at=claimed_at)
        if claimed is None:
            return None
        if taken_over_at is not None:
            log.warning(
                "outbox: took over message %s from %s (claimed %.0fs ago)",
                message.id,
                message.claimed_by,
                claimed_at - taken_over_at,
            )
        return Claim(claimed, self.owner, claimed_at, taken_over_at)

    def _mark_sent(self, claim: Claim, result: Mapping[str, Any] | None) -> bool:
        payload = dict(claim.message.payload)
        if result:
            payload["result"] = dict(result)
        won = self.rows.update_claimed(
            claim.message,
            status=Status.SENT,
            sent_at=self._clock(),
            payload=payload,
            last_error=None,
        )
        if not won:
            log.warning(
                "outbox: message %s was taken over before it was marked sent", claim.message.id
            )
        return won

    def _record_failure(self, claim: Claim, error: str, decision: RetryAt | GiveUp) -> None:
        values: dict[str, Any] = {"last_error": error[:2000], "claimed_by": None}
        if isinstance(decision, RetryAt):
            values.update(status=Status.PENDING, next_attempt_at=decision.at)
            log.info(
                "outbox: message %s (%s %s) failed, retry in %.1fs: %s",
                claim.message.id,
                claim.message.channel,
                claim.message.kind,
                max(decision.at - self._clock(), 0.0),
                error,
            )
        else:
            values.update(status=Status.FAILED, last_error=f"{decision.reason}"[:2000])
            log.warning("outbox: message %s failed for good: %s", claim.message.id, decision.reason)
        self.rows.update_claimed(claim.message, **values)

    # --- inspection ------------------------------------------------------------------
    def messages(self, *, status: str | None = None) -> list[OutboxMessage]:
        """Outbox rows, oldest first (for `GET /status`, tests and operators)."""
        return self.rows.messages(status=status)
