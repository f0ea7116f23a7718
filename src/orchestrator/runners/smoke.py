"""Read-only smoke checks of a running instance: GET each endpoint, expect 2xx.

Only ``GET`` is ever sent, so a smoke can point at a live instance. The HTTP client is
an ``httpx.Client`` whose transport can be injected (``httpx.MockTransport`` in unit
tests); the runners use a real one. httpx is imported on first use: a test runner with
no smoke configured starts without paying for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import httpx

__all__ = ["SmokeResult", "format_failures", "smoke", "wait_healthy"]

READY_POLL_S: Final = 0.1


@dataclass(frozen=True)
class SmokeResult:
    """One GET: the endpoint, what it answered, how long it took."""

    endpoint: str
    url: str
    status_code: int | None
    elapsed_ms: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.error is None and self.status_code is not None and (200 <= self.status_code < 300)
        )

    def describe(self) -> str:
        """``GET http://host/queue -> 500`` (or the connection error)."""
        answer = str(self.status_code) if self.error is None else self.error
        return f"GET {self.url} -> {answer}"


def _local(url: str) -> bool:
    """Loopback URLs never go through a proxy from the environment (HTTP_PROXY & co)."""
    host = urlsplit(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


def _url(base_url: str, endpoint: str) -> str:
    return base_url.rstrip("/") + "/" + endpoint.lstrip("/")


def _get(client: httpx.Client, base_url: str, endpoint: str) -> SmokeResult:
    import httpx  # noqa: PLC0415 - imported on first use, see the module docstring

    url = _url(base_url, endpoint)
    started = time.monotonic()
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        elapsed = (time.monotonic() - started) * 1000
        return SmokeResult(endpoint, url, None, elapsed, f"{type(exc).__name__}: {exc}"[:300])
    elapsed = (time.monotonic() - started) * 1000
    return SmokeResult(endpoint, url, response.status_code, elapsed)


def smoke(
    base_url: str,
    endpoints: Sequence[str],
    *,
    timeout_s: float = 10.0,
    transport: httpx.BaseTransport | None = None,
) -> list[SmokeResult]:
    """GET every endpoint of ``base_url`` once, in order; never raises."""
    import httpx  # noqa: PLC0415 - imported on first use, see the module docstring

    with httpx.Client(
        timeout=timeout_s,
        transport=transport,
        follow_redirects=False,
        trust_env=not _local(base_url),
    ) as client:
        return [_get(client, base_url, endpoint) for endpoint in endpoints]


def wait_healthy(
    url: str,
    *,
    timeout_s: float,
    still_running: Callable[[], bool],
    transport: httpx.BaseTransport | None = None,
) -> SmokeResult:
    """Poll ``url`` until it answers 2xx, the service exits, or ``timeout_s`` passes.

    Returns the last attempt's result (``ok`` when the service became healthy).
    """
    import httpx  # noqa: PLC0415 - imported on first use, see the module docstring

    deadline = time.monotonic() + timeout_s
    last = SmokeResult(url, url, None, 0.0, "not polled yet")
    with httpx.Client(
        timeout=min(5.0, timeout_s), transport=transport, trust_env=not _local(url)
    ) as client:
        while True:
            last = _get(client, url, "")
            last = SmokeResult(url, url, last.status_code, last.elapsed_ms, last.error)
            if last.ok or not still_running() or time.monotonic() >= deadline:
                return last
            time.sleep(READY_POLL_S)


def format_failures(results: Sequence[SmokeResult]) -> str:
    """The failing endpoints, named: ``GET http://h/queue -> 500; GET ...``."""
    return "; ".join(result.describe() for result in results if not result.ok)
