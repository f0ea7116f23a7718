"""Request bodies under a cap, on every endpoint: refused before they are read.

:class:`BodyLimit` is an ASGI middleware in front of every route. A request whose
``Content-Length`` is over the cap is answered 413 before a byte of its body is read; a
body without a length (chunked) that grows past the cap while it arrives is refused as
soon as it does (the receive channel raises a 413 ``HTTPException``, which the route's
body parsing passes on and the app's handler answers as one JSON line). The caps:
``webhook_max_body_bytes`` under ``/webhooks/``, ``api_max_body_bytes`` elsewhere.

A client that hangs up mid-body is not an error of ours: :func:`client_hung_up` is the
one log line the server writes for it (no traceback).
"""

from __future__ import annotations

import json
import logging
from typing import Final

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.settings import Settings

__all__ = ["WEBHOOK_PREFIX", "BodyLimit", "body_limit", "client_hung_up"]

log = logging.getLogger("orchestrator.api.server")

WEBHOOK_PREFIX: Final = "/webhooks/"


def body_limit(settings: Settings, path: str) -> tuple[int, str]:
    """The cap on a request body for ``path``, and the setting that sets it."""
    if path.startswith(WEBHOOK_PREFIX):
        return settings.webhook_max_body_bytes, "webhook_max_body_bytes"
    return settings.api_max_body_bytes, "api_max_body_bytes"


def _too_large(limit: int, setting: str) -> str:
    return f"the body is over {limit} bytes ({setting}); send less"


def client_hung_up(scope: Scope) -> None:
    """Log, in one line, that the client of ``scope`` went away before its answer."""
    client = scope.get("client") or ("?", 0)
    log.info(
        "client %s:%s hung up during %s %s",
        client[0],
        client[1],
        scope.get("method"),
        scope.get("path"),
    )


class BodyLimit:
    """ASGI middleware refusing bodies over the cap (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = body_limit(self.settings, str(scope.get("path", "")))
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, _too_large(limit, setting))
            return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large(limit, setting))
            return message

        await self.app(scope, capped_receive, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == b"content-length":
            text = bytes(value).decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


async def _refuse(send: Send, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
