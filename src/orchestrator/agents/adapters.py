"""Which adapter drives an agent, and the few file reads around a run.

The one place that names the concrete adapters (``command``, ``claude-code``, ``codex``).
The engine asks here for a run's :class:`Invocation`, for its :class:`RunOutcome` once it
finished, and, through :class:`RunBudgetWatch`, whether a running agent went over its
budget.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from orchestrator.agents.adapter import AgentAdapter, FinishedRun, Invocation, RunOutcome
from orchestrator.agents.claude_code import ClaudeCodeAdapter
from orchestrator.agents.codex import CodexAdapter
from orchestrator.agents.command_adapter import CommandAdapter
from orchestrator.agents.commands import AgentSpec, RunContext, command_template, resolve_agent
from orchestrator.agents.usage import parse_usage
from orchestrator.errors import AgentError
from orchestrator.settings import Settings

__all__ = [
    "ADAPTERS",
    "BUDGET_CHECK_INTERVAL_S",
    "RunBudgetWatch",
    "adapter_for",
    "build_invocation",
    "check_available",
    "job_outcome",
    "read_outcome",
    "result_file_for",
]

ADAPTERS: Final[Mapping[str, AgentAdapter]] = {
    adapter.name: adapter for adapter in (CommandAdapter(), ClaudeCodeAdapter(), CodexAdapter())
}
# How often a running agent's spending is looked at.
BUDGET_CHECK_INTERVAL_S: Final = 0.5
# A result file larger than this is not a result file.
MAX_RESULT_FILE_BYTES: Final = 1_000_000


def adapter_for(spec: AgentSpec) -> AgentAdapter:
    """The adapter of ``spec`` (settings validation keeps the name known)."""
    return ADAPTERS[spec.config.adapter]


def build_invocation(spec: AgentSpec, context: RunContext) -> Invocation:
    """How to start one run of ``spec``; the result file is announced in the env."""
    invocation = adapter_for(spec).invocation(spec, context)
    if context.result_file is None:
        return invocation
    env = {**invocation.env, "ORCH_RESULT_FILE": str(context.result_file)}
    return Invocation(argv=invocation.argv, env=env, stdin=invocation.stdin)


def program_of(spec: AgentSpec) -> str:
    """The program a run of ``spec`` starts (placeholders maybe still in it)."""
    template = command_template(spec.config)
    if template:
        return template[0].replace("{python}", sys.executable)
    return adapter_for(spec).default_program


def check_available(spec: AgentSpec) -> None:
    """Raise :class:`AgentError` (one line) unless the agent's program can be found."""
    adapter = adapter_for(spec)
    program = program_of(spec)
    if not program:
        raise AgentError(f"agent '{spec.name}' has an empty command; set [agents.{spec.name}]")
    if "{" in program:
        return  # decided at run time
    if shutil.which(program) is None:
        where = "not found on PATH" if "/" not in program else "not found or not executable"
        raise AgentError(
            f"agent '{spec.name}': program '{program}' {where}; {adapter.install_hint}, or "
            f"set [agents.{spec.name}] command in orch.toml"
        )


def _read_result_file(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        if path.stat().st_size > MAX_RESULT_FILE_BYTES:
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def read_outcome(
    spec: AgentSpec, output: str, exit_code: int | None, result_file: Path | None
) -> RunOutcome:
    """What a finished run of ``spec`` means: usage and, if any, why it failed."""
    run = FinishedRun(output, exit_code, _read_result_file(result_file))
    return adapter_for(spec).outcome(spec, run)


def result_file_for(log_path: Path) -> Path:
    """Where the run logging to ``log_path`` may write its result ($ORCH_RESULT_FILE)."""
    return log_path.with_suffix(".result.json")


def job_outcome(
    settings: Settings,
    agent: str,
    repository: str,
    stage: str,
    output: str,
    exit_code: int | None,
    log_path: Path | None,
) -> RunOutcome:
    """:func:`read_outcome` for a job's agent, resolved as it was when it started.

    An agent that cannot be resolved (it never started) is read like a ``command``.
    """
    try:
        spec = resolve_agent(settings, agent, Path(repository), stage)
    except AgentError:
        return RunOutcome(usage=parse_usage(output))
    result_file = result_file_for(log_path) if log_path is not None else None
    return read_outcome(spec, output, exit_code, result_file)


class RunBudgetWatch:
    """Tells, at most every :data:`BUDGET_CHECK_INTERVAL_S`, whether a run overspent."""

    def __init__(
        self,
        spec: AgentSpec,
        result_file: Path | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.result_file = result_file
        self._clock = clock
        self._next_check = 0.0

    def over_budget(self, output: Callable[[], str]) -> str | None:
        """The reason to stop the run, or None; ``output`` gives its output tail."""
        budget = self.spec.config.budget_usd
        if not budget or self._clock() < self._next_check:
            return None
        self._next_check = self._clock() + BUDGET_CHECK_INTERVAL_S
        spent = adapter_for(self.spec).spent_usd(
            self.spec, output(), _read_result_file(self.result_file)
        )
        if spent is None or spent <= budget:
            return None
        return f"over its run budget of ${budget:.2f} (${spent:.4f} spent)"
