"""Agents: who does a stage's work, how to start them, what they cost.

An agent is an adapter (``command`` for any CLI, ``claude-code``, ``codex``), its
settings, and a per-stage prompt (Jinja2). Built in: ``claude`` (Claude Code, streaming
its events), ``scripted`` (deterministic and offline, for the demo and the tests) and the
deterministic runners ``runner:<name>``. Everything else is configured in ``orch.toml``
under ``[agents.<name>]``; see docs/agents.md.
"""

from orchestrator.agents.adapter import AgentAdapter, FinishedRun, Invocation, RunOutcome
from orchestrator.agents.adapters import (
    RunBudgetWatch,
    adapter_for,
    build_invocation,
    check_available,
    job_outcome,
    read_outcome,
    result_file_for,
)
from orchestrator.agents.commands import (
    AgentSpec,
    RunContext,
    render_command,
    resolve_agent,
)
from orchestrator.agents.prompts_render import render_prompt
from orchestrator.agents.usage import Usage, parse_usage

__all__ = [
    "AgentAdapter",
    "AgentSpec",
    "FinishedRun",
    "Invocation",
    "RunBudgetWatch",
    "RunContext",
    "RunOutcome",
    "Usage",
    "adapter_for",
    "build_invocation",
    "check_available",
    "job_outcome",
    "parse_usage",
    "read_outcome",
    "render_command",
    "render_prompt",
    "resolve_agent",
    "result_file_for",
]
