"""The one interface every agent CLI is driven through.

Theory of operation
-------------------
An :class:`AgentAdapter` knows one kind of agent CLI. It does no I/O of its own: it
turns a resolved agent and a run's context into an :class:`Invocation` (argument list,
extra environment, stdin text), and reads what a finished run left behind (its output
tail, its exit code, the optional result file) into a :class:`RunOutcome`: usage (cost,
tokens, model, turns) and, when the run failed in a way the exit code does not say, the
reason in words. While a run goes on, :meth:`AgentAdapter.spent_usd` says what it has
spent so far when the CLI lets that be seen, so a run over its budget can be stopped.

The engine spawns, watches and kills; the adapters only translate. Concrete adapters:
``command`` (any CLI), ``claude-code`` and ``codex``; :mod:`orchestrator.agents.adapters`
maps names to them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from orchestrator.agents.commands import AgentSpec, RunContext
from orchestrator.agents.usage import Usage

__all__ = [
    "AgentAdapter",
    "FinishedRun",
    "Invocation",
    "RunOutcome",
    "json_lines",
    "last_plain_line",
]

# How much of a misbehaving agent's own words go into a run's failure reason.
REASON_DETAIL_CHARS: Final = 300


@dataclass(frozen=True)
class Invocation:
    """How to start one run: never through a shell."""

    argv: list[str]
    # Added to the job's environment (the agent's configured env still wins).
    env: Mapping[str, str] = field(default_factory=dict)
    # Text written to the agent's stdin; None = no stdin at all.
    stdin: str | None = None


@dataclass(frozen=True)
class FinishedRun:
    """What a run left behind, as the engine collected it."""

    output: str  # the tail of stdout and stderr, merged
    exit_code: int | None  # None: it never started
    result_text: str | None = None  # the result file's text, if the agent wrote one


@dataclass(frozen=True)
class RunOutcome:
    """What a finished run means, as far as its agent CLI tells."""

    usage: Usage | None = None
    # Why the run failed when the exit code alone does not say (garbage output, an error
    # result); None = judge by the exit code.
    error: str | None = None
    # The agent's own kind of result, e.g. Claude Code's "success" or "error_max_turns".
    subtype: str | None = None
    session_id: str | None = None

    def event_data(self) -> dict[str, Any]:
        """The facts worth keeping in the job's event."""
        data: dict[str, Any] = {}
        if self.usage is not None:
            data.update(
                cost_usd=self.usage.cost_usd,
                model=self.usage.model,
                input_tokens=self.usage.input_tokens,
                output_tokens=self.usage.output_tokens,
                num_turns=self.usage.num_turns,
                is_error=self.usage.is_error,
            )
        if self.subtype is not None:
            data["subtype"] = self.subtype
        if self.session_id is not None:
            data["session_id"] = self.session_id
        return data


class AgentAdapter(Protocol):
    """Drives one kind of agent CLI. Pure: no process, file or clock access."""

    name: str
    # The program run when the agent's ``command`` is empty.
    default_program: str
    # Said when the program is missing: how to get it.
    install_hint: str

    def invocation(self, spec: AgentSpec, context: RunContext) -> Invocation:
        """The command line, environment and stdin of one run."""
        ...

    def outcome(self, spec: AgentSpec, run: FinishedRun) -> RunOutcome:
        """Usage and failure reason of a finished run; never raises on bad output."""
        ...

    def spent_usd(self, spec: AgentSpec, output: str, result_text: str | None) -> float | None:
        """Dollars spent so far by a running agent, when its output shows; else None."""
        ...


def json_lines(output: str, *, reverse: bool = False) -> Iterator[dict[str, Any]]:
    """The JSON objects among ``output``'s lines (one per line); other lines are skipped."""
    lines = output.splitlines()
    for line in reversed(lines) if reverse else lines:
        text = line.strip()
        if not text.startswith("{"):
            continue
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            continue
        if isinstance(parsed, dict):
            yield parsed


def _is_json_object(text: str) -> bool:
    if not text.startswith("{"):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def last_plain_line(output: str) -> str:
    """The last non-empty line that is not a JSON object, shortened: what went wrong."""
    for line in reversed(output.splitlines()):
        text = line.strip()
        if text and not _is_json_object(text):
            return text[:REASON_DETAIL_CHARS]
    return ""
