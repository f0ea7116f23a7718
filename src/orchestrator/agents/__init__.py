"""Agents: who does a stage's work, how to start them, what they cost.

An agent is a command template plus a per-stage prompt (Jinja2). Built in: ``claude``
(Claude Code, printing its JSON result), ``scripted`` (deterministic and offline, for
the demo and the tests) and the deterministic runners ``runner:<name>``. Everything
else is configured in ``orch.toml`` under ``[agents.<name>]``.
"""

from orchestrator.agents.commands import (
    AgentSpec,
    RunContext,
    check_available,
    render_command,
    resolve_agent,
)
from orchestrator.agents.prompts_render import render_prompt
from orchestrator.agents.usage import Usage, parse_usage

__all__ = [
    "AgentSpec",
    "RunContext",
    "Usage",
    "check_available",
    "parse_usage",
    "render_command",
    "render_prompt",
    "resolve_agent",
]
