"""The agent adapters: command lines built, outputs read. Pure, no process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.agents import (
    AgentSpec,
    FinishedRun,
    RunBudgetWatch,
    RunContext,
    adapter_for,
    build_invocation,
    check_available,
    resolve_agent,
)
from orchestrator.agents.claude_code import QUIET_ENV
from orchestrator.errors import AgentError
from orchestrator.settings import AgentConfig, Settings, StageConfig

SAMPLE = Path(__file__).parent / "data" / "claude-code-stream-json.jsonl"
CONTEXT = RunContext(
    stage="analysis",
    work_item="DEMO-1",
    worktree=Path("/srv/wt/DEMO-1"),
    prompt="Stage: analysis. Write the BRD.",
    prompt_file=Path("/srv/logs/000001-analysis-prompt.md"),
    result_file=Path("/srv/logs/000001-analysis-a1.result.json"),
)


def spec(**config: Any) -> AgentSpec:
    return AgentSpec("agent", "agent", AgentConfig(**config))


def finished(output: str, exit_code: int | None = 0, result_text: str | None = None) -> Any:
    return FinishedRun(output, exit_code, result_text)


def result_line(**overrides: Any) -> str:
    result: dict[str, Any] = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "total_cost_usd": 0.25,
        "num_turns": 3,
        "session_id": "s-1",
        "usage": {"input_tokens": 100, "cache_read_input_tokens": 50, "output_tokens": 20},
        "modelUsage": {"claude-sonnet-4-5": {"costUSD": 0.25}},
        "result": "Done.",
    }
    result.update(overrides)
    return json.dumps(result)


# --- claude-code: the command line ---------------------------------------------------------
def test_claude_code_streams_json_and_reads_the_prompt_from_stdin_by_default() -> None:
    invocation = build_invocation(spec(adapter="claude-code"), CONTEXT)
    assert invocation.argv == [
        "claude",
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        "acceptEdits",
        "--allowedTools=Read,Write,Edit,Bash",
    ]
    assert invocation.stdin == CONTEXT.prompt
    assert dict(invocation.env) == {**QUIET_ENV, "ORCH_RESULT_FILE": str(CONTEXT.result_file)}
    assert invocation.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"


def test_claude_code_passes_model_effort_turns_budget_tools_and_extra_args() -> None:
    agent = spec(
        adapter="claude-code",
        command=["/opt/claude/bin/claude", "--bare"],
        model="claude-opus-4-1",
        effort="high",
        max_turns=30,
        budget_usd=2.5,
        permission_mode="plan",
        allowed_tools=["Read", "Bash(git *)"],
        args=["--append-system-prompt", "Work on {work_item}."],
    )
    argv = build_invocation(agent, CONTEXT).argv
    assert argv[:3] == ["/opt/claude/bin/claude", "--bare", "-p"]
    joined = " ".join(argv)
    for expected in (
        "--model claude-opus-4-1",
        "--effort high",
        "--max-turns 30",
        "--max-budget-usd 2.5",
        "--permission-mode plan",
        "--allowedTools=Read,Bash(git *)",
    ):
        assert expected in joined
    assert argv[-2:] == ["--append-system-prompt", "Work on DEMO-1."]


@pytest.mark.parametrize(
    ("prompt_via", "positional"),
    [
        ("arg", CONTEXT.prompt),
        ("file", f"Your instructions are in the file {CONTEXT.prompt_file}."),
    ],
)
def test_claude_code_can_take_the_prompt_as_an_argument(prompt_via: str, positional: str) -> None:
    invocation = build_invocation(spec(adapter="claude-code", prompt_via=prompt_via), CONTEXT)
    assert invocation.stdin is None
    # Right after -p: --allowedTools takes a list that would swallow a later positional.
    assert invocation.argv[2].startswith(positional)


# --- claude-code: reading the result ---------------------------------------------------------
def test_the_real_stream_json_sample_gives_cost_tokens_model_turns_and_session() -> None:
    outcome = adapter_for(spec(adapter="claude-code")).outcome(
        spec(adapter="claude-code"), finished(SAMPLE.read_text())
    )
    assert outcome.error is None
    assert outcome.subtype == "success"
    assert outcome.session_id == "6cd253cc-d0e0-4cee-857c-f8e3c4da092d"
    usage = outcome.usage
    assert usage is not None
    assert usage.cost_usd == pytest.approx(0.0012)
    assert (usage.input_tokens, usage.output_tokens) == (200, 40)
    assert usage.model == "claude-sonnet-4-5"
    assert usage.num_turns == 2
    data = outcome.event_data()
    assert data["subtype"] == "success"
    assert data["model"] == "claude-sonnet-4-5"


def test_an_error_result_fails_the_run_with_its_subtype_and_message() -> None:
    agent = spec(adapter="claude-code")
    line = result_line(
        subtype="error_max_turns",
        is_error=True,
        result=None,
        errors=["Reached maximum number of turns (1)"],
    )
    outcome = adapter_for(agent).outcome(agent, finished(f"{line}\n", exit_code=1))
    assert outcome.error == (
        "agent stopped with error_max_turns: Reached maximum number of turns (1) (exit code 1)"
    )
    assert outcome.usage is not None
    assert outcome.usage.cost_usd == 0.25  # what it spent is still recorded


def test_is_error_with_a_success_subtype_still_fails() -> None:
    agent = spec(adapter="claude-code")
    line = result_line(is_error=True, result="Something odd happened")
    outcome = adapter_for(agent).outcome(agent, finished(line))
    assert outcome.error == "agent stopped with success: Something odd happened"


# What Claude Code 2.1.332 prints when the API answers 529 after its own retries.
API_ERROR_RESULT = {
    "subtype": "success",
    "is_error": True,
    "total_cost_usd": 0,
    "num_turns": 1,
    "terminal_reason": "api_error",
    "api_error_status": 529,
    "api_error_type": "overloaded_error",
    "result": (
        "API Error: 529 Overloaded. This is a server-side issue, usually temporary \u2014 "
        "try again in a moment."
    ),
}


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        # Older CLIs: only the text says it.
        {"terminal_reason": None, "api_error_status": None},
        # Only the status: the reason gets it.
        {"result": "Overloaded"},
    ],
)
def test_an_api_error_is_reported_as_one(overrides: dict[str, Any]) -> None:
    agent = spec(adapter="claude-code")
    line = result_line(**{**API_ERROR_RESULT, **overrides})
    outcome = adapter_for(agent).outcome(agent, finished(line, exit_code=1))
    assert outcome.error is not None
    assert outcome.error.startswith("agent: API error: 529 Overloaded")
    assert outcome.error.endswith("(exit code 1)")
    assert "stopped with success" not in outcome.error


def test_garbage_instead_of_stream_json_fails_a_zero_exit_with_the_reason() -> None:
    agent = spec(adapter="claude-code")
    output = 'Hello! I am not JSON.\n{"type": "half\nstill not json\n'
    outcome = adapter_for(agent).outcome(agent, finished(output))
    assert outcome.usage is None
    assert outcome.error is not None
    assert "printed no stream-json result event" in outcome.error
    assert outcome.error.endswith("last line: still not json")


def test_a_nonzero_exit_without_a_result_is_left_to_the_exit_code() -> None:
    agent = spec(adapter="claude-code")
    outcome = adapter_for(agent).outcome(agent, finished("Error: bad flag\n", exit_code=2))
    assert outcome.error is None
    assert outcome.usage is None


def test_cache_tokens_count_as_input() -> None:
    agent = spec(adapter="claude-code")
    outcome = adapter_for(agent).outcome(agent, finished(result_line() + "\n"))
    assert outcome.usage is not None
    assert outcome.usage.input_tokens == 150


# --- codex ---------------------------------------------------------------------------------
CODEX_OUTPUT = "\n".join(
    json.dumps(event)
    for event in (
        {"type": "thread.started", "thread_id": "th-1"},
        {"type": "turn.started"},
        {"type": "item.completed", "item": {"type": "agent_message", "text": "Done."}},
        {
            "type": "turn.completed",
            "usage": {"input_tokens": 1000, "cached_input_tokens": 200, "output_tokens": 500},
        },
    )
)


def test_codex_runs_exec_json_with_model_effort_sandbox_and_the_prompt_on_stdin() -> None:
    agent = spec(adapter="codex", model="gpt-5-codex", effort="high")
    invocation = build_invocation(agent, CONTEXT)
    assert invocation.argv == [
        "codex",
        "exec",
        "--json",
        "--model",
        "gpt-5-codex",
        "-c",
        "model_reasoning_effort=high",
        "--sandbox",
        "workspace-write",
        "-",
    ]
    assert invocation.stdin == CONTEXT.prompt


def test_codex_usage_is_its_tokens_at_the_configured_prices() -> None:
    agent = spec(
        adapter="codex", model="gpt-5-codex", usd_per_mtok_input=1.25, usd_per_mtok_output=10
    )
    outcome = adapter_for(agent).outcome(agent, finished(CODEX_OUTPUT))
    assert outcome.error is None
    assert outcome.session_id == "th-1"
    assert outcome.usage is not None
    assert (outcome.usage.input_tokens, outcome.usage.output_tokens) == (1000, 500)
    assert outcome.usage.cost_usd == pytest.approx(0.00625)
    assert outcome.usage.model == "gpt-5-codex"
    assert adapter_for(agent).spent_usd(agent, CODEX_OUTPUT, None) == pytest.approx(0.00625)


def test_codex_turn_failed_fails_the_run() -> None:
    agent = spec(adapter="codex")
    output = (
        CODEX_OUTPUT
        + "\n"
        + json.dumps({"type": "turn.failed", "error": {"message": "stream disconnected"}})
    )
    outcome = adapter_for(agent).outcome(agent, finished(output, exit_code=1))
    assert outcome.error == "agent failed: stream disconnected"


def test_codex_that_prints_no_events_but_exits_zero_fails() -> None:
    agent = spec(adapter="codex")
    outcome = adapter_for(agent).outcome(agent, finished("just words\n"))
    assert outcome.error is not None
    assert "no turn.completed event" in outcome.error


# --- command ----------------------------------------------------------------------------
def test_command_runs_its_template_and_feeds_the_prompt_on_stdin() -> None:
    agent = spec(command=["my-agent", "--task", "{work_item}", "--out", "{result_file}"])
    invocation = build_invocation(agent, CONTEXT)
    assert invocation.argv == ["my-agent", "--task", "DEMO-1", "--out", str(CONTEXT.result_file)]
    assert invocation.stdin == CONTEXT.prompt
    assert invocation.env == {"ORCH_RESULT_FILE": str(CONTEXT.result_file)}
    arg_agent = spec(command=["my-agent", "{prompt}"], prompt_via="arg")
    assert build_invocation(arg_agent, CONTEXT).stdin is None


def test_command_cost_comes_from_its_result_file_else_a_result_line_else_nothing() -> None:
    agent = spec(command=["my-agent"])
    adapter = adapter_for(agent)
    written = json.dumps({"cost_usd": 0.5, "input_tokens": 10, "output_tokens": 5, "model": "m"})
    from_file = adapter.outcome(agent, finished("", result_text=written))
    assert from_file.usage is not None
    assert (from_file.usage.cost_usd, from_file.usage.model) == (0.5, "m")
    from_line = adapter.outcome(agent, finished(f"working\n{result_line()}\n"))
    assert from_line.usage is not None
    assert from_line.usage.cost_usd == 0.25
    nothing = adapter.outcome(agent, finished("working\n", exit_code=1))
    assert (nothing.usage, nothing.error) == (None, None)
    unreadable = adapter.outcome(agent, finished("", result_text="not json"))
    assert unreadable.usage is None


def test_command_tokens_without_cost_are_priced() -> None:
    agent = spec(command=["my-agent"], usd_per_mtok_input=2, usd_per_mtok_output=8)
    text = json.dumps({"input_tokens": 1_000_000, "output_tokens": 500_000})
    outcome = adapter_for(agent).outcome(agent, finished("", result_text=text))
    assert outcome.usage is not None
    assert outcome.usage.cost_usd == pytest.approx(6.0)


# --- resolution, availability, budgets ---------------------------------------------------------
def test_stage_settings_override_the_agent_and_only_the_timeout_reaches_runners(
    tmp_path: Path,
) -> None:
    settings = Settings(
        agents={"claude": AgentConfig(adapter="claude-code", model="claude-sonnet-4-5")},
        stages={
            "analysis": StageConfig(agent="claude", model="claude-opus-4-1", effort="high"),
            "deploy": StageConfig(timeout_s=60, model="ignored"),
        },
    )
    claude = resolve_agent(settings, "claude", tmp_path, "analysis")
    assert (claude.config.model, claude.config.effort) == ("claude-opus-4-1", "high")
    assert resolve_agent(settings, "claude", tmp_path, "development").config.model == (
        "claude-sonnet-4-5"
    )
    runner = resolve_agent(settings, "runner:deploy", tmp_path, "deploy")
    assert (runner.config.timeout_s, runner.config.model) == (60, "")


def test_the_builtin_claude_agent_uses_the_claude_code_adapter() -> None:
    assert resolve_agent(Settings(), "claude").config.adapter == "claude-code"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"adapter": "claude-code", "command": ["no-such-claude-xyz"]},
            "agent 'agent': program 'no-such-claude-xyz' not found on PATH; install Claude "
            "Code (npm install -g @anthropic-ai/claude-code",
        ),
        (
            {"adapter": "codex", "command": ["/nowhere/codex"]},
            "agent 'agent': program '/nowhere/codex' not found or not executable; install "
            "the Codex CLI",
        ),
        ({"command": ["no-such-tool-xyz", "run"]}, "program 'no-such-tool-xyz' not found"),
    ],
)
def test_a_missing_program_is_one_clear_line(config: dict[str, Any], expected: str) -> None:
    with pytest.raises(AgentError) as caught:
        check_available(spec(**config))
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert "set [agents.agent] command in orch.toml" in message


def test_a_present_program_is_available() -> None:
    check_available(spec(command=["{python}", "-c", "pass"]))
    check_available(spec(command=["sh", "-c", "true"]))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_run_budget_watch_stops_a_run_that_reports_spending_past_it(tmp_path: Path) -> None:
    result_file = tmp_path / "run.result.json"
    clock = FakeClock()
    watch = RunBudgetWatch(spec(command=["x"], budget_usd=1.0), result_file, clock)
    assert watch.over_budget(lambda: "") is None  # nothing written yet
    result_file.write_text(json.dumps({"cost_usd": 1.5}))
    assert watch.over_budget(lambda: "") is None  # looked less than an interval ago
    clock.now += 1
    assert watch.over_budget(lambda: "") == "over its run budget of $1.00 ($1.5000 spent)"


def test_without_a_budget_the_watch_never_reads_anything(tmp_path: Path) -> None:
    def output() -> str:
        raise AssertionError("read")

    assert RunBudgetWatch(spec(command=["x"]), tmp_path / "r.json").over_budget(output) is None
