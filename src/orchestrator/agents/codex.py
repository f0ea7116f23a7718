"""The ``codex`` adapter: OpenAI's Codex CLI as ``codex exec --json``.

``codex exec --json`` prints one JSON event per line: ``thread.started`` (with the
``thread_id``), ``turn.started``, ``item.*`` (messages, commands, file changes),
``turn.completed`` with ``usage`` (``input_tokens``, ``cached_input_tokens``,
``output_tokens``), and ``turn.failed`` or ``error`` with a message when it fails.

Codex reports tokens, not dollars: a run's cost is its tokens at the agent's configured
prices (``usd_per_mtok_input`` / ``usd_per_mtok_output``), zero when none are set. The
model is the configured one. ``permission_mode`` becomes ``--sandbox`` (default
``workspace-write``: the agent may edit its worktree).
"""

from __future__ import annotations

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
from orchestrator.agents.usage import Usage, priced_usd
from orchestrator.settings import AgentConfig

__all__ = ["CodexAdapter"]

DEFAULT_SANDBOX: Final = "workspace-write"
FILE_PROMPT: Final = "Your instructions are in the file {path}. Read it first and do what it says."


def _tokens(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _failure(event: dict[str, Any]) -> str | None:
    kind = event.get("type")
    if kind == "turn.failed":
        error = event.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        return str(message or "turn failed")
    if kind == "error":
        return str(event.get("message") or "error")
    return None


def _usage(output: str, config: AgentConfig) -> tuple[Usage | None, list[str], str | None]:
    """Usage summed over completed turns, the failures seen, and the thread id."""
    input_tokens = output_tokens = turns = 0
    failures: list[str] = []
    thread_id: str | None = None
    for event in json_lines(output):
        kind = event.get("type")
        if kind == "thread.started" and event.get("thread_id") is not None:
            thread_id = str(event["thread_id"])
        elif kind == "turn.completed":
            usage = event.get("usage")
            if isinstance(usage, dict):
                input_tokens += _tokens(usage.get("input_tokens"))
                output_tokens += _tokens(usage.get("output_tokens"))
            turns += 1
        elif (failure := _failure(event)) is not None:
            failures.append(" ".join(failure.split())[:REASON_DETAIL_CHARS])
    if not turns:
        return None, failures, thread_id
    cost = priced_usd(
        input_tokens, output_tokens, config.usd_per_mtok_input, config.usd_per_mtok_output
    )
    usage = Usage(
        cost_usd=cost,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        model=config.model or None,
        num_turns=turns,
        is_error=bool(failures),
    )
    return usage, failures, thread_id


class CodexAdapter:
    """Codex CLI (``codex``) in non-interactive ``exec`` mode with JSONL events."""

    name = "codex"
    default_program = "codex"
    install_hint = "install the Codex CLI (npm install -g @openai/codex)"

    def invocation(self, spec: AgentSpec, context: RunContext) -> Invocation:
        config = spec.config
        prefix = command_template(config) or [self.default_program]
        argv = [*fill_template(spec, context, prefix), "exec", "--json"]
        if config.model:
            argv += ["--model", config.model]
        if config.effort:
            argv += ["-c", f"model_reasoning_effort={config.effort}"]
        argv += ["--sandbox", config.permission_mode or DEFAULT_SANDBOX]
        argv += fill_template(spec, context, config.args)
        stdin: str | None = None
        if config.prompt_via == "arg":
            argv.append(context.prompt)
        elif config.prompt_via == "file":
            argv.append(FILE_PROMPT.format(path=context.prompt_file))
        else:
            argv.append("-")  # read the prompt from stdin
            stdin = context.prompt
        return Invocation(argv=argv, stdin=stdin)

    def outcome(self, spec: AgentSpec, run: FinishedRun) -> RunOutcome:
        usage, failures, thread_id = _usage(run.output, spec.config)
        error = None
        if failures:
            error = f"{spec.name} failed: {failures[-1]}"
        elif usage is None and run.exit_code == 0:
            seen = last_plain_line(run.output) or "no output at all"
            error = (
                f"{spec.name} exited 0 but printed no turn.completed event (is it "
                f"`codex exec --json`?); last line: {seen}"
            )
        return RunOutcome(usage=usage, error=error, session_id=thread_id)

    def spent_usd(self, spec: AgentSpec, output: str, result_text: str | None) -> float | None:
        usage, _, _ = _usage(output, spec.config)
        return usage.cost_usd if usage is not None else None
