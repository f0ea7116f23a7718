"""A local HTTP server speaking the Anthropic Messages and OpenAI Responses APIs.

Real agent CLIs run against it: Claude Code with ``ANTHROPIC_BASE_URL`` pointing here,
Codex with a model provider whose ``base_url`` is ``<url>/v1``
(:meth:`ModelServer.codex_args`): no model, no network, instant answers, real tool
calls. What it says is decided by a :class:`~orchestrator.testing.model_script.Script`
(see that module).

Routes:

* ``POST /v1/messages`` (any query, e.g. ``?beta=true``): the scripted reply, as
  server-sent events when the body says ``"stream": true`` (``message_start``,
  ``content_block_start`` / ``_delta`` / ``_stop`` with ``text_delta`` or
  ``input_json_delta``, ``message_delta`` with ``stop_reason`` and usage,
  ``message_stop``), else as one JSON message;
* ``POST /v1/messages/count_tokens``: an estimate;
* ``POST /v1/responses``: the scripted reply in the Responses API's shapes
  (:mod:`orchestrator.testing.responses_api`), streamed when ``"stream": true``; errors
  as ``{"error": {"message", "type", "param", "code"}}``;
* a turn with ``drops`` sends half of its reply and closes the connection, the first
  ``drops`` times a conversation asks for it (a dropped stream the client retries);
* anything else: 404 with the API's error shape
  ``{"type": "error", "error": {"type": "not_found_error", "message": ...}}``.

Use it in-process (``with ModelServer(script) as server: server.url``) or as
``python -m orchestrator.testing.model_server`` / ``orch dev model-server``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import shlex
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from orchestrator.errors import UsageError
from orchestrator.testing import responses_api
from orchestrator.testing.local_server import LocalServer
from orchestrator.testing.model_script import (
    CHARS_PER_TOKEN,
    DEFAULT_MODEL,
    DEFAULT_SCRIPT,
    ApiErrorReply,
    Reply,
    Script,
    first_user_text,
    load_script,
    plan_reply,
)

__all__ = [
    "API_KEY",
    "DEFAULT_PORT",
    "Exchange",
    "ModelServer",
    "codex_args",
    "main",
    "sse_events",
]

DEFAULT_PORT: Final = 8787
MAX_BODY_BYTES: Final = 32 * 1024 * 1024
# Text is streamed in pieces of this many characters, as a model would.
TEXT_CHUNK_CHARS: Final = 200
# The Codex model provider :meth:`ModelServer.codex_args` defines.
CODEX_PROVIDER: Final = "orch-model-server"
API_KEY: Final = "sk-model-server"


@dataclass(frozen=True)
class Exchange:
    """One request the server answered (for tests and the console log)."""

    method: str
    path: str
    status: int
    session: str = ""
    turn: int = -1
    summary: str = ""
    model: str = ""


def _chunks(text: str, size: int = TEXT_CHUNK_CHARS) -> Iterator[str]:
    for start in range(0, len(text), size):
        yield text[start : start + size]


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _message(reply: Reply, model: str, message_id: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": reply.content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": {
            # The Messages API counts cache reads apart from input.
            "input_tokens": reply.input_tokens - reply.cached_input_tokens,
            "output_tokens": reply.output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": reply.cached_input_tokens,
        },
    }


def sse_events(reply: Reply, model: str, message_id: str) -> list[str]:
    """The reply as the Messages API streams it: one SSE event per string."""
    start = _message(reply, model, message_id)
    start.update(content=[], stop_reason=None)
    start["usage"] = {**start["usage"], "output_tokens": 1}
    parts = [
        _event("message_start", {"type": "message_start", "message": start}),
        _event("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(reply.content):
        if block["type"] == "text":
            opened: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in _chunks(block["text"])]
        else:
            opened = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            payload = json.dumps(block["input"], ensure_ascii=False)
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in _chunks(payload)]
        parts.append(
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opened},
            )
        )
        parts += [
            _event(
                "content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}
            )
            for d in deltas
        ]
        parts.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    parts.append(
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": reply.output_tokens},
            },
        )
    )
    parts.append(_event("message_stop", {"type": "message_stop"}))
    return parts


def _error_body(error: ApiErrorReply, request_id: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error.type, "message": error.message},
        "request_id": request_id,
    }


def codex_args(url: str, **provider: int | str) -> list[str]:
    """Codex ``-c`` options: a model provider on the Responses API of the server at ``url``.

    ``provider`` adds keys to it, e.g. ``stream_max_retries=2``. The key comes from
    ``OPENAI_API_KEY`` (:meth:`ModelServer.env` sets it).
    """
    keys = {
        "name": "orch model server",
        "base_url": f"{url}/v1",
        "env_key": "OPENAI_API_KEY",
        "wire_api": "responses",
        **provider,
    }
    table = ", ".join(f"{key} = {json.dumps(value)}" for key, value in keys.items())
    return [
        "-c",
        f'model_provider="{CODEX_PROVIDER}"',
        "-c",
        f"model_providers.{CODEX_PROVIDER}={{{table}}}",
    ]


class ModelServer(LocalServer):
    """The scripted Messages API on ``host:port`` (port 0 = any free port)."""

    def __init__(
        self,
        script: Script = DEFAULT_SCRIPT,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.script = script
        self.exchanges: list[Exchange] = []
        self._log = log
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._drops: dict[tuple[str, int, str], int] = {}
        self._stopping = threading.Event()
        super().__init__(host, port, _handler_class(self))

    thread_name = "model-server"

    def env(self) -> dict[str, str]:
        """What an agent CLI needs to talk to this server instead of the real API.

        Claude Code reads the base URL from here; Codex needs :meth:`codex_args` too.
        """
        return {
            "ANTHROPIC_BASE_URL": self.url,
            "ANTHROPIC_API_KEY": API_KEY,
            "OPENAI_API_KEY": API_KEY,
        }

    def codex_args(self, **provider: int | str) -> list[str]:
        """Codex ``-c`` options for this server: see :func:`codex_args`."""
        return codex_args(self.url, **provider)

    def _on_stop(self) -> None:
        self._stopping.set()  # wakes replies that wait out a delay

    # --- called by the handler ---------------------------------------------------------
    def next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def record(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)
        if self._log is not None:
            where = f" {exchange.session} turn {exchange.turn + 1}" if exchange.session else ""
            self._log(
                f"{exchange.method} {exchange.path} -> {exchange.status}{where}: {exchange.summary}"
            )

    def wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def drop_now(self, reply: Reply, conversation: str) -> bool:
        """Whether this answer is to be dropped: the turn's first ``drops`` times."""
        if not reply.drops:
            return False
        key = (reply.session, reply.turn, conversation)
        with self._lock:
            done = self._drops.get(key, 0)
            if done >= reply.drops:
                return False
            self._drops[key] = done + 1
            return True


def _handler_class(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        model_server = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    model_server: ModelServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default access log; exchanges are logged by the server."""

    # Every method lands in one place; unknown routes get the API's 404.
    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        body = self._read_body()
        if self.command == "POST" and path == "/v1/messages":
            self._messages(body)
        elif self.command == "POST" and path == "/v1/responses":
            self._responses(body)
        elif self.command == "POST" and path == "/v1/messages/count_tokens":
            self._count_tokens(body)
        else:
            self._error(
                ApiErrorReply(
                    status=404,
                    type="not_found_error",
                    message=f"Not found: {self.command} {self.path}",
                )
            )

    def _read_body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY_BYTES:
            if length > 0:
                self.rfile.read(length)
            return None
        try:
            parsed = json.loads(self.rfile.read(length))
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None

    def _send(
        self,
        status: int,
        body: str | list[str],
        content_type: str,
        request_id: str,
        *,
        drop: bool = False,
        **record: Any,
    ) -> None:
        """Answer; ``body`` in parts (SSE events) can be ``drop``ped after half of them."""
        parts = [body] if isinstance(body, str) else body
        data = "".join(parts).encode("utf-8")
        if drop:
            record["summary"] = f"{record.get('summary', '')} (dropped)".strip()
        # Recorded before the reply goes out: a client that has its answer finds it.
        self.model_server.record(Exchange(self.command, self.path, status, **record))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", request_id)
        self.end_headers()
        if not drop:
            self.wfile.write(data)
            return
        # Half the events (or bytes), then the connection goes: the client sees a body
        # cut short, as when a network path dies mid-stream.
        half = (
            "".join(parts[: len(parts) // 2]).encode() if len(parts) > 1 else data[: len(data) // 2]
        )
        self.wfile.write(half)
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _error(
        self,
        error: ApiErrorReply,
        shape: Callable[[ApiErrorReply, str], Any] | None = None,
        **record: Any,
    ) -> None:
        request_id = f"req_{self.model_server.next_id():06d}"
        record.setdefault("summary", f"error {error.status} {error.type}")
        body = json.dumps((shape or _error_body)(error, request_id))
        self._send(error.status, body, "application/json", request_id, **record)

    def _responses(self, body: dict[str, Any] | None) -> None:
        def shape(error: ApiErrorReply, request_id: str) -> Any:
            return responses_api.error_body(error)

        raw_input = body.get("input") if body is not None else None
        if body is None or not isinstance(raw_input, list | str):
            message = "the body must be JSON with an 'input' list"
            self._error(ApiErrorReply(message=message), shape)
            return
        view = responses_api.messages_view(body)
        number = self.model_server.next_id()
        reply = plan_reply(self.model_server.script, view, number)
        if reply.delay_s:
            self.model_server.wait(reply.delay_s)
        model = str(body.get("model") or DEFAULT_MODEL)
        record: dict[str, Any] = {"session": reply.session, "turn": reply.turn, "model": model}
        if reply.error is not None:
            self._error(reply.error, shape, summary=reply.summary, **record)
            return
        request_id = f"req_{number:06d}"
        drop = self.model_server.drop_now(reply, first_user_text(view))
        if body.get("stream"):
            events = responses_api.stream_events(reply, model, number)
            self._send(
                200,
                events,
                "text/event-stream",
                request_id,
                drop=drop,
                summary=reply.summary,
                **record,
            )
        else:
            response = json.dumps(responses_api.response_object(reply, model, number))
            self._send(
                200,
                response,
                "application/json",
                request_id,
                drop=drop,
                summary=reply.summary,
                **record,
            )

    def _messages(self, body: dict[str, Any] | None) -> None:
        if body is None or not isinstance(body.get("messages"), list):
            self._error(ApiErrorReply(message="the body must be JSON with a 'messages' list"))
            return
        number = self.model_server.next_id()
        reply = plan_reply(self.model_server.script, body, number)
        if reply.delay_s:
            self.model_server.wait(reply.delay_s)
        model = str(body.get("model") or DEFAULT_MODEL)
        record: dict[str, Any] = {"session": reply.session, "turn": reply.turn, "model": model}
        if reply.error is not None:
            self._error(reply.error, summary=reply.summary, **record)
            return
        message_id = f"msg_{number:06d}"
        request_id = f"req_{number:06d}"
        drop = self.model_server.drop_now(reply, first_user_text(body))
        if body.get("stream"):
            events = sse_events(reply, model, message_id)
            self._send(
                200,
                events,
                "text/event-stream",
                request_id,
                drop=drop,
                summary=reply.summary,
                **record,
            )
        else:
            message = json.dumps(_message(reply, model, message_id))
            self._send(
                200,
                message,
                "application/json",
                request_id,
                drop=drop,
                summary=reply.summary,
                **record,
            )

    def _count_tokens(self, body: dict[str, Any] | None) -> None:
        if body is None:
            self._error(ApiErrorReply(message="the body must be JSON"))
            return
        tokens = max(1, len(json.dumps(body)) // CHARS_PER_TOKEN)
        request_id = f"req_{self.model_server.next_id():06d}"
        payload = json.dumps({"input_tokens": tokens})
        self._send(200, payload, "application/json", request_id, summary="count_tokens")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.testing.model_server",
        description="Serve the Anthropic Messages and OpenAI Responses APIs from a script.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--script", type=Path, default=None, help="TOML or JSON script")
    return parser


def serve(script_path: Path | None, host: str, port: int, say: Callable[[str], None]) -> None:
    """Run the server in the foreground, saying what it does, until interrupted."""
    script = load_script(script_path) if script_path is not None else DEFAULT_SCRIPT
    try:
        server = ModelServer(script, host=host, port=port, log=say)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    source = str(script_path) if script_path is not None else "the built-in dry-run script"
    say(f"model server on {server.url}, replaying {source}")
    say(f"point an agent at it: ANTHROPIC_BASE_URL={server.url} ANTHROPIC_API_KEY={API_KEY}")
    say(f"or Codex: OPENAI_API_KEY={API_KEY} codex exec {shlex.join(server.codex_args())} ...")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        say("stopped")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        serve(args.script, args.host, args.port, lambda line: print(line, flush=True))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
