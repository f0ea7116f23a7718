"""The scripted model's replies, decided from a request body alone. Pure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import UsageError
from orchestrator.testing import DEFAULT_SCRIPT, load_script, parse_script
from orchestrator.testing.model_script import conversation_facts, plan_reply

SYSTEM = "You are an agent.\n - Primary working directory: /srv/wt/DEMO-7\n - Platform: linux"
PROMPT = "Stage: analysis. Write `docs/work-items/DEMO-7/01-brd.md`."
SCRIPT = parse_script(
    {
        "sessions": [
            {
                "name": "analysis",
                "match": "Stage: analysis",
                "turns": [
                    {
                        "text": "Writing it.",
                        "tool": "Write",
                        "input": {
                            "file_path": "{artifact_dir}/01-brd.md",
                            "content": "# {work_item}",
                        },
                        "usage": {"input_tokens": 1000, "output_tokens": 50},
                    },
                    {"tool": "Bash", "input": {"command": "ls {cwd}"}},
                    {"text": "Done with {work_item}."},
                ],
            },
            {"match": "Stage: broken", "turns": [{"error": {"status": 400, "message": "no"}}]},
        ]
    },
    "test",
)


def request(assistant_turns: int = 0, prompt: str = PROMPT) -> dict[str, Any]:
    first = [{"type": "text", "text": "<system-reminder>x"}, {"type": "text", "text": prompt}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": first}]
    for _ in range(assistant_turns):
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "..."}]})
        messages.append({"role": "user", "content": [{"type": "tool_result", "content": "ok"}]})
    return {
        "model": "claude-sonnet-4-5",
        "system": [{"type": "text", "text": SYSTEM}],
        "messages": messages,
    }


def test_facts_come_from_the_system_prompt_and_the_first_message() -> None:
    assert conversation_facts(request()) == {
        "cwd": "/srv/wt/DEMO-7",
        "work_item": "DEMO-7",
        "artifact_dir": "docs/work-items/DEMO-7",
    }


def test_the_first_turn_is_text_then_a_tool_call_with_placeholders_and_absolute_path() -> None:
    reply = plan_reply(SCRIPT, request(), reply_id=7)
    assert (reply.session, reply.turn, reply.stop_reason) == ("analysis", 0, "tool_use")
    assert reply.content == [
        {"type": "text", "text": "Writing it."},
        {
            "type": "tool_use",
            "id": "toolu_000007",
            "name": "Write",
            "input": {
                "file_path": "/srv/wt/DEMO-7/docs/work-items/DEMO-7/01-brd.md",
                "content": "# DEMO-7",
            },
        },
    ]
    assert (reply.input_tokens, reply.output_tokens) == (1000, 50)
    assert reply.summary == "tool_use Write"


def test_the_turn_is_the_number_of_assistant_messages_so_far() -> None:
    second = plan_reply(SCRIPT, request(1))
    assert second.content[0]["input"] == {"command": "ls /srv/wt/DEMO-7"}
    third = plan_reply(SCRIPT, request(2))
    assert (third.content, third.stop_reason) == (
        [{"type": "text", "text": "Done with DEMO-7."}],
        "end_turn",
    )
    # Usage without a script value is estimated from what was read and written.
    assert third.input_tokens > 10
    assert third.output_tokens >= 1
    after = plan_reply(SCRIPT, request(5))
    assert after.content == [{"type": "text", "text": "Done."}]


def test_a_scripted_error_and_an_unmatched_conversation_are_api_errors() -> None:
    broken = plan_reply(SCRIPT, request(prompt="Stage: broken."))
    assert broken.error is not None
    assert (broken.error.status, broken.error.message) == (400, "no")
    unmatched = plan_reply(SCRIPT, request(prompt="Something else entirely"))
    assert unmatched.error is not None
    assert unmatched.error.type == "invalid_request_error"
    assert "no scripted session matches" in unmatched.error.message
    assert "'Stage: analysis'" in unmatched.error.message


def test_the_default_script_covers_the_three_agent_stages_of_the_builtin_prompts() -> None:
    names = [session.name for session in DEFAULT_SCRIPT.sessions]
    assert names == ["analysis", "architecture", "development"]
    first = plan_reply(DEFAULT_SCRIPT, request())
    assert first.content[0]["input"]["file_path"].endswith("docs/work-items/DEMO-7/01-brd.md")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "sessions: Field required"),
        ({"sessions": [{"turns": []}]}, "sessions.0.turns: List should have at least 1 item"),
        ({"sessions": [{"turns": [{}]}]}, "a turn needs text, a tool or an error"),
        ({"sessions": [{"turns": [{"text": "x", "error": {}}]}]}, "has no text, tool or drops"),
        ({"sessions": [{"turns": [{"error": {}, "drops": 1}]}]}, "has no text, tool or drops"),
        ({"sessions": [{"turns": [{"text": "x", "drops": -1}]}]}, "greater than or equal to 0"),
        (
            {
                "sessions": [
                    {
                        "turns": [
                            {
                                "text": "x",
                                "usage": {
                                    "input_tokens": 1,
                                    "output_tokens": 1,
                                    "cached_input_tokens": 2,
                                },
                            }
                        ]
                    }
                ]
            },
            "cached_input_tokens are part of input_tokens",
        ),
        ({"sessions": [{"turns": [{"input": {"a": 1}}]}]}, "a turn with input needs a tool"),
        ({"sessions": [{"turns": [{"text": "x", "colour": 1}]}]}, "Extra inputs"),
    ],
)
def test_a_bad_script_is_one_usage_error(data: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=r"^script\.json: ") as caught:
        parse_script(data, "script.json")
    assert message in str(caught.value)


def test_scripts_load_from_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "script.toml"
    toml.write_text('[[sessions]]\nmatch = "Stage: analysis"\n[[sessions.turns]]\ntext = "hello"\n')
    assert load_script(toml).sessions[0].turns[0].text == "hello"
    as_json = tmp_path / "script.json"
    as_json.write_text(json.dumps({"sessions": [{"turns": [{"text": "hi"}]}]}))
    assert load_script(as_json).sessions[0].match == ""
    broken = tmp_path / "broken.toml"
    broken.write_text("[[sessions]\n")
    with pytest.raises(UsageError, match=r"broken\.toml: not a valid script"):
        load_script(broken)
