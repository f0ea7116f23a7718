"""A local fake of the Telegram Bot API, for tests and dry runs.

It speaks the documented shapes: ``POST /bot<token>/<method>`` with a JSON (or form)
body, answered by ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N,
"description": "..."}`` (plus ``"parameters": {"retry_after": S}`` on 429). Methods:

* ``sendMessage`` (``chat_id``, ``text``, ``reply_markup`` — an inline keyboard or a
  ``ForceReply``, ``disable_notification``, ``reply_parameters`` or the older
  ``reply_to_message_id``) — the Message, with a ``message_id`` counting up per chat and
  the replied-to message as ``reply_to_message``; ``400 Bad Request: message to be
  replied not found`` unless ``allow_sending_without_reply``;
* ``editMessageText`` — the Message; ``400 Bad Request: message is not modified: ...``
  when text and markup are the same, ``message to edit not found`` when it is gone;
* ``deleteMessage`` — ``true``; ``message to delete not found`` when it is gone;
* ``answerCallbackQuery`` — ``true``;
* ``setWebhook`` (``url``, ``secret_token``), ``getMe`` — so :meth:`FakeTelegram.press`
  (a button press) and :meth:`FakeTelegram.say` (a person's message, perhaps a reply)
  can post an Update to the webhook as Telegram would, with the secret header; a method
  in the webhook's answer (``{"method": "answerCallbackQuery", ...}``) is performed, as
  Telegram does.

A wrong token gets ``401 Unauthorized``, an unknown method ``404 Not Found``.

Knobs for tests (thread-safe): :meth:`FakeTelegram.fail_next` (e.g. a 429 with
``retry_after``), ``fail_deletes``, ``outage`` (every call answered with that HTTP
status and a proxy's HTML page — not the Bot API), ``blackhole`` (calls are held
unanswered until it is switched off, then dropped: a request that never reached
Telegram). ``calls`` records every call; :meth:`FakeTelegram.visible` the chat as a
person would see it.

Run it for a dry run: ``orch dev fake-telegram`` (or ``python -m
orchestrator.testing.fake_telegram``), then point ``telegram_api_base_url`` at it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import httpx

from orchestrator.errors import UsageError
from orchestrator.testing.local_server import LocalServer

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TOKEN",
    "NOT_MODIFIED",
    "Call",
    "FakeMessage",
    "FakeTelegram",
    "main",
]

DEFAULT_PORT: Final = 8081
DEFAULT_TOKEN: Final = "123456:FAKE-telegram-token"  # noqa: S105 - the fake's own token
MAX_BODY_BYTES: Final = 1_000_000
# How long a blackholed call is held at most before it is dropped anyway.
BLACKHOLE_MAX_S: Final = 60.0
NOT_MODIFIED: Final = (
    "Bad Request: message is not modified: specified new message content and reply "
    "markup are exactly the same as a current content and reply markup of the message"
)
BOT_USER: Final = {"id": 123456, "is_bot": True, "first_name": "orch", "username": "orch_bot"}


@dataclass
class FakeMessage:
    chat_id: str
    message_id: int
    text: str
    reply_markup: dict[str, Any] | None
    disable_notification: bool
    date: int
    deleted: bool = False
    edits: int = 0
    sender: dict[str, Any] | None = None  # None: the bot wrote it
    reply_to: int | None = None  # the message_id this one replies to


@dataclass(frozen=True)
class Call:
    """One Bot API call as the fake answered it (status 0: dropped unanswered)."""

    method: str
    params: dict[str, Any]
    status: int
    ok: bool
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class _Failure:
    method: str | None
    error_code: int
    description: str
    retry_after: int | None


def _chat_value(chat_id: str) -> int | str:
    return int(chat_id) if chat_id.lstrip("-").isdigit() else chat_id


def _markup(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):  # form-encoded bodies carry JSON-serialised objects
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _same_markup(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    def keyboard(markup: dict[str, Any] | None) -> Any:
        return (markup or {}).get("inline_keyboard") or []

    return bool(keyboard(a) == keyboard(b))


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)


class FakeTelegram(LocalServer):
    """The fake Bot API on ``host:port`` (port 0 = any free port)."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.fail_deletes = False
        self.outage: int | None = None
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self._blackhole = threading.Event()
        self._released = threading.Event()
        self._messages: dict[tuple[str, int], FakeMessage] = {}
        self._next_id: dict[str, int] = {}
        self._failures: list[_Failure] = []
        self._updates = itertools.count(1)
        self._lock = threading.Lock()
        self._log = log
        super().__init__(host, port, _handler_class(self))

    # --- lifecycle -----------------------------------------------------------------------
    thread_name = "fake-telegram"

    @property
    def url(self) -> str:
        """The base URL to configure as ``telegram_api_base_url``."""
        return super().url

    def _on_stop(self) -> None:
        self.blackhole = False

    # --- knobs ---------------------------------------------------------------------------
    def fail_next(
        self,
        method: str | None = None,
        *,
        error_code: int = 429,
        description: str | None = None,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """The next ``times`` calls (of ``method``, or any) fail with this Bot API error."""
        if error_code == 429 and retry_after is None:
            retry_after = 1
        text = description or (
            f"Too Many Requests: retry after {retry_after}"
            if error_code == 429
            else "Internal Server Error"
        )
        with self._lock:
            self._failures += [_Failure(method, error_code, text, retry_after)] * times

    @property
    def blackhole(self) -> bool:
        return self._blackhole.is_set()

    @blackhole.setter
    def blackhole(self, on: bool) -> None:
        if on:
            self._released.clear()
            self._blackhole.set()
        else:
            self._blackhole.clear()
            self._released.set()

    # --- what the chat shows -------------------------------------------------------------
    def visible(self, chat_id: str) -> list[FakeMessage]:
        """The chat's messages a person sees now, oldest first."""
        with self._lock:
            found = [
                m for (chat, _), m in self._messages.items() if chat == chat_id and not m.deleted
            ]
        return sorted(found, key=lambda m: m.message_id)

    def message(self, chat_id: str, message_id: int) -> FakeMessage | None:
        with self._lock:
            return self._messages.get((chat_id, message_id))

    def calls_of(self, method: str, *, ok: bool | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and (ok is None or c.ok == ok)]

    # --- Telegram -> the bot's webhook ---------------------------------------------------
    def callback_update(
        self,
        chat_id: str,
        message_id: int,
        data: str,
        *,
        username: str = "alice",
        user_id: int = 4242,
    ) -> dict[str, Any]:
        """An Update carrying a button press, as Telegram would post it."""
        number = next(self._updates)
        message = self.message(chat_id, message_id)
        return {
            "update_id": 900_000 + number,
            "callback_query": {
                "id": f"cq{number}",
                "from": {"id": user_id, "is_bot": False, "first_name": "A", "username": username},
                "chat_instance": "ci1",
                "data": data,
                "message": {
                    "message_id": message_id,
                    "date": int(time.time()),
                    "chat": {"id": _chat_value(chat_id), "type": "group", "title": "orch"},
                    "from": BOT_USER,
                    "text": message.text if message is not None else "",
                },
            },
        }

    def press(
        self,
        chat_id: str,
        message_id: int,
        data: str,
        *,
        username: str = "alice",
        user_id: int = 4242,
    ) -> httpx.Response:
        """Post a button press to the webhook registered with ``setWebhook``."""
        update = self.callback_update(chat_id, message_id, data, username=username, user_id=user_id)
        return self._post_update(update)

    def message_update(
        self,
        chat_id: str,
        text: str,
        *,
        reply_to: int | None = None,
        username: str = "alice",
        user_id: int = 4242,
    ) -> dict[str, Any]:
        """A person writes ``text`` in the chat (replying to ``reply_to``): the message
        joins the chat and this is the Update Telegram would post for it."""
        user = {
            "id": user_id,
            "is_bot": False,
            "first_name": username.title(),
            "username": username,
        }
        with self._lock:
            message_id = self._next_id.get(chat_id, 0) + 1
            self._next_id[chat_id] = message_id
            message = FakeMessage(
                chat_id,
                message_id,
                text,
                None,
                False,
                int(time.time()),
                sender=user,
                reply_to=reply_to if (chat_id, reply_to or 0) in self._messages else None,
            )
            self._messages[(chat_id, message_id)] = message
            result = self._result(message)
        return {"update_id": 900_000 + next(self._updates), "message": result}

    def say(
        self,
        chat_id: str,
        text: str,
        *,
        reply_to: int | None = None,
        username: str = "alice",
        user_id: int = 4242,
    ) -> httpx.Response:
        """Post a person's message (a reply when ``reply_to`` is set) to the webhook."""
        return self._post_update(
            self.message_update(
                chat_id, text, reply_to=reply_to, username=username, user_id=user_id
            )
        )

    def _post_update(self, update: dict[str, Any]) -> httpx.Response:
        """Post ``update`` to the webhook; perform the method its answer carries, if any."""
        if not self.webhook_url:
            raise UsageError("no webhook set: call setWebhook first")
        headers = {}
        if self.webhook_secret:
            headers["X-Telegram-Bot-Api-Secret-Token"] = self.webhook_secret
        response = httpx.post(self.webhook_url, json=update, headers=headers, timeout=30)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code == 200 and isinstance(answer, dict) and answer.get("method"):
            params = {k: v for k, v in answer.items() if k != "method"}
            status, body = self.handle(str(answer["method"]), params)
            self._record(Call(str(answer["method"]), params, status, ok=bool(body.get("ok"))))
        return response

    # --- called by the handler -----------------------------------------------------------
    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)
        if self._log is not None:
            self._log(f"{call.method} -> {call.status} {json.dumps(call.params)[:300]}")

    def _take_failure(self, method: str) -> _Failure | None:
        with self._lock:
            for index, failure in enumerate(self._failures):
                if failure.method is None or failure.method.lower() == method.lower():
                    return self._failures.pop(index)
        return None

    def _hold(self) -> None:
        self._released.wait(BLACKHOLE_MAX_S)

    def handle(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Answer one Bot API call: (HTTP status, body)."""
        failure = self._take_failure(method)
        if failure is not None:
            body: dict[str, Any] = {
                "ok": False,
                "error_code": failure.error_code,
                "description": failure.description,
            }
            if failure.retry_after is not None:
                body["parameters"] = {"retry_after": failure.retry_after}
            return failure.error_code, body
        handler = _METHODS.get(method.lower())
        if handler is None:
            return 404, {"ok": False, "error_code": 404, "description": "Not Found"}
        with self._lock:
            return handler(self, params)

    # Methods, under the lock.
    def _send(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        chat_id = str(params.get("chat_id") or "")
        text = str(params.get("text") or "")
        if not chat_id:
            return _bad("Bad Request: chat_id is empty")
        if not text.strip():
            return _bad("Bad Request: message text is empty")
        if len(text) > 4096:
            return _bad("Bad Request: message is too long")
        markup = _markup(params.get("reply_markup"))
        if markup is not None and "force_reply" in markup and markup["force_reply"] is not True:
            return _bad("Bad Request: can't parse reply keyboard markup JSON object")
        reply = _reply_parameters(params)
        reply_to = None
        if reply is not None:
            wanted, allow_without = reply
            if self._find(chat_id, wanted) is not None:
                reply_to = int(wanted)
            elif not allow_without:
                return _bad("Bad Request: message to be replied not found")
        message_id = self._next_id.get(chat_id, 0) + 1
        self._next_id[chat_id] = message_id
        message = FakeMessage(
            chat_id,
            message_id,
            text,
            markup,
            _truthy(params.get("disable_notification")),
            int(time.time()),
            reply_to=reply_to,
        )
        self._messages[(chat_id, message_id)] = message
        return 200, {"ok": True, "result": self._result(message)}

    def _edit(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        chat_id = str(params.get("chat_id") or "")
        message = self._find(chat_id, params.get("message_id"))
        if message is None:
            return _bad("Bad Request: message to edit not found")
        text = str(params.get("text") or "")
        if not text.strip():
            return _bad("Bad Request: message text is empty")
        markup = _markup(params.get("reply_markup"))
        if text == message.text and _same_markup(markup, message.reply_markup):
            return _bad(NOT_MODIFIED)
        message.text, message.reply_markup = text, markup
        message.edits += 1
        return 200, {"ok": True, "result": self._result(message)}

    def _delete(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.fail_deletes:
            return _bad("Bad Request: message can't be deleted for everyone")
        message = self._find(str(params.get("chat_id") or ""), params.get("message_id"))
        if message is None:
            return _bad("Bad Request: message to delete not found")
        message.deleted = True
        return 200, {"ok": True, "result": True}

    def _answer(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not params.get("callback_query_id"):
            return _bad(
                "Bad Request: query is too old and response timeout expired or query ID is invalid"
            )
        return 200, {"ok": True, "result": True}

    def _set_webhook(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.webhook_url = str(params.get("url") or "") or None
        self.webhook_secret = str(params.get("secret_token") or "") or None
        return 200, {"ok": True, "result": True, "description": "Webhook was set"}

    def _get_me(self, _params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, {"ok": True, "result": BOT_USER}

    def _find(self, chat_id: str, message_id: Any) -> FakeMessage | None:
        try:
            number = int(message_id)
        except (TypeError, ValueError):
            return None
        message = self._messages.get((chat_id, number))
        return None if message is None or message.deleted else message

    def _result(self, message: FakeMessage, *, nested: bool = False) -> dict[str, Any]:
        """The Message object; a reply carries the message it replies to, one level deep,
        as Telegram sends it."""
        result: dict[str, Any] = {
            "message_id": message.message_id,
            "from": message.sender or BOT_USER,
            "chat": {"id": _chat_value(message.chat_id), "type": "group", "title": "orch"},
            "date": message.date,
            "text": message.text,
        }
        if message.reply_markup and message.reply_markup.get("inline_keyboard"):
            result["reply_markup"] = message.reply_markup
        original = self._messages.get((message.chat_id, message.reply_to or 0))
        if original is not None and not nested:
            result["reply_to_message"] = self._result(original, nested=True)
        return result


def _reply_parameters(params: dict[str, Any]) -> tuple[Any, bool] | None:
    """(message id, allow_sending_without_reply) from ``reply_parameters`` or the older
    ``reply_to_message_id``; None when the message replies to nothing."""
    value = params.get("reply_parameters")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if isinstance(value, dict) and "message_id" in value:
        return value["message_id"], _truthy(value.get("allow_sending_without_reply"))
    if params.get("reply_to_message_id") is not None:
        allow = _truthy(params.get("allow_sending_without_reply"))
        return params["reply_to_message_id"], allow
    return None


def _bad(description: str) -> tuple[int, dict[str, Any]]:
    return 400, {"ok": False, "error_code": 400, "description": description}


_METHODS: Final[
    Mapping[str, Callable[[FakeTelegram, dict[str, Any]], tuple[int, dict[str, Any]]]]
] = {
    "sendmessage": FakeTelegram._send,
    "editmessagetext": FakeTelegram._edit,
    "deletemessage": FakeTelegram._delete,
    "answercallbackquery": FakeTelegram._answer,
    "setwebhook": FakeTelegram._set_webhook,
    "getme": FakeTelegram._get_me,
}


def _handler_class(fake: FakeTelegram) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        telegram = fake

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    telegram: FakeTelegram

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default access log; calls are logged by the fake."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        fake = self.telegram
        parts = urlsplit(self.path)
        params = self._params(parts.query)
        _, _, rest = parts.path.partition("/bot")
        token, _, method = rest.partition("/")
        if fake.blackhole:
            fake._hold()
            fake._record(Call(method, params, 0, ok=False))
            self.close_connection = True
            return  # dropped: the request never reached Telegram
        # Each call is recorded before it is answered: a test reading ``calls`` right
        # after its call returned must find it.
        if fake.outage is not None:
            fake._record(Call(method, params, fake.outage, ok=False))
            self._reply(fake.outage, b"<html><body>502 Bad Gateway</body></html>", "text/html")
            return
        if not parts.path.startswith("/bot") or token != fake.token:
            status, body = 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
        else:
            status, body = fake.handle(method, params)
        fake._record(Call(method, params, status, ok=bool(body.get("ok"))))
        self._reply(status, json.dumps(body).encode("utf-8"), "application/json")

    def _params(self, query: str) -> dict[str, Any]:
        params: dict[str, Any] = dict(parse_qsl(query))
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY_BYTES:
            return params
        raw = self.rfile.read(length)
        if "json" in (self.headers.get("Content-Type") or ""):
            try:
                parsed = json.loads(raw)
            except ValueError:
                return params
            if isinstance(parsed, dict):
                params.update(parsed)
        else:
            params.update(parse_qsl(raw.decode("utf-8", "replace")))
        return params

    def _reply(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.testing.fake_telegram",
        description="Serve a fake Telegram Bot API locally, printing every call.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    return parser


def serve(host: str, port: int, token: str, say: Callable[[str], None]) -> None:
    """Run the fake in the foreground, saying what it does, until interrupted."""
    try:
        fake = FakeTelegram(token=token, host=host, port=port, log=say)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    say(f"fake Telegram Bot API on {fake.url}")
    say(f"set ORCH_TELEGRAM_API_BASE_URL={fake.url} ORCH_TELEGRAM_BOT_TOKEN={token}")
    try:
        fake.serve_forever()
    except KeyboardInterrupt:
        say("stopped")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        serve(args.host, args.port, args.token, lambda line: print(line, flush=True))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
