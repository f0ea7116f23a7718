"""``POST /webhooks/telegram``: the card's buttons (approve, retry, cancel) come in here.

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
   acts through :class:`~orchestrator.service.TaskService` (as actor
   ``telegram:<user>``), and answers the query in the webhook's response
   (``{"method": "answerCallbackQuery", ...}``, as the Bot API allows), so no outbound
   call is needed; the card itself follows through the outbox;
4. answers 200 to every other update (Telegram would otherwise redeliver it).

If acting fails unexpectedly the delivery record is removed and the error propagates,
so Telegram's redelivery gets another chance.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any, Final

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from orchestrator.errors import OrchestratorError
from orchestrator.integrations.card import parse_callback_data
from orchestrator.service import TaskService
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store.schema import webhook_deliveries
from orchestrator.webhook_routes import BodyTooLargeError, read_capped

__all__ = ["MAX_BODY_BYTES", "SECRET_HEADER", "telegram_webhook_router"]

log = logging.getLogger("orchestrator.telegram")

SECRET_HEADER: Final = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name
# An Update with a callback query is a few kilobytes.
MAX_BODY_BYTES: Final = 1_000_000
SOURCE: Final = "telegram"
ANSWER_TEXT_CHARS: Final = 190  # answerCallbackQuery text: 0-200 characters


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
            update = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the body is not JSON; expected a Telegram Update")
        if not isinstance(update, dict):
            return _error(400, "expected a Telegram Update (a JSON object)")
        update_id = update.get("update_id")
        if not isinstance(update_id, int) or isinstance(update_id, bool):
            return _error(400, "the Update has no integer update_id")
        return await run_in_threadpool(_handle, store, settings, service, update_id, update)

    return router


def _record(store: Store, update_id: int, task_id: int | None, outcome: str) -> bool:
    """Record the delivery; False when it was seen before (a replay)."""
    try:
        with store.transaction() as tx:
            tx.conn.execute(
                webhook_deliveries.insert().values(
                    source=SOURCE,
                    delivery_id=str(update_id),
                    task_id=task_id,
                    outcome=outcome[:200],
                    received_at=time.time(),
                )
            )
    except sa.exc.IntegrityError:
        return False
    return True


def _set_outcome(store: Store, update_id: int, task_id: int | None, outcome: str) -> None:
    with store.transaction() as tx:
        tx.conn.execute(
            webhook_deliveries.update()
            .where(
                webhook_deliveries.c.source == SOURCE,
                webhook_deliveries.c.delivery_id == str(update_id),
            )
            .values(task_id=task_id, outcome=outcome[:200])
        )


def _forget(store: Store, update_id: int) -> None:
    with store.transaction() as tx:
        tx.conn.execute(
            webhook_deliveries.delete().where(
                webhook_deliveries.c.source == SOURCE,
                webhook_deliveries.c.delivery_id == str(update_id),
            )
        )


def _handle(
    store: Store, settings: Settings, service: TaskService, update_id: int, update: dict[str, Any]
) -> JSONResponse:
    if not _record(store, update_id, None, "received"):
        return JSONResponse({"ok": True, "ignored": "replayed update"})
    query = update.get("callback_query")
    if not isinstance(query, dict) or not isinstance(query.get("id"), str):
        _set_outcome(store, update_id, None, "ignored: not a callback query")
        return JSONResponse({"ok": True, "ignored": "not a callback query"})
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
    who = str(user.get("username") or user.get("id") or "unknown")[:60]
    actor = f"telegram:{who}"
    try:
        task = store.get_task(task_id)
        if action == "approve":
            task = service.approve(task, actor=actor)
            text = f"{task.work_item}: approved"
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
    _set_outcome(store, update_id, task_id, f"{action} by {actor}")
    log.info("telegram: %s", text)
    return _answer(query_id, text)
