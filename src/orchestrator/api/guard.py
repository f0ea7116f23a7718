"""The API's front door: Host check, browser safety, and the API token's role.

An ASGI middleware in front of every route, so a new endpoint is guarded without
opting in. For each HTTP request, in this order::

    Host not in allowed_hosts                     400  (DNS rebinding)
    write with a foreign Origin                   403  (a web page of another site)
    write without a JSON Content-Type             415  (an HTML form, a no-cors fetch)
    dashboard form post (/ui/...) without a same-
      origin Origin or Referer                    403  (a cross-site form)
    dashboard form post not form-encoded          415
    no / unknown / revoked token where one is due 401  (says how to create one);
      a dashboard page: 303 to /ui/login
    token's role below what the route needs       403
    otherwise                                     the route, with request.state.principal

Who a request is: the ``Authorization: Bearer`` token, else (for a read, or a
dashboard form post) the dashboard's session cookie (:mod:`orchestrator.api.web.sessions`,
resolved through :class:`SessionResolver`). A JSON API write never takes the cookie: a
browser cannot send a bearer token by itself, so a write that needs none of the
dashboard's CSRF checks cannot be made with the browser's credentials.

"Write" is any method but GET and HEAD outside ``/webhooks/...``: the signed webhooks
are authenticated by their signatures, not tokens, and their senders post JSON with no
Origin, but they pass the Host check too (put the public name in ``allowed_hosts``).
The rules themselves (which role a path needs) live in :mod:`orchestrator.auth`.
"""

from __future__ import annotations

import json
import logging
from typing import Final, Protocol
from urllib.parse import quote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.auth import (
    UI_PREFIX,
    WEBHOOK_PREFIX,
    Principal,
    authenticate,
    authorize,
    required_role,
)
from orchestrator.errors import ForbiddenError, NotAuthenticatedError
from orchestrator.settings import Settings
from orchestrator.store import Store

__all__ = [
    "FORM_TYPES",
    "LOGIN_PATH",
    "PRINCIPAL_STATE_KEY",
    "SESSION_COOKIE",
    "SESSION_STATE_KEY",
    "HttpGuard",
    "SessionResolver",
    "host_allowed",
    "is_dashboard_path",
]

log = logging.getLogger("orchestrator.api.server")

PRINCIPAL_STATE_KEY: Final = "principal"
# The session id of a dashboard request whose principal came from its cookie.
SESSION_STATE_KEY: Final = "session_id"
SESSION_COOKIE: Final = "orch_session"
LOGIN_PATH: Final = "/ui/login"
FORM_TYPES: Final = frozenset({"application/x-www-form-urlencoded"})
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


def is_dashboard_path(path: str) -> bool:
    """Whether ``path`` is the dashboard's (``/ui/...``, and ``/`` that leads there)."""
    return path == "/" or path == UI_PREFIX.rstrip("/") or path.startswith(UI_PREFIX)


class SessionResolver(Protocol):
    """The dashboard's sessions, as the guard sees them."""

    def principal(self, session_id: str) -> Principal | None:
        """Who the live session ``session_id`` is (its token checked again), or None."""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class HttpGuard:
    """ASGI middleware applying the checks in the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: Store,
        settings: Settings,
        sessions: SessionResolver | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.settings = settings
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = await self._check(scope)
        if refusal is not None:
            status, message = refusal
            path = str(scope.get("path", ""))
            method = str(scope.get("method", "GET")).upper()
            if status == 401 and is_dashboard_path(path) and method in READ_METHODS:
                await _send_login_redirect(send, scope)
                return
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
        dashboard = is_dashboard_path(path)
        writes = method not in READ_METHODS and not path.startswith(WEBHOOK_PREFIX)
        if writes and dashboard:
            refusal = _check_form_post(scope, host)
            if refusal is not None:
                return refusal
        elif writes:
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
        authorization = _header(scope, b"authorization")
        state = scope.setdefault("state", {})
        if role is None:
            # An open dashboard page (login, or any page with public_read) still knows
            # who is logged in, to show them their actions.
            if dashboard and authorization is None:
                session_principal = await self._session_principal(scope, state)
                if session_principal is not None:
                    state[PRINCIPAL_STATE_KEY] = session_principal
            return None
        try:
            principal: Principal | None = None
            if authorization is None and (dashboard or not writes):
                principal = await self._session_principal(scope, state)
            if principal is None:
                principal = await run_in_threadpool(
                    authenticate, self.store, self.settings, authorization
                )
            authorize(principal, role)
        except (NotAuthenticatedError, ForbiddenError) as exc:
            return exc.http_status, str(exc)
        state[PRINCIPAL_STATE_KEY] = principal
        return None

    async def _session_principal(self, scope: Scope, state: dict[str, object]) -> Principal | None:
        """The principal of the request's dashboard session cookie, if it is live."""
        if self.sessions is None:
            return None
        session_id = cookie_parser(_header(scope, b"cookie") or "").get(SESSION_COOKIE)
        if not session_id:
            return None
        principal = await run_in_threadpool(self.sessions.principal, session_id)
        if principal is not None:
            state[SESSION_STATE_KEY] = session_id
        return principal


def _check_form_post(scope: Scope, host: str) -> tuple[int, str] | None:
    """A dashboard form post must come from a page of this server: its Origin (or,
    when a browser sends none, its Referer) names this host, and it is form-encoded."""
    origin = _header(scope, b"origin")
    referer = _header(scope, b"referer")
    if origin is not None and origin != "null":
        same = _same_origin(origin, host)
    elif referer:
        same = _same_origin(referer, host)
    else:
        same = False
    if not same:
        shown = (origin or referer or "none")[:MAX_SHOWN_CHARS]
        return 403, (
            f"cross-site form post refused (Origin/Referer {shown!r}); "
            "use the dashboard's own pages"
        )
    content_type = (_header(scope, b"content-type") or "").partition(";")[0]
    if content_type.strip().lower() not in FORM_TYPES:
        return 415, "a dashboard form post is 'application/x-www-form-urlencoded'"
    return None


async def _send_login_redirect(send: Send, scope: Scope) -> None:
    """A dashboard page without a session: to the login form, coming back here after."""
    target = str(scope.get("path", "/"))
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    if query:
        target += "?" + query
    location = f"{LOGIN_PATH}?next={quote(target, safe='')}"
    headers = [
        (b"location", location.encode("latin-1", "replace")),
        (b"content-length", b"0"),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="orch"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
