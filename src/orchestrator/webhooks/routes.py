"""``POST /webhooks/gitea``, ``/webhooks/github``, ``/webhooks/plane``: the HTTP edge of
:mod:`orchestrator.webhooks.intake`.

The route reads the body under ``webhook_max_body_bytes`` (a declared ``Content-Length``
over it is refused before a byte is read, a body that grows past it while arriving is
refused as soon as it does: 413), then hands the headers and the raw bytes to
:meth:`~orchestrator.webhooks.intake.WebhookReceiver.receive` in a worker thread (it talks to
the database; a cancel, a rollback or a merged pull request's ``deploy -> done`` is
only recorded in the inbox, never run in the request) and answers its status and JSON
body. The
signature is checked over those exact bytes, so nothing here parses them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.webhooks.intake import SOURCES, WebhookReceiver

__all__ = ["BodyTooLargeError", "read_capped", "webhook_router"]


class BodyTooLargeError(Exception):
    """The request body is over the cap (answered 413)."""


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (:class:`BodyTooLargeError`)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise BodyTooLargeError
    return bytes(body)


def webhook_router(
    store: Store,
    settings: Settings,
    service: TaskService,
    on_intent: Callable[[], None] | None = None,
) -> APIRouter:
    """The signed webhook endpoints of the forges and trackers over ``service``.

    ``on_intent`` is called after a delivery recorded an intent in the inbox (``orch
    serve`` wakes its inbox loop with it).
    """
    router = APIRouter()
    lock = threading.Lock()
    receivers: list[WebhookReceiver] = []

    def receiver() -> WebhookReceiver:
        # Built on first use: a server that never gets a webhook opens no clients.
        with lock:
            if not receivers:
                receivers.append(WebhookReceiver(store, settings, service, on_intent=on_intent))
            return receivers[0]

    def route(source: str) -> None:
        async def webhook(request: Request) -> JSONResponse:
            limit = settings.webhook_max_body_bytes
            try:
                body = await read_capped(request, limit)
            except BodyTooLargeError:
                return JSONResponse(
                    {"error": f"the body is over {limit} bytes (webhook_max_body_bytes)"},
                    status_code=413,
                )
            headers = dict(request.headers)  # keys lower-cased by Starlette
            status, answer = await run_in_threadpool(receiver().receive, source, headers, body)
            return JSONResponse(answer, status_code=status)

        router.add_api_route(
            f"/webhooks/{source}",
            webhook,
            methods=["POST"],
            summary=f"{source.capitalize()} webhook deliveries (HMAC-SHA256 signed)",
            name=f"{source}_webhook",
        )

    for source in SOURCES:
        route(source)
    return router
