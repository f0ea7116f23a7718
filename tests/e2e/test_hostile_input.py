"""Hostile input against the real ``orch serve``: never a 500, never a traceback in its
log, nothing created by a refused request.

The server runs as a subprocess (its stdout and stderr in ``serve.log``). Hypothesis
iterates over the routes the server's own ``/openapi.json`` lists, so a new endpoint is
covered without touching this file: path and query parameters and JSON bodies (built
from each route's schema) are drawn from text made to hurt (lone surrogates, NUL,
over-long path components, bidi overrides, emoji sequences), the webhooks get signed
and unsigned deliveries of any shape. After each request: the status is below 500,
the log holds no traceback, and a refused request (4xx) added no task and no delivery.

The named cases each failed on the code before this suite (see the report of the change
that added it): a 500 for a signed GitHub issue with a lone surrogate, for ``POST
/tasks`` with a 300-byte path component or a lone surrogate in the description, for a
non-ASCII bearer token on the lease release and for a Telegram username with a lone
surrogate; a traceback per client hanging up mid-body; ``POST /tasks`` waiting for a
10 MB body it then refused; ``orch serve`` never exiting on SIGTERM while a client
stalled mid-request; a title with a ZWJ emoji refused, and the refusal remembered.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.e2e.test_integrations import Serve, free_port, wait_for
from tests.integration.support import make_repo

from orchestrator.testing.fake_http import hmac_sha256
from orchestrator.webhooks.events import GITEA_EVENTS, GITHUB_EVENTS, PLANE_EVENTS

pytestmark = pytest.mark.e2e

SECRETS = {"gitea": "g-secret", "github": "h-secret", "plane": "p-secret", "telegram": "t-secret"}
ADMIN_TOKEN = "admin-secret"
CHAT = "-100555"
# How long a socket read waits for an answer that should come at once (a bound on the
# wait, not an assertion on a duration).
ANSWER_WAIT_S = 30.0
SCRIPTED = "".join(
    f'[stages.{stage}]\nagent = "scripted"\n'
    for stage in ("analysis", "architecture", "development")
)
TRACEBACK_MARKERS = ("Traceback (most recent call last)", "Exception in ASGI application")


def write_config(workdir: Path, repo: Path, extra: str = "") -> None:
    (workdir / "orch.toml").write_text(
        'data_dir = ".orch"\nretry_backoff_s = 0\n'
        # Any repository: hostile paths reach the service, not only the allow-list.
        "allow_any_repo = true\n"
        f'admin_token = "{ADMIN_TOKEN}"\n'
        f'gitea_webhook_secret = "{SECRETS["gitea"]}"\n'
        f'github_webhook_secret = "{SECRETS["github"]}"\n'
        f'plane_webhook_secret = "{SECRETS["plane"]}"\n'
        f'telegram_webhook_secret = "{SECRETS["telegram"]}"\n'
        f'telegram_chat_id = "{CHAT}"\n'
        "api_max_body_bytes = 65536\nwebhook_max_body_bytes = 65536\n"
        + extra
        + SCRIPTED
        + f'[repos.shop]\npath = "{repo}"\nforge_repo = "acme/shop"\n'
    )


def api_token(workdir: Path) -> str | None:
    """An admin API token when this orch has tokens (``orch token create``), else None."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    made = subprocess.run(
        [sys.executable, "-m", "orchestrator", "token", "create", "hostile", "--role", "admin"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        return None
    return next(word for word in made.stdout.split() if word.startswith("orch_"))


@dataclass
class Hostile:
    """A running ``orch serve`` and what a test needs to talk to it."""

    serve: Serve
    workdir: Path
    repo: Path
    headers: dict[str, str]

    def counts(self) -> tuple[int, int, int]:
        """Tasks, webhook deliveries and inbox intents in the server's database."""
        with sqlite3.connect(self.workdir / ".orch" / "orch.db") as db:
            tasks = db.execute("SELECT count(*) FROM tasks").fetchone()[0]
            deliveries = db.execute("SELECT count(*) FROM webhook_deliveries").fetchone()[0]
            intents = db.execute("SELECT count(*) FROM inbox").fetchone()[0]
        return int(tasks), int(deliveries), int(intents)

    def log(self) -> str:
        return self.serve.log.read_text(errors="replace")

    def assert_no_traceback(self, since: int = 0) -> None:
        """No traceback in the log after its first ``since`` characters."""
        text = self.log()[since:]
        for marker in TRACEBACK_MARKERS:
            assert marker not in text, text[text.index(marker) - 200 :][:3000]

    def request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str | bytes] | None = None,
    ) -> httpx.Response:
        sent = {"Content-Type": "application/json", **self.headers, **(headers or {})}
        with httpx.stream(
            method, f"{self.serve.url}{path}", content=content, headers=sent, timeout=60
        ) as answer:
            # A live stream (GET /events, a followed log) has no end to read: its status
            # and headers are the answer.
            if not answer.headers.get("content-type", "").startswith("text/event-stream"):
                answer.read()
        return answer

    def post_json(self, path: str, value: Any, headers: dict[str, str] | None = None) -> Any:
        return self.request("POST", path, content=json.dumps(value).encode(), headers=headers)

    def raw(self, head: bytes, body: bytes = b"") -> socket.socket:
        """A socket that sent ``head`` (and ``body``) and is left open."""
        sock = socket.create_connection(("127.0.0.1", self.serve.port))
        sock.sendall(head + body)
        return sock


def start(workdir: Path, extra: str = "") -> Hostile:
    repo = make_repo(workdir / "shop")
    write_config(workdir, repo, extra)
    token = api_token(workdir)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    serve = Serve(workdir, free_port()).start()
    return Hostile(serve, workdir, repo, headers)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    running = start(tmp_path_factory.mktemp("hostile"))
    try:
        yield running
    finally:
        running.serve.stop()


def signed(source: str, body: bytes, event: str, delivery: str) -> dict[str, str]:
    secret = SECRETS[source]
    if source == "github":
        return {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": "sha256=" + hmac_sha256(secret, body),
        }
    if source == "gitea":
        return {
            "X-Gitea-Event": event,
            "X-Gitea-Delivery": delivery,
            "X-Gitea-Signature": hmac_sha256(secret, body),
        }
    if source == "plane":
        return {"X-Plane-Delivery": delivery, "X-Plane-Signature": hmac_sha256(secret, body)}
    return {"X-Telegram-Bot-Api-Secret-Token": secret}


def github_issue(number: int, title: str, body: str, label: str = "orch") -> dict[str, Any]:
    return {
        "action": "labeled",
        "issue": {
            "number": number,
            "title": title,
            "body": body,
            "state": "open",
            "labels": [{"name": label}],
        },
        "label": {"name": label},
        "repository": {"full_name": "acme/shop"},
        "sender": {"login": "alice"},
    }


def dumps(value: Any) -> bytes:
    # ensure_ascii: a lone surrogate goes out as the JSON escape \ud800, as an attacker
    # (or a buggy sender) would send it; the bytes themselves are valid UTF-8.
    return json.dumps(value, ensure_ascii=True).encode()


def read_until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection."""
    sock.settimeout(ANSWER_WAIT_S)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return received


# --- the named cases ------------------------------------------------------------------
def test_a_signed_github_issue_with_a_lone_surrogate_is_refused_in_one_line(
    hostile: Hostile,
) -> None:
    since = len(hostile.log())
    before = hostile.counts()
    body = dumps(github_issue(7, "Fix the cart", "broken \ud800 here"))
    answer = hostile.request(
        "POST", "/webhooks/github", content=body, headers=signed("github", body, "issues", "s1")
    )
    assert answer.status_code == 400, answer.text
    assert answer.json() == {
        "error": "issue.body contains a lone UTF-16 surrogate; send valid Unicode"
    }
    assert hostile.counts() == before
    hostile.assert_no_traceback(since)


def test_create_task_with_a_300_character_path_component_is_a_422(hostile: Hostile) -> None:
    since = len(hostile.log())
    before = hostile.counts()
    answer = hostile.post_json("/tasks", {"repo": f"/tmp/{'x' * 300}", "title": "Long"})
    assert answer.status_code == 422, answer.text
    assert "component of 300 bytes" in answer.json()["error"]
    assert hostile.counts() == before
    hostile.assert_no_traceback(since)


def test_create_task_with_a_lone_surrogate_in_the_description_is_a_422(
    hostile: Hostile,
) -> None:
    since = len(hostile.log())
    before = hostile.counts()
    answer = hostile.request(
        "POST",
        "/tasks",
        content=dumps({"repo": str(hostile.repo), "title": "T", "description": "a\udc80b"}),
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"].startswith("body.description: Value error, contains a lone")
    assert hostile.counts() == before
    hostile.assert_no_traceback(since)


def test_a_non_ascii_bearer_token_is_a_401(hostile: Hostile) -> None:
    since = len(hostile.log())
    answer = hostile.request(
        "POST",
        "/transition-lease/release?work_item=SHOP-1",
        content=b"{}",
        headers={"Authorization": "Bearer café".encode()},
    )
    assert answer.status_code == 401, answer.text
    hostile.assert_no_traceback(since)


def test_a_telegram_username_with_a_lone_surrogate_is_refused(hostile: Hostile) -> None:
    since = len(hostile.log())
    created = hostile.post_json("/tasks", {"repo": str(hostile.repo), "title": "Tg target"})
    assert created.status_code == 201, created.text
    task = created.json()
    before = hostile.counts()
    update = {
        "update_id": 9001,
        "callback_query": {
            "id": "q1",
            "from": {"id": 42, "is_bot": False, "first_name": "M", "username": "m\ud800"},
            "message": {"message_id": 5, "chat": {"id": int(CHAT), "type": "supergroup"}},
            "data": f"cancel:{task['id']}",
        },
    }
    body = dumps(update)
    answer = hostile.request(
        "POST", "/webhooks/telegram", content=body, headers=signed("telegram", body, "", "")
    )
    assert answer.status_code == 400, answer.text
    assert "lone UTF-16 surrogate" in answer.json()["error"]
    assert hostile.counts() == before
    assert hostile.request("GET", f"/tasks/{task['id']}").json()["stage"] != "cancelled"
    hostile.assert_no_traceback(since)


def test_clients_hanging_up_mid_body_leave_one_log_line_each(hostile: Hostile) -> None:
    since = len(hostile.log())
    before = hostile.counts()
    hung_up = hostile.log().count("hung up during POST /webhooks/github")
    for _ in range(30):
        sock = hostile.raw(
            b"POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
            b'{"action": "open',
        )
        sock.close()
    wait_for(
        lambda: hostile.log().count("hung up during POST /webhooks/github") >= hung_up + 30,
        "one line per client that hung up",
        hostile.serve.log,
    )
    hostile.assert_no_traceback(since)
    assert hostile.counts() == before


@pytest.mark.parametrize("path", ["/tasks", "/webhooks/github"])
def test_a_declared_body_over_the_cap_is_refused_before_it_is_read(
    hostile: Hostile, path: str
) -> None:
    since = len(hostile.log())
    before = hostile.counts()
    sock = hostile.raw(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode()
        + "".join(f"{k}: {v}\r\n" for k, v in hostile.headers.items()).encode()
        + b"Content-Length: 10000000\r\n\r\n"
    )
    answer = read_until_closed(sock)  # not one byte of the 10 MB was sent
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert b"the body is over 65536 bytes" in answer
    assert hostile.counts() == before
    hostile.assert_no_traceback(since)


@pytest.mark.parametrize("path", ["/tasks", "/webhooks/plane"])
def test_a_chunked_body_over_the_cap_is_refused_while_it_arrives(
    hostile: Hostile, path: str
) -> None:
    since = len(hostile.log())
    before = hostile.counts()

    def chunks() -> Iterator[bytes]:
        yield b'{"title": "'
        for _ in range(200):  # 200 x 1 KiB: over the 64 KiB cap
            yield b"x" * 1024
        yield b'"}'

    answer = httpx.post(
        f"{hostile.serve.url}{path}",
        content=chunks(),
        headers={"Content-Type": "application/json", **hostile.headers},
        timeout=60,
    )
    assert answer.status_code == 413, answer.text
    assert "over 65536 bytes" in answer.json()["error"]
    assert hostile.counts() == before
    hostile.assert_no_traceback(since)


def test_titles_with_format_characters_are_accepted(hostile: Hostile) -> None:
    since = len(hostile.log())
    for title in ("👩‍💻 Fix the cart", "תיקון\u200f באג בעגלה", "إصلاح\u200f السلة"):
        answer = hostile.post_json("/tasks", {"repo": str(hostile.repo), "title": title})
        assert answer.status_code == 201, answer.text
        assert answer.json()["title"] == title
    hostile.assert_no_traceback(since)


def test_a_refused_delivery_is_not_remembered_so_a_corrected_one_is_processed(
    hostile: Hostile,
) -> None:
    since = len(hostile.log())
    before_tasks, before_deliveries, intents = hostile.counts()
    bad = dumps(github_issue(11, "Cart \x07 beep", "The title holds a control character."))
    refused = hostile.request(
        "POST", "/webhooks/github", content=bad, headers=signed("github", bad, "issues", "d-11")
    )
    assert refused.status_code == 422, refused.text
    assert "control characters" in refused.json()["error"]
    assert hostile.counts() == (before_tasks, before_deliveries, intents)
    # The same delivery again, corrected (a ZWJ emoji title), is processed, not "duplicate".
    good = dumps(github_issue(11, "👩‍💻 Cart beep", "Fixed title."))
    created = hostile.request(
        "POST", "/webhooks/github", content=good, headers=signed("github", good, "issues", "d-11")
    )
    assert created.status_code == 200, created.text
    assert created.json()["status"] == "created"
    assert hostile.counts() == (before_tasks + 1, before_deliveries + 1, intents)
    hostile.assert_no_traceback(since)


@pytest.mark.parametrize(
    "event",
    [
        "dependabot_alert",
        "code_scanning_alert",
        "secret_scanning_alert",
        "deploy_key",
        "repository_ruleset",
        "sub_issues",
    ],
)
def test_githubs_newer_events_are_answered_ignored(hostile: Hostile, event: str) -> None:
    since = len(hostile.log())
    body = dumps({"action": "created", "repository": {"full_name": "acme/shop"}})
    answer = hostile.request(
        "POST",
        "/webhooks/github",
        content=body,
        headers=signed("github", body, event, f"ev-{event}"),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "ignored"
    hostile.assert_no_traceback(since)


def test_sigterm_ends_serve_while_a_client_stalls_mid_request(tmp_path: Path) -> None:
    server = start(tmp_path, "http_graceful_shutdown_s = 1\n")
    process = server.serve.process
    assert process is not None
    try:
        stalled = server.raw(
            b"POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
            b'{"half": ',
        )
        # Another connection's answer: by then the server has read the stalled request's
        # head (one event loop, data handled in order) and its route waits for the body.
        assert server.request("GET", "/health").status_code == 200
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"orch serve still runs after SIGTERM:\n{server.log()[-3000:]}")
        # The process is gone although this client never finished nor closed its request.
        assert process.returncode == 0, server.log()[-3000:]
        # Cut off, not served: a 503 (or nothing) and the connection closed.
        leftover = read_until_closed(stalled)
        assert not leftover.startswith(b"HTTP/1.1 2"), leftover
        server.assert_no_traceback()
    finally:
        server.serve.stop()


# --- hypothesis over every route ------------------------------------------------------
HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "\ud800",
            "a\udfffb",
            "\x00",
            "nul\x00inside",
            "x" * 300,
            "/tmp/" + "y" * 300,
            "/" + "/".join(["z" * 200] * 30),
            "~nobody-such-user/repo",
            "👩‍💻",
            "\u202eevil\u202c",
            "\u200fשלום",  # noqa: RUF001 - Hebrew on purpose
            "café",
            "../../etc/passwd",
            "SHOP-1",
            "TASK-1",
            "",
            " ",
            "\n",
        ]
    ),
)
# Text each layer behind the edge has choked on.
POISON = st.sampled_from(["\ud800", "a\udfffb", "nul\x00inside", "/tmp/" + "y" * 300])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), HOSTILE_TEXT
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(HOSTILE_TEXT, inner, max_size=3)
    ),
    max_leaves=10,
)
PAYLOAD_KEYS = (
    "action",
    "issue",
    "title",
    "body",
    "number",
    "labels",
    "label",
    "name",
    "repository",
    "full_name",
    "pull_request",
    "head",
    "ref",
    "merged",
    "review",
    "state",
    "event",
    "data",
    "id",
    "project",
    "sequence_id",
    "update_id",
    "callback_query",
    "message",
    "chat",
    "from",
    "username",
    "sender",
    "login",
)
SHAPED = st.recursive(
    st.dictionaries(st.sampled_from(PAYLOAD_KEYS), SCALARS, max_size=5),
    lambda inner: st.dictionaries(
        st.sampled_from(PAYLOAD_KEYS), st.one_of(SCALARS, inner, st.lists(inner, max_size=2))
    ),
    max_leaves=16,
)
EVENTS = st.one_of(
    st.sampled_from(sorted(GITHUB_EVENTS | GITEA_EVENTS | PLANE_EVENTS)),
    # Without edge whitespace: httpx itself refuses to send such a header value.
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20).filter(
        lambda text: text == text.strip()
    ),
)


def url_part(text: str) -> str:
    # Lone surrogates as the bytes a sender would put on the wire (surrogatepass).
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def routes(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path, methods in openapi["paths"].items():
        for method, operation in methods.items():
            found.append((method.upper(), path, operation))
    return sorted(found, key=lambda route: (route[1], route[0]))


def body_schema(openapi: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any] | None:
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    if schema is None:
        return None
    for option in [schema, *schema.get("anyOf", [])]:
        ref = option.get("$ref")
        if ref:
            return dict(openapi["components"]["schemas"][ref.rsplit("/", 1)[-1]])
    return dict(schema)


@st.composite
def hostile_requests(
    draw: st.DrawFn, openapi: dict[str, Any], repo: Path
) -> tuple[str, str, bytes, dict[str, str]]:
    method, path, operation = draw(st.sampled_from(routes(openapi)))
    url = path
    query = []
    for parameter in operation.get("parameters", []):
        known = str(repo) if parameter["name"] == "repo" else "TASK-1"
        value = known if draw(st.integers(0, 2)) else draw(HOSTILE_TEXT)
        if parameter["in"] == "path":
            url = url.replace("{" + parameter["name"] + "}", url_part(value))
        elif parameter["in"] == "query" and draw(st.booleans()):
            query.append(f"{parameter['name']}={url_part(value)}")
    if query:
        url += "?" + "&".join(query)
    headers: dict[str, str] = {}
    if path.startswith("/webhooks/"):
        source = path.rsplit("/", 1)[-1]
        payload = draw(st.one_of(SHAPED, JSON_VALUES))
        body = draw(st.one_of(st.just(dumps(payload)), st.binary(max_size=100)))
        delivery = draw(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126)))
        if draw(st.integers(0, 9)) < 8:
            headers = signed(source, body, draw(EVENTS), delivery)
    else:
        schema = body_schema(openapi, operation)
        if schema is None:
            body = draw(st.sampled_from([b"", b"{}"]))
        else:
            # Mostly valid fields with one or two poisoned: the poison must get past the
            # fields checked first (repo, title) to reach the layers behind them.
            valid = {"repo": str(repo), "title": "Fix the cart", "work_item": None}
            fields = {}
            for name in schema.get("properties", {}):
                pick = draw(st.integers(0, 7))
                if pick <= 3:
                    fields[name] = valid.get(name, "Looks fine")
                elif pick <= 6:
                    fields[name] = draw(POISON)
                else:
                    fields[name] = draw(JSON_VALUES)
            body = dumps(fields) if draw(st.integers(0, 9)) else draw(st.binary(max_size=50))
    if draw(st.integers(0, 19)) == 0:
        headers["Content-Type"] = draw(st.sampled_from(["text/plain", "application/x-www"]))
    return method, url, body, headers


def test_the_hypothesis_run_covers_every_route(hostile: Hostile) -> None:
    openapi = hostile.request("GET", "/openapi.json").json()
    paths = {path for _, path, _ in routes(openapi)}
    assert {"/tasks", "/tasks/{ref}/approve", "/webhooks/github", "/webhooks/telegram"} <= paths


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_no_500_no_traceback_and_nothing_created_by_a_refusal(
    hostile: Hostile, data: st.DataObject
) -> None:
    openapi = hostile.request("GET", "/openapi.json").json()
    method, url, body, headers = data.draw(hostile_requests(openapi, hostile.repo))
    before = hostile.counts()
    since = len(hostile.log())
    answer = hostile.request(method, url, content=body, headers=headers)
    assert answer.status_code < 500, (method, url, body[:200], answer.text)
    if answer.status_code >= 400:
        assert "error" in answer.json(), answer.text  # one JSON line saying what is wrong
        assert hostile.counts() == before, (method, url, answer.text)
    hostile.assert_no_traceback(since)
