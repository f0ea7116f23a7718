"""A small JSON-over-HTTP client shared by the forge and tracker adapters.

Adapters take an ``httpx.Client`` (base URL, auth headers and timeout already set by
the wiring), so a test points them at a local server or an ``httpx.MockTransport``.
:class:`JsonApi` adds one thing: every failure becomes one
:class:`~orchestrator.errors.IntegrationError` line naming the service, the call and
the service's own complaint (``message`` on Gitea and GitHub, ``error`` on Plane)::

    IntegrationError
      "gitea: POST /repos/acme/shop/pulls answered 409: pull request already exists"
      "plane: GET /api/v1/... failed: connection refused (is plane_base_url right?)"
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Final

import httpx

from orchestrator.errors import IntegrationError

__all__ = ["HTTP_TIMEOUT_S", "JsonApi", "as_dict", "as_list", "complaint", "make_client"]

# Seconds one call to a forge or tracker may take (connect, read, write each).
HTTP_TIMEOUT_S: Final = 20.0
MAX_COMPLAINT_CHARS: Final = 300


def make_client(base_url: str, headers: Mapping[str, str] | None = None) -> httpx.Client:
    """A client for one service: base URL, default headers, :data:`HTTP_TIMEOUT_S`."""
    return httpx.Client(base_url=base_url, headers=dict(headers or {}), timeout=HTTP_TIMEOUT_S)


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (a malformed answer)."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


class JsonApi:
    """JSON calls to one service through an ``httpx.Client``."""

    def __init__(self, service: str, client: httpx.Client) -> None:
        self.service = service
        self.client = client

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        expect: Collection[int] = (200, 201, 204),
    ) -> httpx.Response:
        """Send one request; a status outside ``expect`` raises :class:`IntegrationError`."""
        try:
            response = self.client.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            where = self.client.base_url
            raise IntegrationError(
                f"{self.service}: {method} {path} failed: {exc or type(exc).__name__} "
                f"(is {where} reachable?)"
            ) from None
        if response.status_code not in expect:
            raise IntegrationError(
                f"{self.service}: {method} {path} answered {response.status_code}: "
                f"{complaint(response)}"
            )
        return response

    def json(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        expect: Collection[int] = (200, 201),
    ) -> Any:
        """The decoded JSON body of a successful call (None if it has none)."""
        response = self.call(method, path, json=json, params=params, expect=expect)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise IntegrationError(
                f"{self.service}: {method} {path} answered {response.status_code} with a "
                "body that is not JSON"
            ) from None


def complaint(response: httpx.Response) -> str:
    """The service's own words for an error response, bounded."""
    text = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("message", "error", "detail", "description"):
            if isinstance(body.get(key), str) and body[key]:
                text = body[key]
                break
    if not text:
        text = response.text.strip() or response.reason_phrase or "no details"
    text = " ".join(text.split())
    return text if len(text) <= MAX_COMPLAINT_CHARS else text[: MAX_COMPLAINT_CHARS - 1] + "…"
