"""A synchronous httpx client over an ASGI app, without the deprecated TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI


class PortalASGITransport(httpx.BaseTransport):
    """A sync transport over ``httpx.ASGITransport``: each request runs on ``portal``'s loop."""

    def __init__(self, app: FastAPI, portal: BlockingPortal) -> None:
        self._transport = httpx.ASGITransport(app=app)
        self._portal = portal

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._portal.call(self._send, request)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        response = await self._transport.handle_async_request(request)
        content = await response.aread()
        await response.aclose()
        return httpx.Response(response.status_code, headers=response.headers, content=content)


@contextmanager
def api_client(app: FastAPI) -> Iterator[httpx.Client]:
    with (
        start_blocking_portal() as portal,
        httpx.Client(
            transport=PortalASGITransport(app, portal), base_url="http://testserver"
        ) as client,
    ):
        yield client
