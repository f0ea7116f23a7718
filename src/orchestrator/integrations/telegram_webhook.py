"""``POST /webhooks/telegram``: the card's buttons (approve, reject, retry, cancel) and the
replies to the Reject button's question come in here.

Theory of operation
-------------------
Telegram posts an Update with the ``X-Telegram-Bot-Api-Secret-Token`` header set to the
``secret_token`` given to ``setWebhook`` (``telegram_webhook_secret``). The endpoint

1. answers 403 when no secret is configured, 401 when the header is missing or wrong
   (constant-time compare), 413 above ``webhook_max_body_bytes`` (counted while the body
   arrives; never above ``MAX_BODY_BYTES``), 400 for a body that is not a
   JSON Update — never 500 for anything a sender controls;
2. records ``update_id`` in ``webhook_deliveries``: a replayed update is ignored (200);
3. for a ``callback_query`` from the configured chat whose data is ``"<action>:<task>"``
   acts through :class:`~orchestrator.lifecycle.service.TaskService` (as actor
   ``telegram:@name(id)``), and answers the query in the webhook's response
   (``{"method": "answerCallbackQuery", ...}``, as the Bot API allows), so no outbound
   call is needed; the card itself follows through the outbox. ``reject`` needs the
   reason in words: it writes a force-reply question to the outbox instead
   (:mod:`~orchestrator.integrations.reject_prompt`). A press is refused ("Not
   allowed: ...", recorded as an ``access.refused`` event) when its sender is not in
   ``telegram_allowed_users`` (when set), in a public ``@channel`` without that list,
   or when the pressed message is not that task's card (``task_cards``);
4. for a ``message`` in the configured chat that replies to one of those questions,
   rejects the task with the message's text as the feedback (as ``telegram:@name(id)``;
   refused like a press when its sender may not press) and answers with a
   ``sendMessage`` in the webhook's response that says what happened;
5. answers 200 to every other update (Telegram would otherwise redeliver it), a reply
   to any other message included: it is not ours.

If acting fails unexpectedly the delivery record is removed and the error propagates,
so Telegram's redelivery gets another chance.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from orchestrator.auth import (
    telegram_actor,
    telegram_buttons_enabled,
    telegram_user_allowed,
)
from orchestrator.errors import ConflictError, OrchestratorError
from orchestrator.integrations.card import parse_callback_data
from orchestrator.integrations.reject_prompt import enqueue_reject_prompt, find_prompt, gate_visit
from orchestrator.kernel.events import EventKind
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store.deliveries import DeliveryStore
from orchestrator.text_input import BadJSONError, parse_json_object
from orchestrator.webhooks.routes import BodyTooLargeError, read_capped

__all__ = ["MAX_BODY_BYTES", "SECRET_HEADER", "telegram_webhook_router"]

log = logging.getLogger("orchestrator.telegram")

SECRET_HEADER: Final = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name
# An Update with a callback query is a few kilobytes.
MAX_BODY_BYTES: Final = 1_000_000
SOURCE: Final = "telegram"
ANSWER_TEXT_CHARS: Final = 190  # answerCallbackQuery text: 0-200 characters
REPLY_TEXT_CHARS: Final = 1000  # our reply to a person's message: short


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _answer(callback_query_id: str, text: str) -> JSONResponse:
    return JSONResponse(
        {
            "method": "answerCallbackQuery",
            "callback_query_id": callback_query_id,
            "text": text[:ANSWER_TEXT_CHARS],
        }
    )


def _reply(chat_id: Any, message_id: Any, text: str) -> JSONResponse:
    """A ``sendMessage`` in the webhook's response: Telegram performs it (no outbound call)."""
    body: dict[str, Any] = {
        "method": "sendMessage",
        "chat_id": chat_id,
        "text": text[:REPLY_TEXT_CHARS],
    }
    if isinstance(message_id, int) and not isinstance(message_id, bool):
        body["reply_parameters"] = {"message_id": message_id, "allow_sending_without_reply": True}
    return JSONResponse(body)


def _actor(sender: Any) -> tuple[str, str | None]:
    """``telegram:@name(id)`` and the username, if the person has one."""
    user: dict[str, Any] = sender if isinstance(sender, dict) else {}
    username = user.get("username")
    named = str(username)[:60] if isinstance(username, str) and username else None
    return telegram_actor(user), named


def _secret_ok(given: str | None, expected: str) -> bool:
    if given is None:
        return False
    # Bytes: compare_digest refuses non-ASCII str, and a header can carry anything.
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def _chat_matches(chat: Any, configured: str) -> bool:
    if not isinstance(chat, dict):
        return False
    if configured.startswith("@"):
        return f"@{chat.get('username', '')}".lower() == configured.lower()
    return str(chat.get("id")) == configured


def telegram_webhook_router(store: Store, settings: Settings, service: TaskService) -> APIRouter:
    """The Telegram webhook endpoint over ``service``."""
    router = APIRouter()

    @router.post(
        "/webhooks/telegram",
        summary="Telegram updates: the card's approve / retry / cancel buttons",
    )
    async def telegram_webhook(request: Request) -> JSONResponse:
        secret = settings.telegram_webhook_secret
        if not secret:
            return _error(403, "set telegram_webhook_secret (ORCH_TELEGRAM_WEBHOOK_SECRET)")
        if not _secret_ok(request.headers.get(SECRET_HEADER), secret):
            return _error(401, f"missing or wrong {SECRET_HEADER} header")
        limit = min(settings.webhook_max_body_bytes, MAX_BODY_BYTES)
        try:
            body = await read_capped(request, limit)
        except BodyTooLargeError:
            return _error(413, f"the body is over {limit} bytes (webhook_max_body_bytes)")
        try:
            update = parse_json_object(body)
        except BadJSONError as exc:
            return _error(400, f"{exc}; expected a Telegram Update")
        update_id = update.get("update_id")
        if not isinstance(update_id, int) or isinstance(update_id, bool):
            return _error(400, "the Update has no integer update_id")
        return await run_in_threadpool(_handle, store, settings, service, update_id, update)

    return router


def _record(store: Store, update_id: int, task_id: int | None, outcome: str) -> bool:
    """Record the delivery; False when it was seen before (a replay)."""
    return DeliveryStore(store).remember_delivery(SOURCE, str(update_id), outcome, task_id)


def _set_outcome(store: Store, update_id: int, task_id: int | None, outcome: str) -> None:
    DeliveryStore(store).record_delivery(SOURCE, str(update_id), outcome, task_id)


def _forget(store: Store, update_id: int) -> None:
    DeliveryStore(store).release_delivery(SOURCE, str(update_id))


def _refusal(
    settings: Settings, user: dict[str, Any], card_task: int | None, task_id: int
) -> str | None:
    """Why this press may not act (the answer the person sees), or None."""
    if not telegram_buttons_enabled(settings):
        return "Not allowed: no one may press until telegram_allowed_users lists who may."
    if not telegram_user_allowed(settings, user):
        return "Not allowed: you are not in telegram_allowed_users."
    if card_task != task_id:
        return "Not allowed: this button is not on that task's card."
    return None


def _refuse(
    store: Store, update_id: int, task_id: int | None, actor: str, action: str, why: str
) -> None:
    """Record a refused press: on the delivery, and in the pressed card's task's trail."""
    with store.transaction() as tx:
        tx.add_event(
            EventKind.ACCESS_REFUSED,
            actor=actor,
            task_id=task_id,
            reason=f"telegram {action}: {why}",
        )
    _set_outcome(store, update_id, task_id, f"refused: {actor} {action}: {why}")
    log.warning("telegram: %s pressed %s: %s", actor, action, why)


def _handle(
    store: Store, settings: Settings, service: TaskService, update_id: int, update: dict[str, Any]
) -> JSONResponse:
    if not _record(store, update_id, None, "received"):
        return JSONResponse({"ok": True, "ignored": "replayed update"})
    message = update.get("message")
    query = update.get("callback_query")
    if isinstance(query, dict) and isinstance(query.get("id"), str):
        return _callback(store, settings, service, update_id, query)
    if isinstance(message, dict):
        return _message(store, settings, service, update_id, message)
    _set_outcome(store, update_id, None, "ignored: not a callback query or a message")
    return JSONResponse({"ok": True, "ignored": "not a callback query or a message"})


def _callback(
    store: Store, settings: Settings, service: TaskService, update_id: int, query: dict[str, Any]
) -> JSONResponse:
    query_id = query["id"]
    message = query.get("message")
    if not isinstance(message, dict) or not _chat_matches(
        message.get("chat"), settings.telegram_chat_id
    ):
        _set_outcome(store, update_id, None, "refused: another chat")
        return _answer(query_id, "This chat does not steer tasks.")
    parsed = parse_callback_data(str(query.get("data") or ""))
    if parsed is None:
        _set_outcome(store, update_id, None, "refused: unknown action")
        return _answer(query_id, "Unknown action.")
    action, task_id = parsed
    sender = query.get("from")
    user: dict[str, Any] = sender if isinstance(sender, dict) else {}
    actor, username = _actor(sender)
    # The task is the one whose card was pressed, never just the id the button names.
    message_id = message.get("message_id")
    card_task = (
        store.task_of_card(settings.telegram_chat_id, message_id)
        if isinstance(message_id, int) and not isinstance(message_id, bool)
        else None
    )
    refusal = _refusal(settings, user, card_task, task_id)
    if refusal is not None:
        _refuse(store, update_id, card_task, actor, action, refusal)
        return _answer(query_id, refusal)
    try:
        task = store.get_task(task_id)
        if action == "approve":
            task = service.approve(task, actor=actor)
            text = f"{task.work_item}: approved"
        elif action == "reject":
            service.reject_target(task)  # refused here, before anyone is asked why
            with store.transaction() as tx:
                enqueue_reject_prompt(
                    tx,
                    chat_id=settings.telegram_chat_id,
                    task=task,
                    visit=gate_visit(task, store.task_events(task.id)),
                    card_message_id=message.get("message_id"),
                    username=username,
                )
            text = f"{task.work_item}: reply to my question with what must change"
        elif action == "retry":
            task = service.retry(task, actor=actor)
            text = f"{task.work_item}: retrying {task.stage}"
        else:
            task = service.cancel(task, actor=actor, reason=f"cancelled by {actor}")
            text = f"{task.work_item}: cancelled"
    except OrchestratorError as exc:
        # Not found, already moved, illegal here: the person learns why; nothing changed.
        _set_outcome(store, update_id, task_id, f"refused: {exc}")
        return _answer(query_id, str(exc))
    except BaseException:
        _forget(store, update_id)  # let Telegram's redelivery try again
        raise
    outcome = "reject asked" if action == "reject" else action
    _set_outcome(store, update_id, task_id, f"{outcome} by {actor}")
    log.info("telegram: %s", text)
    return _answer(query_id, text)


def _message(
    store: Store, settings: Settings, service: TaskService, update_id: int, message: dict[str, Any]
) -> JSONResponse:
    """A message: the feedback when it replies to a reject question of ours, else nothing."""
    chat = message.get("chat")
    if not _chat_matches(chat, settings.telegram_chat_id):
        _set_outcome(store, update_id, None, "ignored: another chat")
        return JSONResponse({"ok": True, "ignored": "another chat"})
    replied = message.get("reply_to_message")
    replied_id = replied.get("message_id") if isinstance(replied, dict) else None
    prompt = None
    if isinstance(replied_id, int) and not isinstance(replied_id, bool):
        prompt = find_prompt(store, settings.telegram_chat_id, replied_id)
    if prompt is None:
        _set_outcome(store, update_id, None, "ignored: not a reply to a reject question")
        return JSONResponse({"ok": True, "ignored": "not a reply to a reject question"})
    chat_id = chat.get("id") if isinstance(chat, dict) else None
    sender = message.get("from")
    actor, _ = _actor(sender)
    user: dict[str, Any] = sender if isinstance(sender, dict) else {}
    # The same people who may press the buttons may answer the question.
    refusal = _refusal(settings, user, prompt.task_id, prompt.task_id)
    if refusal is not None:
        _refuse(store, update_id, prompt.task_id, actor, "reject", refusal)
        return _reply(chat_id, message.get("message_id"), refusal)
    text = message.get("text")
    try:
        task = store.get_task(prompt.task_id)
        service.reject_target(task)  # left the gate: refused, naming the stage
        if gate_visit(task, store.task_events(task.id)) != prompt.gate_visit:
            raise ConflictError(
                f"that question was about an earlier visit of {task.work_item} to "
                f"{task.stage}; press Reject on its card again"
            )
        task = service.reject(task, feedback=text if isinstance(text, str) else "", actor=actor)
    except OrchestratorError as exc:
        _set_outcome(store, update_id, prompt.task_id, f"refused: {exc}")
        return _reply(chat_id, message.get("message_id"), f"Not rejected: {exc}")
    except BaseException:
        _forget(store, update_id)  # let Telegram's redelivery try again
        raise
    _set_outcome(store, update_id, task.id, f"reject by {actor}")
    log.info("telegram: %s rejected by %s", task.work_item, actor)
    return _reply(
        chat_id,
        message.get("message_id"),
        f"{task.work_item}: rejected by {actor}, back to {task.stage} with your feedback.",
    )
