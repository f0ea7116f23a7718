"""Codex's JSONL events: when a run failed, what it used, what it cost. Pure, no process.

The two ``data/codex-*.jsonl`` files are real ``codex exec --json`` output (Codex CLI
0.171.0 against the scripted Responses API server): a stream dropped once and resumed
(exit 0), and a stream dropped past ``stream_max_retries`` (exit 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.agents import AgentSpec, FinishedRun, adapter_for
from orchestrator.agents.codex import read_events
from orchestrator.agents.usage import priced_usd
from orchestrator.settings import AgentConfig

DATA = Path(__file__).parent / "data"
RECONNECTED = (DATA / "codex-reconnect-then-completed.jsonl").read_text()
STREAM_FAILED = (DATA / "codex-stream-failed.jsonl").read_text()
RECONNECT = {
    "type": "error",
    "message": "Reconnecting... 1/5 (stream disconnected before completion: error decoding)",
}
COMPLETED = {
    "type": "turn.completed",
    "usage": {"input_tokens": 1000, "cached_input_tokens": 800, "output_tokens": 100},
}


def codex(**config: Any) -> AgentSpec:
    return AgentSpec("codex", "codex", AgentConfig(adapter="codex", **config))


def jsonl(*events: dict[str, Any]) -> str:
    return "\n".join(json.dumps(event) for event in events) + "\n"


def outcome(output: str, exit_code: int | None = 0, **config: Any) -> Any:
    agent = codex(**config)
    return adapter_for(agent).outcome(agent, FinishedRun(output, exit_code, None))


def test_a_reconnect_notice_then_turn_completed_is_a_success() -> None:
    result = outcome(RECONNECTED)
    assert result.error is None
    assert result.session_id == "01a23683-dc83-7852-82b9-e699597fafd7"
    assert result.usage is not None
    assert not result.usage.is_error
    assert (result.usage.input_tokens, result.usage.output_tokens) == (200, 20)
    assert result.usage.num_turns == 1


def test_a_turn_failed_fails_the_run_with_its_message() -> None:
    result = outcome(STREAM_FAILED, exit_code=1)
    assert result.error == (
        "codex failed: stream disconnected before completion: Transport error: network "
        "error: error decoding response body"
    )
    assert result.usage is None  # no turn completed


def test_an_error_with_no_later_turn_completed_fails_even_with_exit_zero() -> None:
    output = jsonl(
        {"type": "thread.started", "thread_id": "t"}, {"type": "turn.started"}, RECONNECT
    )
    result = outcome(output)
    assert result.error == f"codex failed: {RECONNECT['message']}"


def test_an_error_after_the_last_turn_completed_fails_the_run() -> None:
    output = jsonl(COMPLETED, {"type": "error", "message": "quota exceeded"})
    result = outcome(output)
    assert result.error == "codex failed: quota exceeded"
    assert result.usage is not None
    assert result.usage.is_error


def test_a_turn_failed_wins_over_a_later_turn_completed() -> None:
    output = jsonl({"type": "turn.failed", "error": {"message": "model refused"}}, COMPLETED)
    assert outcome(output).error == "codex failed: model refused"


def test_an_error_item_is_not_a_failure() -> None:
    # item.completed with item.type "error" is a warning in the transcript (model metadata).
    assert outcome(RECONNECTED).error is None
    events = read_events(RECONNECTED)
    assert (events.turn_failures, events.errors) == ((), ())


def test_cached_input_tokens_have_their_own_price() -> None:
    prices = {"usd_per_mtok_input": 1.25, "usd_per_mtok_output": 10.0}
    cached = outcome(jsonl(COMPLETED), usd_per_mtok_cached_input=0.125, **prices)
    # 200 fresh input tokens at $1.25, 800 cached at $0.125, 100 output at $10 per million.
    assert cached.usage.cost_usd == pytest.approx((200 * 1.25 + 800 * 0.125 + 100 * 10) / 1e6)
    unset = outcome(jsonl(COMPLETED), **prices)
    # Without a cached price they cost what input costs: never under-counted.
    assert unset.usage.cost_usd == pytest.approx((1000 * 1.25 + 100 * 10) / 1e6)
    free = outcome(jsonl(COMPLETED), usd_per_mtok_cached_input=0, **prices)
    assert free.usage.cost_usd == pytest.approx((200 * 1.25 + 100 * 10) / 1e6)


def test_cached_tokens_beyond_the_input_are_not_priced_twice() -> None:
    event = {"type": "turn.completed", "usage": {"input_tokens": 10, "cached_input_tokens": 99}}
    assert priced_usd(10, 0, 1.0, 0.0, cached_tokens=99, usd_cached=0.0) == 0.0
    result = outcome(jsonl(event), usd_per_mtok_input=1e6, usd_per_mtok_cached_input=0)
    assert result.usage.cost_usd == 0


def test_spent_so_far_uses_the_cached_price_too() -> None:
    agent = codex(usd_per_mtok_input=1.0, usd_per_mtok_cached_input=0.5, usd_per_mtok_output=0)
    spent = adapter_for(agent).spent_usd(agent, jsonl(COMPLETED), None)
    assert spent == pytest.approx((200 * 1.0 + 800 * 0.5) / 1e6)


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_kinds = st.sampled_from(["thread.started", "turn.completed", "turn.failed", "error", "item.x"])
_events = st.fixed_dictionaries(
    {"type": _kinds | _json},
    optional={
        "usage": st.dictionaries(
            st.sampled_from(["input_tokens", "cached_input_tokens", "output_tokens"]), _json
        )
        | _json,
        "error": st.fixed_dictionaries({}, optional={"message": _json}) | _json,
        "message": _json,
        "thread_id": _json,
    },
)
_lines = st.lists(
    st.one_of(_events.map(json.dumps), st.text(max_size=60), st.just('{"a": ' + "[" * 3_000)),
    max_size=12,
)


@given(_lines, st.sampled_from([0, 1, None]))
def test_the_parser_never_raises_and_agrees_with_itself(lines: list[str], exit_code: Any) -> None:
    output = "\n".join(lines)
    events = read_events(output)
    result = outcome(output, exit_code, usd_per_mtok_input=1, usd_per_mtok_cached_input=0.1)
    assert (result.usage is None) == (events.turns == 0)
    if events.failure is not None:
        assert result.error == f"codex failed: {events.failure}"
    if result.usage is not None:
        assert result.usage.cost_usd >= 0
        assert result.usage.is_error == (events.failure is not None)
