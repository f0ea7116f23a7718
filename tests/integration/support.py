"""Shared test helpers: a real git repository, and a sync httpx client over an ASGI app."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
def api_client(app: FastAPI, token: str | None = None) -> Iterator[httpx.Client]:
    """A client of ``app`` at ``http://localhost`` (an allowed host), sending ``token``."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    with (
        start_blocking_portal() as portal,
        httpx.Client(
            transport=PortalASGITransport(app, portal),
            base_url="http://localhost",
            headers=headers,
        ) as client,
    ):
        yield client


GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def make_repo(path: Path) -> Path:
    """A real git repository on branch main with one commit (a README)."""
    path.mkdir()
    env = {**os.environ, **GIT_IDENTITY}
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    (path / "README.md").write_text("repo\n")
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=path, check=True, env=env)
    return path
