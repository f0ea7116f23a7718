"""The Responses API view of a request and the rendering of a reply. Pure."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.testing import DEFAULT_SCRIPT
from orchestrator.testing.model_script import plan_reply
from orchestrator.testing.responses_api import messages_view, response_object, stream_events


def test_codex_items_become_one_message_per_turn() -> None:
    body = {
        "instructions": "Be brief.",
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "Rules."}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "<cwd>/w</cwd>"}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Stage: analysis."}],
            },
            {"type": "reasoning", "summary": []},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hm."}],
            },
            {"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
            {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "..."},
            {"type": "custom_tool_call_output", "call_id": "c2", "output": "done"},
        ],
    }
    view = messages_view(body)
    assert view["system"] == "Be brief.\nRules."
    roles = [message["role"] for message in view["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert view["messages"][0]["content"] == [
        {"type": "text", "text": "<cwd>/w</cwd>\nStage: analysis."}
    ]
    reply = plan_reply(DEFAULT_SCRIPT, view)
    assert (reply.session, reply.turn) == ("analysis", 2)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
_item = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning"])
        | _json,
        "role": st.sampled_from(["user", "assistant", "developer", "system"]) | _json,
        "content": _json
        | st.lists(st.fixed_dictionaries({"type": st.just("input_text"), "text": _json})),
        "output": _json,
    },
)
_body = st.fixed_dictionaries(
    {}, optional={"input": st.lists(_item | _json, max_size=6) | _json, "instructions": _json}
)


@given(_body)
def test_any_body_gives_a_view_and_a_reply_that_renders(body: dict[str, Any]) -> None:
    view = messages_view(body)
    assert all(message["role"] in ("user", "assistant") for message in view["messages"])
    reply = plan_reply(DEFAULT_SCRIPT, view, 7)
    if reply.error is None:
        events = stream_events(reply, "m", 7)
        assert json.loads(events[-1].split("data: ", 1)[1])["type"] == "response.completed"
        assert response_object(reply, "m", 7)["status"] == "completed"
