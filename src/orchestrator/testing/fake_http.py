"""A small base for local fakes of JSON HTTP services (the forges, Plane), for tests.

A fake is a real HTTP server on a free local port, in a thread: adapters under test talk
to it through their ordinary ``httpx.Client``, nothing of ours is patched. Subclasses
declare routes as ``(method, regex, handler)``; a handler gets the match, the decoded
JSON body (or None), the query and the headers, and returns ``(status, body)``. Every
request is recorded in :attr:`FakeService.requests` (what a test asserts on), and
:meth:`FakeService.post_webhook` signs and posts a delivery as the real service would.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import httpx

from orchestrator.testing.local_server import LocalServer

__all__ = ["FakeService", "Handler", "Request", "hmac_sha256"]

MAX_BODY_BYTES: Final = 1_000_000


def hmac_sha256(secret: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``body`` under ``secret`` (how all three services sign)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Request:
    """One request as the fake saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int


Handler = Callable[[re.Match[str], Any, dict[str, str], dict[str, str]], tuple[int, Any]]


class FakeService(LocalServer):
    """A fake JSON service on ``host:port``; subclasses fill :attr:`routes`."""

    name = "fake"

    @property
    def thread_name(self) -> str:  # type: ignore[override]
        return f"fake-{self.name}"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.requests: list[Request] = []
        self.lock = threading.RLock()
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        super().__init__(host, port, _handler_class(self))

    # --- for tests -----------------------------------------------------------------------
    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(pattern + r"/?\Z"), handler))

    def requests_to(self, method: str, pattern: str) -> list[Request]:
        """Recorded requests of ``method`` whose path matches ``pattern`` (a regex) and
        that were answered below 400 (what the service accepted)."""
        compiled = re.compile(pattern + r"/?\Z")
        with self.lock:
            return [
                r
                for r in self.requests
                if r.method == method and compiled.search(r.path) and r.status < 400
            ]

    def authorized(self, headers: Mapping[str, str]) -> bool:
        """Whether a request carries valid credentials (subclasses check theirs)."""
        return True

    def unauthorized(self) -> tuple[int, Any]:
        return 401, {"message": "Unauthorized"}

    @staticmethod
    def post_webhook(
        url: str, body: bytes, headers: Mapping[str, str], timeout_s: float = 60.0
    ) -> httpx.Response:
        """Post one delivery (already signed in ``headers``) to ``url``."""
        return httpx.post(
            url,
            content=body,
            headers={"Content-Type": "application/json", **headers},
            timeout=timeout_s,
        )

    # --- called by the handler -----------------------------------------------------------
    def dispatch(
        self, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any]:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return self._log(method, parts.path, query, headers, raw, 400, {"message": "bad JSON"})
        if not self.authorized(headers):
            status, answer = self.unauthorized()
            return self._log(method, parts.path, query, headers, body, status, answer)
        for route_method, pattern, handler in self.routes:
            if route_method != method:
                continue
            found = pattern.search(parts.path)
            if found is not None:
                try:
                    with self.lock:
                        status, answer = handler(found, body, query, headers)
                except Exception as exc:  # a bug in the fake: answer as a server would
                    status, answer = 500, {"message": f"{type(exc).__name__}: {exc}"}
                return self._log(method, parts.path, query, headers, body, status, answer)
        return self._log(method, parts.path, query, headers, body, 404, {"message": "Not Found"})

    def _log(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: Any,
        status: int,
        answer: Any,
    ) -> tuple[int, Any]:
        with self.lock:
            self.requests.append(Request(method, path, query, headers, body, status))
        return status, answer


def _handler_class(fake: FakeService) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(min(length, MAX_BODY_BYTES)) if length else b""
            headers = {key.lower(): value for key, value in self.headers.items()}
            status, answer = fake.dispatch(self.command, self.path, headers, raw)
            payload = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            if payload:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload:
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return _Handler
