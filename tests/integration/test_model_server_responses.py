"""The scripted model server's OpenAI Responses API (for Codex) over real HTTP.

Request bodies here are shaped like the Codex CLI's (0.171.0): developer messages, the
environment context and the prompt as two user messages, then the model's
``function_call`` items and ``function_call_output`` items on later requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orchestrator.testing import ModelServer, parse_script

SCRIPT = parse_script(
    {
        "sessions": [
            {
                "name": "development",
                "match": "Stage: development",
                "turns": [
                    {
                        "text": "Writing it in {cwd}.",
                        "tool": "exec_command",
                        "input": {"cmd": "printf '%s' " + "x" * 450 + " > {artifact_dir}/a.txt"},
                        "usage": {
                            "input_tokens": 1200,
                            "cached_input_tokens": 900,
                            "output_tokens": 300,
                        },
                    },
                    {"text": "Done.", "drops": 1},
                ],
            },
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


def codex_body(
    prompt: str = "Stage: development. Work item docs/work-items/SVC-1.",
    *,
    answered: int = 0,
    stream: bool = True,
) -> dict[str, Any]:
    items: list[dict[str, Any]] = [
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": "You are a coding agent."}],
        },
        {
            "type": "message",
            "role": "user",
            "content": [
                {
                    "type": "input_text",
                    "text": "<environment_context>\n  <cwd>/srv/wt/SVC-1</cwd>\n"
                    "</environment_context>",
                }
            ],
        },
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]},
    ]
    for n in range(answered):
        items += [
            {"type": "reasoning", "summary": []},
            {
                "type": "function_call",
                "call_id": f"call_{n}",
                "name": "exec_command",
                "arguments": "{}",
            },
            {"type": "function_call_output", "call_id": f"call_{n}", "output": "ok"},
        ]
    return {"model": "gpt-5.4", "stream": stream, "input": items, "store": False}


def sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        events.append(data)
    return events


def test_a_streamed_reply_is_the_responses_api_event_sequence(server: ModelServer) -> None:
    response = httpx.post(f"{server.url}/v1/responses", json=codex_body())
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    events = sse(response.text)
    names = [event["type"] for event in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] == "response.completed"
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress"
    # A message (text with {cwd} from Codex's <cwd>), then the function call whose
    # arguments come in pieces.
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "Writing it in /srv/wt/SVC-1."
    arguments = "".join(
        e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
    )
    assert names.count("response.function_call_arguments.delta") > 1
    assert json.loads(arguments) == {
        "cmd": "printf '%s' " + "x" * 450 + " > docs/work-items/SVC-1/a.txt"
    }
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [item["type"] for item in done] == ["message", "function_call"]
    assert done[1]["name"] == "exec_command"
    assert done[1]["call_id"].startswith("call_")
    completed = events[-1]["response"]
    assert completed["status"] == "completed"
    assert completed["output"] == done
    assert completed["usage"]["input_tokens"] == 1200
    assert completed["usage"]["input_tokens_details"] == {"cached_tokens": 900}
    assert completed["usage"]["output_tokens"] == 300
    assert server.exchanges[-1].summary == "tool_use exec_command"
    assert (server.exchanges[-1].session, server.exchanges[-1].turn) == ("development", 0)


def test_the_turn_is_the_number_of_model_turns_in_the_input(server: ModelServer) -> None:
    # Its first answer was a reasoning item and a function call: one turn.
    # Turn 2 drops its first answer, also without streaming: a body cut short.
    with pytest.raises(httpx.RemoteProtocolError, match="without sending complete message"):
        httpx.post(f"{server.url}/v1/responses", json=codex_body(answered=1, stream=False))
    again = httpx.post(f"{server.url}/v1/responses", json=codex_body(answered=1, stream=False))
    reply = again.json()
    assert reply["object"] == "response"
    assert reply["output"][0]["content"][0]["text"] == "Done."
    past_the_end = httpx.post(f"{server.url}/v1/responses", json=codex_body(answered=5))
    assert sse(past_the_end.text)[-1]["response"]["output"][0]["content"][0]["text"] == "Done."


def test_a_dropped_turn_is_cut_mid_stream_once_per_conversation(server: ModelServer) -> None:
    def ask(prompt: str) -> list[dict[str, Any]]:
        with httpx.stream(
            "POST", f"{server.url}/v1/responses", json=codex_body(prompt, answered=1)
        ) as response:
            received = b""
            try:
                for chunk in response.iter_bytes():
                    received += chunk
            except httpx.RemoteProtocolError:
                pass  # the connection went before the announced length
        return sse(received.decode())

    first = "Stage: development. Work item docs/work-items/SVC-1."
    cut = ask(first)
    assert cut[0]["type"] == "response.created"
    assert "response.completed" not in [event["type"] for event in cut]
    assert ask(first)[-1]["type"] == "response.completed"
    # Another conversation (another task) gets its own drop.
    other = "Stage: development. Work item docs/work-items/SVC-2."
    assert "response.completed" not in [event["type"] for event in ask(other)]
    assert ask(other)[-1]["type"] == "response.completed"
    summaries = [e.summary for e in server.exchanges]
    assert summaries == ["text (dropped)", "text", "text (dropped)", "text"]


def test_errors_have_the_responses_api_shape(server: ModelServer) -> None:
    overloaded = httpx.post(f"{server.url}/v1/responses", json=codex_body("Stage: overloaded"))
    assert overloaded.status_code == 529
    assert overloaded.json() == {
        "error": {
            "message": "busy",
            "type": "overloaded_error",
            "param": None,
            "code": "overloaded_error",
        }
    }
    unmatched = httpx.post(f"{server.url}/v1/responses", json=codex_body("hello"))
    assert unmatched.status_code == 400
    assert "no scripted session matches" in unmatched.json()["error"]["message"]
    for bad in (b"{not json", b'{"model": "gpt-5.4"}', b'{"input": 3}'):
        response = httpx.post(f"{server.url}/v1/responses", content=bad)
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_plain_string_input_is_one_user_message(server: ModelServer) -> None:
    body = {"model": "m", "input": "Stage: development. docs/work-items/X-1", "stream": False}
    reply = httpx.post(f"{server.url}/v1/responses", json=body).json()
    assert [item["type"] for item in reply["output"]] == ["message", "function_call"]


def test_the_messages_api_reports_cached_tokens_as_cache_reads_and_can_drop(
    server: ModelServer,
) -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Stage: development. docs/work-items/X-1"}],
    }
    message = httpx.post(f"{server.url}/v1/messages", json=body).json()
    assert message["usage"]["input_tokens"] == 300
    assert message["usage"]["cache_read_input_tokens"] == 900
    body["messages"] += [
        {"role": "assistant", "content": [{"type": "text", "text": "..."}]},
        {"role": "user", "content": [{"type": "tool_result", "content": "ok"}]},
    ]
    with pytest.raises(httpx.RemoteProtocolError, match="without sending complete message"):
        httpx.post(f"{server.url}/v1/messages", json=body)
    assert httpx.post(f"{server.url}/v1/messages", json=body).json()["content"] == [
        {"type": "text", "text": "Done."}
    ]
