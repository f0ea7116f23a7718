"""The scripted model server over real HTTP: SSE and JSON replies, the API's error shape."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orchestrator.testing import ModelServer, Script, parse_script

SCRIPT = parse_script(
    {
        "sessions": [
            {
                "name": "analysis",
                "match": "Stage: analysis",
                "turns": [
                    {
                        "text": "I will write it.",
                        "tool": "Write",
                        "input": {"file_path": "/tmp/x/01-brd.md", "content": "é" * 450},
                        "usage": {"input_tokens": 1200, "output_tokens": 300},
                    },
                    {"text": "Done."},
                ],
            },
            {"name": "slow", "match": "Stage: slow", "turns": [{"text": "late", "delay_s": 3600}]},
            {
                "match": "Stage: overloaded",
                "turns": [
                    {"error": {"status": 529, "type": "overloaded_error", "message": "busy"}}
                ],
            },
        ]
    },
    "test",
)


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer(SCRIPT) as running:
        yield running


def body(prompt: str = "Stage: analysis.", *, stream: bool, assistant_turns: int = 0) -> Any:
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    for _ in range(assistant_turns):
        messages += [
            {"role": "assistant", "content": [{"type": "text", "text": "..."}]},
            {"role": "user", "content": [{"type": "tool_result", "content": "ok"}]},
        ]
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1000,
        "messages": messages,
        "stream": stream,
    }


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_a_streamed_reply_is_the_messages_api_event_sequence(server: ModelServer) -> None:
    response = httpx.post(f"{server.url}/v1/messages?beta=true", json=body(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["request-id"].startswith("req_")
    events = sse(response.text)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    start = events[0][1]["message"]
    assert (start["model"], start["role"], start["content"]) == (
        "claude-sonnet-4-5",
        "assistant",
        [],
    )
    assert start["usage"]["input_tokens"] == 1200
    # Blocks: text, then the tool call whose input arrives as JSON in pieces.
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, str] = {}
    for name, data in events:
        if name == "content_block_start":
            blocks[data["index"]] = dict(data["content_block"])
        elif name == "content_block_delta":
            delta = data["delta"]
            if delta["type"] == "text_delta":
                blocks[data["index"]]["text"] += delta["text"]
            else:
                assert delta["type"] == "input_json_delta"
                partial[data["index"]] = partial.get(data["index"], "") + delta["partial_json"]
    assert blocks[0] == {"type": "text", "text": "I will write it."}
    assert blocks[1]["name"] == "Write"
    assert json.loads(partial[1]) == {"file_path": "/tmp/x/01-brd.md", "content": "é" * 450}
    assert names.count("content_block_delta") > 2  # the long input came in several pieces
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "tool_use"
    assert final["usage"]["output_tokens"] == 300
    assert server.exchanges[-1].summary == "tool_use Write"


def test_without_stream_the_reply_is_one_message(server: ModelServer) -> None:
    response = httpx.post(f"{server.url}/v1/messages", json=body(stream=False, assistant_turns=1))
    assert response.status_code == 200
    message = response.json()
    assert message["type"] == "message"
    assert message["content"] == [{"type": "text", "text": "Done."}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"]["output_tokens"] >= 1


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("POST", "/v1/complete"), ("GET", "/v1/messages"), ("DELETE", "/")],
)
def test_unknown_routes_get_the_apis_404_shape(server: ModelServer, method: str, path: str) -> None:
    response = httpx.request(method, f"{server.url}{path}")
    assert response.status_code == 404
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "not_found_error"
    assert path in error["error"]["message"]


def test_scripted_errors_bad_bodies_and_count_tokens(server: ModelServer) -> None:
    overloaded = httpx.post(
        f"{server.url}/v1/messages", json=body("Stage: overloaded", stream=True)
    )
    assert overloaded.status_code == 529
    assert overloaded.json()["error"] == {"type": "overloaded_error", "message": "busy"}
    unmatched = httpx.post(f"{server.url}/v1/messages", json=body("hello", stream=True))
    assert unmatched.status_code == 400
    assert "no scripted session matches" in unmatched.json()["error"]["message"]
    garbage = httpx.post(f"{server.url}/v1/messages", content=b"{not json")
    assert garbage.status_code == 400
    assert garbage.json()["error"]["type"] == "invalid_request_error"
    counted = httpx.post(f"{server.url}/v1/messages/count_tokens", json=body(stream=False))
    assert counted.status_code == 200
    assert counted.json()["input_tokens"] > 0


class WatchedModelServer(ModelServer):
    """A model server that tells when a reply starts waiting out its delay."""

    def __init__(self, script: Script) -> None:
        super().__init__(script)
        self.waiting = threading.Event()

    def wait(self, seconds: float) -> None:
        self.waiting.set()
        super().wait(seconds)


def test_a_slow_reply_does_not_hold_up_stopping_the_server() -> None:
    server = WatchedModelServer(SCRIPT).start()
    answers: list[object] = []

    def ask() -> None:
        try:
            # Longer than the join below: a reply left waiting shows as a live thread.
            reply = httpx.post(
                f"{server.url}/v1/messages", json=body("Stage: slow", stream=True), timeout=60
            )
            answers.append(reply.status_code)
        except httpx.HTTPError as exc:
            answers.append(exc)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    assert server.waiting.wait(timeout=10), "the slow request never reached its delay"
    server.stop()

    # Stopping woke the reply from its hour-long delay: it was answered, then the
    # server stopped listening.
    asking.join(timeout=10)
    assert not asking.is_alive(), "the slow reply still waits after the server stopped"
    assert answers == [200]
    # The handler records the exchange after the reply went out: give it a moment.
    deadline = time.monotonic() + 10
    while not [e for e in server.exchanges if e.session == "slow"]:
        assert time.monotonic() < deadline, "the slow exchange was never recorded"
        time.sleep(0.01)
    [late] = [exchange for exchange in server.exchanges if exchange.session == "slow"]
    assert late.status == 200
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{server.url}/v1/messages", json=body("Stage: analysis.", stream=True))


def test_orch_dev_model_server_serves_until_stopped() -> None:
    command = [sys.executable, "-m", "orchestrator", "dev", "model-server", "--port", "0"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as process:
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            assert first.startswith("model server on http://127.0.0.1:")
            url = first.split()[3].rstrip(",")
            assert "ANTHROPIC_BASE_URL=" in process.stdout.readline()
            assert "model_providers.orch-model-server" in process.stdout.readline()
            reply = httpx.post(f"{url}/v1/messages", json=body("Stage: development.", stream=False))
            assert reply.json()["content"][0]["name"] == "Write"
            assert "development turn 1: tool_use Write" in process.stdout.readline()
        finally:
            process.terminate()
            process.wait(timeout=10)


def test_a_missing_script_is_one_line_and_exit_code_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "dev", "model-server", "--script", "/nope.toml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: /nope.toml: cannot read the script: No such file or directory"
    ]
