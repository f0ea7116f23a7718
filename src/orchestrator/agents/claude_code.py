"""The ``claude-code`` adapter: Claude Code in print mode, streaming its events.

The run is ``claude -p --output-format stream-json --verbose`` with the model, effort,
turn limit, budget, permission mode and allowed tools from the agent's (and the stage's)
settings; the prompt goes to stdin unless ``prompt_via`` says otherwise. Claude Code
prints one JSON event per line as the session runs (``system/init``, ``assistant``,
``user`` tool results, ...), which the engine copies into the job's log as they come,
and a last ``result`` event with ``total_cost_usd``, ``usage``, ``modelUsage``,
``num_turns``, ``is_error`` and ``subtype`` (``success``, ``error_max_turns``,
``error_max_budget_usd``, ``error_during_execution``).

A run fails, with the reason, when the result says ``is_error``, or when the CLI exited
0 without printing a result at all (its output is not stream-json). When Claude Code
gave up on the model API (its result then says ``subtype: success`` with ``is_error``,
``terminal_reason: api_error`` and "API Error: 529 ..."), the reason is
``<agent>: API error: 529 ...``. Claude Code retries API errors itself first
(``CLAUDE_CODE_MAX_RETRIES``, 10 by default: about three minutes against a dead
endpoint); set it in the agent's ``env`` to fail sooner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from orchestrator.agents.adapter import (
    REASON_DETAIL_CHARS,
    FinishedRun,
    Invocation,
    RunOutcome,
    json_lines,
    last_plain_line,
)
from orchestrator.agents.commands import AgentSpec, RunContext, command_template, fill_template
from orchestrator.agents.usage import usage_from_result

__all__ = ["ClaudeCodeAdapter", "last_result_event"]

DEFAULT_PERMISSION_MODE: Final = "acceptEdits"
DEFAULT_ALLOWED_TOOLS: Final = ("Read", "Write", "Edit", "Bash")
# No update checks, telemetry or error reports from a pipeline job.
QUIET_ENV: Final[Mapping[str, str]] = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
}
API_ERROR_PREFIX: Final = "API Error: "
FILE_PROMPT: Final = "Your instructions are in the file {path}. Read it first and do what it says."


def last_result_event(output: str) -> dict[str, Any] | None:
    """The last ``result`` event in stream-json (or json) output; None if there is none."""
    for event in json_lines(output, reverse=True):
        if event.get("type") == "result" or "total_cost_usd" in event:
            return event
    return None


def _error_detail(result: Mapping[str, Any]) -> str:
    errors = result.get("errors")
    if isinstance(errors, list) and errors:
        text = "; ".join(str(error) for error in errors)
    else:
        text = str(result.get("result") or "")
    return " ".join(text.split())[:REASON_DETAIL_CHARS]


def _api_error(result: Mapping[str, Any]) -> bool:
    # Claude Code gave up on the model API (after its own retries): its result says
    # subtype "success" with is_error, terminal_reason "api_error" and the status, and
    # the text "API Error: 529 Overloaded. ...".
    return (
        result.get("terminal_reason") == "api_error"
        or result.get("api_error_status") is not None
        or str(result.get("result") or "").startswith(API_ERROR_PREFIX)
    )


def _failure(name: str, result: Mapping[str, Any], subtype: str | None) -> str:
    detail = _error_detail(result)
    if _api_error(result):
        detail = detail.removeprefix(API_ERROR_PREFIX)
        status = result.get("api_error_status")
        if status is not None and not detail.startswith(str(status)):
            detail = f"{status} {detail}".strip()
        return f"{name}: API error: {detail or 'no detail'}"
    return f"{name} stopped with {subtype or 'an error'}" + (f": {detail}" if detail else "")


class ClaudeCodeAdapter:
    """Claude Code (``claude``), 2.x, in print mode with stream-json output."""

    name = "claude-code"
    default_program = "claude"
    install_hint = (
        "install Claude Code (npm install -g @anthropic-ai/claude-code, or `make agents` "
        "for .cache/agents/node_modules/.bin/claude)"
    )

    def invocation(self, spec: AgentSpec, context: RunContext) -> Invocation:
        config = spec.config
        argv = [*fill_template(spec, context, _prefix(spec)), "-p"]
        stdin: str | None = None
        if config.prompt_via == "arg":
            argv.append(context.prompt)
        elif config.prompt_via == "file":
            argv.append(FILE_PROMPT.format(path=context.prompt_file))
        else:
            stdin = context.prompt
        argv += ["--output-format", "stream-json", "--verbose"]
        if config.model:
            argv += ["--model", config.model]
        if config.effort:
            argv += ["--effort", config.effort]
        if config.max_turns:
            argv += ["--max-turns", str(config.max_turns)]
        if config.budget_usd:
            argv += ["--max-budget-usd", f"{config.budget_usd:g}"]
        tools = config.allowed_tools or list(DEFAULT_ALLOWED_TOOLS)
        argv += [
            "--permission-mode",
            config.permission_mode or DEFAULT_PERMISSION_MODE,
            # One argument: the option takes a variadic list that would swallow what follows.
            f"--allowedTools={','.join(tools)}",
        ]
        argv += fill_template(spec, context, config.args)
        return Invocation(argv=argv, env=QUIET_ENV, stdin=stdin)

    def outcome(self, spec: AgentSpec, run: FinishedRun) -> RunOutcome:
        result = last_result_event(run.output)
        if result is None:
            if run.exit_code != 0:
                return RunOutcome()  # the exit code says it; the engine adds the last line
            seen = last_plain_line(run.output) or "no output at all"
            return RunOutcome(
                error=(
                    f"{spec.name} exited 0 but printed no stream-json result event "
                    f"(is it Claude Code with --output-format stream-json?); last line: {seen}"
                )
            )
        usage = usage_from_result(result)
        raw_subtype = result.get("subtype")
        subtype = str(raw_subtype) if raw_subtype is not None else None
        raw_session = result.get("session_id")
        session_id = str(raw_session) if raw_session is not None else None
        error = None
        if usage.is_error or (subtype is not None and subtype != "success"):
            error = _failure(spec.name, result, subtype)
            if run.exit_code not in (0, None):
                error += f" (exit code {run.exit_code})"
        return RunOutcome(usage=usage, error=error, subtype=subtype, session_id=session_id)

    def spent_usd(self, spec: AgentSpec, output: str, result_text: str | None) -> float | None:
        # Claude Code reports cost only in its result; it enforces --max-budget-usd itself.
        result = last_result_event(output)
        return usage_from_result(result).cost_usd if result is not None else None


def _prefix(spec: AgentSpec) -> list[str]:
    # ``command`` may name the binary (a path) and leading arguments.
    return command_template(spec.config) or [ClaudeCodeAdapter.default_program]
