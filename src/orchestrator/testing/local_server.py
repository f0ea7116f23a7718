"""The lifecycle every local test server shares (the model server, the fakes).

A :class:`LocalServer` is a ``ThreadingHTTPServer`` on ``host:port`` (port 0 = any free
port), served in a background thread by :meth:`~LocalServer.start` or in the caller's
thread by :meth:`~LocalServer.serve_forever`, stopped by :meth:`~LocalServer.stop`, and
usable as a context manager. Subclasses set their state, then call ``__init__`` with
their handler class, and may wake what waits on them in :meth:`~LocalServer._on_stop`.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Final, Self

__all__ = ["POLL_INTERVAL_S", "LocalServer"]

# How often the serving loop looks for a shutdown request.
POLL_INTERVAL_S: Final = 0.05
# How long stop() waits for the serving thread.
STOP_JOIN_S: Final = 5.0


class LocalServer:
    """A local HTTP server with a start/stop lifecycle."""

    thread_name = "local-server"

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        self._thread: threading.Thread | None = None
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            args=(POLL_INTERVAL_S,),
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        try:
            self._httpd.serve_forever(POLL_INTERVAL_S)
        finally:
            self._httpd.server_close()

    def _on_stop(self) -> None:
        """Release whatever a request may be waiting on (subclasses)."""

    def stop(self) -> None:
        self._on_stop()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=STOP_JOIN_S)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
