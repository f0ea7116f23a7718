"""The ``codex`` adapter: OpenAI's Codex CLI as ``codex exec --json``.

``codex exec --json`` prints one JSON event per line: ``thread.started`` (with the
``thread_id``), ``turn.started``, ``item.*`` (messages, commands, file changes),
``turn.completed`` with ``usage`` (``input_tokens``, of which ``cached_input_tokens``,
and ``output_tokens``), ``turn.failed`` with the error when a turn fails, and top-level
``error`` events. An ``error`` is not always fatal: Codex prints ``{"type": "error",
"message": "Reconnecting... 1/5 (stream disconnected ...)"}`` when it retries a dropped
stream and then completes the turn. So a run fails on a ``turn.failed``, or on an
``error`` that no later ``turn.completed`` followed (:func:`read_events`).

Codex reports tokens, not dollars: a run's cost is its tokens at the agent's configured
prices (``usd_per_mtok_input``, ``usd_per_mtok_cached_input`` for the cached part of the
input, ``usd_per_mtok_output``), zero when none are set. The model is the configured one.
``permission_mode`` becomes ``--sandbox`` (default ``workspace-write``: the agent may
edit its worktree).
"""

from __future__ import annotations

from dataclasses import dataclass
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

__all__ = ["CodexAdapter", "CodexEvents", "read_events"]

DEFAULT_SANDBOX: Final = "workspace-write"
FILE_PROMPT: Final = "Your instructions are in the file {path}. Read it first and do what it says."


# A token count past this is not a count (and would overflow a float when priced).
MAX_TOKENS: Final = 10**15


def _tokens(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return 0


def _one_line(text: str) -> str:
    return " ".join(text.split())[:REASON_DETAIL_CHARS]


@dataclass(frozen=True)
class CodexEvents:
    """What a ``codex exec --json`` output says, read by :func:`read_events`."""

    thread_id: str | None = None
    turns: int = 0  # turn.completed events
    input_tokens: int = 0  # all input, cached included (as the Responses API counts it)
    cached_input_tokens: int = 0
    output_tokens: int = 0
    # The messages of turn.failed events.
    turn_failures: tuple[str, ...] = ()
    # ``error`` messages no later turn.completed (or turn.failed) followed. Codex prints
    # ``error`` for notices too ("Reconnecting... 1/5 ..." when it retries a dropped
    # stream) and then carries on: those are cleared by the turn.completed.
    errors: tuple[str, ...] = ()

    @property
    def failure(self) -> str | None:
        """Why the run failed (the last turn.failed, else the last error); None if it did not."""
        if self.turn_failures:
            return self.turn_failures[-1]
        return self.errors[-1] if self.errors else None


def read_events(output: str) -> CodexEvents:
    """Fold Codex's JSONL events into usage and failures; never raises."""
    thread_id: str | None = None
    turns = input_tokens = cached = output_tokens = 0
    failed: list[str] = []
    pending: list[str] = []  # errors not (yet) followed by a turn.completed
    for event in json_lines(output):
        kind = event.get("type")
        if kind == "thread.started" and event.get("thread_id") is not None:
            thread_id = str(event["thread_id"])
        elif kind == "turn.completed":
            usage = event.get("usage")
            if isinstance(usage, dict):
                input_tokens += _tokens(usage.get("input_tokens"))
                cached += _tokens(usage.get("cached_input_tokens"))
                output_tokens += _tokens(usage.get("output_tokens"))
            turns += 1
            pending.clear()  # the turn went on after them: notices, not failures
        elif kind == "turn.failed":
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            failed.append(_one_line(str(message or "turn failed")))
            pending.clear()  # the turn.failed says it (its message repeats the error)
        elif kind == "error":
            pending.append(_one_line(str(event.get("message") or "error")))
    return CodexEvents(
        thread_id=thread_id,
        turns=turns,
        input_tokens=input_tokens,
        cached_input_tokens=cached,
        output_tokens=output_tokens,
        turn_failures=tuple(failed),
        errors=tuple(pending),
    )


def _usage(events: CodexEvents, config: AgentConfig) -> Usage | None:
    """Usage summed over completed turns, priced; None when no turn completed."""
    if not events.turns:
        return None
    cost = priced_usd(
        events.input_tokens,
        events.output_tokens,
        config.usd_per_mtok_input,
        config.usd_per_mtok_output,
        cached_tokens=events.cached_input_tokens,
        usd_cached=config.usd_per_mtok_cached_input,
    )
    return Usage(
        cost_usd=cost,
        input_tokens=events.input_tokens,
        output_tokens=events.output_tokens,
        model=config.model or None,
        num_turns=events.turns,
        is_error=events.failure is not None,
    )


class CodexAdapter:
    """Codex CLI (``codex``) in non-interactive ``exec`` mode with JSONL events."""

    name = "codex"
    default_program = "codex"
    install_hint = (
        "install the Codex CLI (npm install -g @openai/codex, or `make agents` for "
        ".cache/agents/node_modules/.bin/codex)"
    )

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
        events = read_events(run.output)
        usage = _usage(events, spec.config)
        error = None
        if events.failure is not None:
            error = f"{spec.name} failed: {events.failure}"
        elif usage is None and run.exit_code == 0:
            seen = last_plain_line(run.output) or "no output at all"
            error = (
                f"{spec.name} exited 0 but printed no turn.completed event (is it "
                f"`codex exec --json`?); last line: {seen}"
            )
        return RunOutcome(usage=usage, error=error, session_id=events.thread_id)

    def spent_usd(self, spec: AgentSpec, output: str, result_text: str | None) -> float | None:
        usage = _usage(read_events(output), spec.config)
        return usage.cost_usd if usage is not None else None
