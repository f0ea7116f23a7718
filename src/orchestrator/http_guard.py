"""The API's front door: Host check, browser safety, and the API token's role.

An ASGI middleware in front of every route, so a new endpoint is guarded without
opting in. For each HTTP request, in this order::

    Host not in allowed_hosts                     400  (DNS rebinding)
    write with a foreign Origin                   403  (a web page of another site)
    write without a JSON Content-Type             415  (an HTML form, a no-cors fetch)
    no / unknown / revoked token where one is due 401  (says how to create one)
    token's role below what the route needs       403
    otherwise                                     the route, with request.state.principal

"Write" is any method but GET and HEAD outside ``/webhooks/...``: the signed webhooks
are authenticated by their signatures, not tokens, and their senders post JSON with no
Origin, but they pass the Host check too (put the public name in ``allowed_hosts``).
The rules themselves (which role a path needs) live in :mod:`orchestrator.auth`.
"""

from __future__ import annotations

import json
import logging
from typing import Final
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.auth import WEBHOOK_PREFIX, Principal, authenticate, authorize, required_role
from orchestrator.errors import ForbiddenError, NotAuthenticatedError
from orchestrator.settings import Settings
from orchestrator.store import Store

__all__ = ["PRINCIPAL_STATE_KEY", "HttpGuard", "host_allowed"]

log = logging.getLogger("orchestrator.server")

PRINCIPAL_STATE_KEY: Final = "principal"
READ_METHODS: Final = frozenset({"GET", "HEAD"})
JSON_TYPES: Final = frozenset({"application/json"})
MAX_SHOWN_CHARS: Final = 100


def _hostname(host: str) -> str:
    """The name part of a Host header (``[::1]:8765`` -> ``::1``), lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Whether a Host header names one of ``allowed`` (``"*"`` allows any)."""
    if "*" in allowed:
        return True
    name = _hostname(host).rstrip(".")
    return bool(name) and name in {entry.strip().lower().rstrip(".") for entry in allowed}


def _same_origin(origin: str, host: str) -> bool:
    """Whether ``Origin`` names the host and port the request was addressed to.

    The scheme is not compared: behind a TLS proxy the browser says https while the
    server sees http; one port serves one origin either way.
    """
    try:
        parts = urlsplit(origin)
        request = urlsplit(f"//{host}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        return (parts.hostname, parts.port) == (request.hostname, request.port)
    except ValueError:  # a port that is not a number
        return False


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class HttpGuard:
    """ASGI middleware applying the checks in the module docstring."""

    def __init__(self, app: ASGIApp, *, store: Store, settings: Settings) -> None:
        self.app = app
        self.store = store
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = await self._check(scope)
        if refusal is not None:
            status, message = refusal
            await _send_error(send, status, message)
            return
        await self.app(scope, receive, send)

    async def _check(self, scope: Scope) -> tuple[int, str] | None:
        method = str(scope.get("method", "GET")).upper()
        path = str(scope.get("path", ""))
        host = _header(scope, b"host") or ""
        if not host_allowed(host, self.settings.allowed_hosts):
            shown = _hostname(host)[:MAX_SHOWN_CHARS] or "(none)"
            return 400, (
                f"host {shown!r} is not in allowed_hosts; add it to allowed_hosts in "
                "orch.toml if this server is meant to answer it"
            )
        writes = method not in READ_METHODS and not path.startswith(WEBHOOK_PREFIX)
        if writes:
            origin = _header(scope, b"origin")
            if origin is not None and not _same_origin(origin, host):
                return 403, (
                    f"cross-origin request refused (Origin {origin[:MAX_SHOWN_CHARS]!r}); "
                    "call the API from a script or the CLI, not from another site"
                )
            content_type = (_header(scope, b"content-type") or "").partition(";")[0]
            if content_type.strip().lower() not in JSON_TYPES:
                return 415, (
                    "a write needs 'Content-Type: application/json' (send {} when there is "
                    "nothing to say)"
                )
        role = required_role(method, path, public_read=self.settings.public_read)
        if role is None:
            return None
        authorization = _header(scope, b"authorization")
        try:
            principal: Principal = await run_in_threadpool(
                authenticate, self.store, self.settings, authorization
            )
            authorize(principal, role)
        except (NotAuthenticatedError, ForbiddenError) as exc:
            return exc.http_status, str(exc)
        scope.setdefault("state", {})[PRINCIPAL_STATE_KEY] = principal
        return None


async def _send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="orch"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
