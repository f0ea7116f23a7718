"""Telegram: a small Bot API client and the outbox channel that keeps each task's card.

Theory of operation
-------------------
:class:`TelegramClient` speaks the Bot API over an injected ``httpx.Client`` (tests give
it a local server or a ``MockTransport``): ``POST {base_url}/bot<token>/<method>`` with a
JSON body; the answer is ``{"ok": true, "result": ...}`` or ``{"ok": false,
"error_code": N, "description": "...", "parameters": {"retry_after": S}}``.

Errors::

    OrchestratorError
    └── TelegramError                   anything the Bot API or the network refused
        ├── TelegramApiError            {"ok": false}: error_code, description, retry_after
        └── TelegramUnavailableError    no answer, or one that is not the Bot API's JSON

:class:`TelegramChannel` delivers the outbox's ``telegram`` messages:

* ``card`` — renders the task's card from the committed state and compares its digest
  with ``task_cards.text_hash`` (unchanged: nothing to do). ``tracker_mode = "edit"``
  edits the message in place ("message is not modified" is success; "message to edit
  not found" sends a new card). ``"bump"`` deletes the old message (its result never
  gates anything), sends the new one silently, and repoints ``task_cards.message_id``
  only after that send succeeded: at most one new message per delivery. A delivery that
  took over a dead claim checks ``task_cards`` first: a send recorded since that claim is
  not repeated, the card is only edited.
* ``alert`` — its own message.
* ``reject_prompt`` — the Reject button's question: a ``ForceReply`` message quoting the
  card (:mod:`~orchestrator.integrations.reject_prompt`); its ``message_id`` is kept
  on the row, where the reply is matched.

A 429 becomes a :class:`~orchestrator.outbox.delivery.DeliveryError` with ``retry_after_s``; other
4xx are permanent; network errors and 5xx are retried with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

import httpx

from orchestrator.errors import NotFoundError, OrchestratorError
from orchestrator.integrations.card import load_card_view, render_alert, render_card
from orchestrator.integrations.reject_prompt import REJECT_PROMPT, prompt_message
from orchestrator.outbox.delivery import ALERT, CARD, Claim, DeliveryError
from orchestrator.settings import Settings
from orchestrator.store import Store

__all__ = [
    "DEFAULT_API_BASE_URL",
    "TELEGRAM_TIMEOUT_S",
    "TelegramApiError",
    "TelegramChannel",
    "TelegramClient",
    "TelegramError",
    "TelegramUnavailableError",
]

log = logging.getLogger("orchestrator.telegram")

DEFAULT_API_BASE_URL: Final = "https://api.telegram.org"
# One Bot API call; far below the outbox's claim timeout.
TELEGRAM_TIMEOUT_S: Final = 15.0


class TelegramError(OrchestratorError):
    """The Bot API (or the way to it) refused a call."""


class TelegramApiError(TelegramError):
    """``{"ok": false, ...}`` from the Bot API."""

    def __init__(
        self, method: str, error_code: int, description: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"Telegram {method}: {error_code} {description}")
        self.method = method
        self.error_code = error_code
        self.description = description
        self.retry_after_s = retry_after_s

    @property
    def not_modified(self) -> bool:
        """An edit that changes nothing: not an error for a card."""
        return self.error_code == 400 and "message is not modified" in self.description.lower()

    @property
    def message_missing(self) -> bool:
        """The message to edit or delete is gone (deleted by a person, too old)."""
        text = self.description.lower()
        return self.error_code == 400 and (
            "message to edit not found" in text or "message to delete not found" in text
        )


class TelegramUnavailableError(TelegramError):
    """No usable answer: a network error, a timeout, or a non-JSON reply (a proxy's 502)."""


class TelegramClient:
    """The Bot API methods the product uses."""

    def __init__(
        self, token: str, *, http: httpx.Client, base_url: str = DEFAULT_API_BASE_URL
    ) -> None:
        self._token = token
        self._http = http
        self._base = base_url.rstrip("/")

    def call(self, method: str, params: Mapping[str, Any]) -> Any:
        """One Bot API call; returns its ``result``."""
        url = f"{self._base}/bot{self._token}/{method}"
        try:
            response = self._http.post(url, json=dict(params), timeout=TELEGRAM_TIMEOUT_S)
        except httpx.HTTPError as exc:
            # Never echo the URL: it contains the bot token.
            raise TelegramUnavailableError(
                f"Telegram {method}: {type(exc).__name__} (is {self._base} reachable?)"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "ok" not in body:
            raise TelegramUnavailableError(
                f"Telegram {method}: HTTP {response.status_code} without a Bot API answer"
            )
        if body.get("ok") is True:
            return body.get("result")
        parameters = body.get("parameters")
        retry_after = parameters.get("retry_after") if isinstance(parameters, dict) else None
        raise TelegramApiError(
            method,
            int(body.get("error_code") or response.status_code),
            str(body.get("description") or ""),
            float(retry_after) if isinstance(retry_after, int | float) else None,
        )

    def send_message(
        self,
        chat_id: str,
        text: str,
        *,
        reply_markup: Mapping[str, Any] | None = None,
        disable_notification: bool = False,
        reply_parameters: Mapping[str, Any] | None = None,
    ) -> int:
        """Send a message; returns its ``message_id``."""
        params: dict[str, Any] = {"chat_id": chat_id, "text": text}
        if reply_markup is not None:
            params["reply_markup"] = dict(reply_markup)
        if reply_parameters is not None:
            params["reply_parameters"] = dict(reply_parameters)
        if disable_notification:
            params["disable_notification"] = True
        result = self.call("sendMessage", params)
        if not isinstance(result, dict) or not isinstance(result.get("message_id"), int):
            raise TelegramUnavailableError("Telegram sendMessage: no message_id in the answer")
        return int(result["message_id"])

    def edit_message_text(
        self,
        chat_id: str,
        message_id: int,
        text: str,
        *,
        reply_markup: Mapping[str, Any] | None = None,
    ) -> bool:
        """Edit a message's text; False when Telegram says it is not modified."""
        params: dict[str, Any] = {"chat_id": chat_id, "message_id": message_id, "text": text}
        if reply_markup is not None:
            params["reply_markup"] = dict(reply_markup)
        try:
            self.call("editMessageText", params)
        except TelegramApiError as exc:
            if exc.not_modified:
                return False
            raise
        return True

    def delete_message(self, chat_id: str, message_id: int) -> bool:
        return bool(self.call("deleteMessage", {"chat_id": chat_id, "message_id": message_id}))

    def answer_callback_query(self, callback_query_id: str, text: str | None = None) -> bool:
        params: dict[str, Any] = {"callback_query_id": callback_query_id}
        if text:
            params["text"] = text
        return bool(self.call("answerCallbackQuery", params))


def _delivery_error(exc: TelegramError) -> DeliveryError:
    if isinstance(exc, TelegramApiError):
        if exc.retry_after_s is not None or exc.error_code == 429:
            return DeliveryError(str(exc), retry_after_s=exc.retry_after_s or 1.0)
        return DeliveryError(str(exc), permanent=400 <= exc.error_code < 500)
    return DeliveryError(str(exc))


class TelegramChannel:
    """The outbox channel ``telegram``: live cards and alerts."""

    def __init__(self, client: TelegramClient, store: Store, settings: Settings) -> None:
        self.client = client
        self.store = store
        self.settings = settings

    def deliver(self, claim: Claim) -> Mapping[str, Any] | None:
        try:
            if claim.message.kind == CARD:
                return self._card(claim)
            if claim.message.kind == ALERT:
                return self._alert(claim)
            if claim.message.kind == REJECT_PROMPT:
                return self._reject_prompt(claim)
        except TelegramError as exc:
            raise _delivery_error(exc) from None
        raise DeliveryError(f"unknown telegram message kind {claim.message.kind!r}", permanent=True)

    # --- alerts ------------------------------------------------------------------------
    def _alert(self, claim: Claim) -> Mapping[str, Any]:
        payload = claim.message.payload
        text = render_alert(
            str(payload.get("message") or ""),
            work_item=payload.get("work_item"),
            title=payload.get("title"),
        )
        message_id = self.client.send_message(str(payload["chat_id"]), text)
        return {"message_id": message_id}

    def _reject_prompt(self, claim: Claim) -> Mapping[str, Any]:
        payload = claim.message.payload
        text, markup, quote = prompt_message(payload)
        message_id = self.client.send_message(
            str(payload["chat_id"]), text, reply_markup=markup, reply_parameters=quote
        )
        return {"message_id": message_id}

    # --- cards -------------------------------------------------------------------------
    def _card(self, claim: Claim) -> Mapping[str, Any]:
        task_id = claim.message.task_id
        chat_id = str(claim.message.payload["chat_id"])
        if task_id is None:
            raise DeliveryError("a card message without a task", permanent=True)
        try:
            view = load_card_view(self.store, self.settings, task_id)
        except NotFoundError:
            return {"action": "skipped", "why": "the task no longer exists"}
        card = render_card(view, self.settings.language)
        stored = self.store.task_card(task_id, chat_id)
        if stored is None or stored.message_id is None:
            message_id = self.client.send_message(
                chat_id, card.text, reply_markup=card.reply_markup
            )
            self._record(task_id, chat_id, message_id, card.digest)
            return {"action": "sent", "message_id": message_id}
        old_id = int(stored.message_id)
        if stored.text_hash == card.digest:
            return {"action": "unchanged", "message_id": old_id}
        # A taken-over delivery whose dead owner already recorded a send: the card exists
        # and is ours, so only bring its text up to date (an edit is idempotent).
        sent_before = claim.taken_over_at is not None and stored.updated_at >= claim.taken_over_at
        if self.settings.tracker_mode == "bump" and not sent_before:
            return self._bump(task_id, chat_id, old_id, card.text, card.reply_markup, card.digest)
        try:
            changed = self.client.edit_message_text(
                chat_id, old_id, card.text, reply_markup=card.reply_markup
            )
        except TelegramApiError as exc:
            if not exc.message_missing:
                raise
            # Someone deleted the card: send a new one and point at it.
            message_id = self.client.send_message(
                chat_id, card.text, reply_markup=card.reply_markup
            )
            self._record(task_id, chat_id, message_id, card.digest)
            return {"action": "resent", "message_id": message_id}
        self._record(task_id, chat_id, old_id, card.digest)
        return {"action": "edited" if changed else "not modified", "message_id": old_id}

    def _bump(
        self,
        task_id: int,
        chat_id: str,
        old_id: int,
        text: str,
        reply_markup: Mapping[str, Any],
        digest: str,
    ) -> Mapping[str, Any]:
        """Re-create the card at the bottom of the chat (ORCH-042)."""
        try:
            deleted = self.client.delete_message(chat_id, old_id)
        except TelegramError as exc:
            # Never gates the send: at worst an old card stays visible above the new one.
            log.info("telegram: deleting the old card %s failed: %s", old_id, exc)
            deleted = False
        message_id = self.client.send_message(
            chat_id, text, reply_markup=reply_markup, disable_notification=True
        )
        # Repoint only now, after the send succeeded.
        self._record(task_id, chat_id, message_id, digest)
        return {"action": "bumped", "message_id": message_id, "deleted": deleted}

    def _record(self, task_id: int, chat_id: str, message_id: int, digest: str) -> None:
        """Point the task's card at ``message_id`` (an upsert)."""
        with self.store.transaction() as tx:
            tx.point_task_card(task_id, chat_id, message_id, digest)
