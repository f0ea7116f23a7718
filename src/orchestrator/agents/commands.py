"""Agent specs and their command lines."""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from orchestrator.errors import AgentError
from orchestrator.settings import AgentConfig, Settings

__all__ = ["AgentSpec", "RunContext", "check_available", "render_command", "resolve_agent"]

RUNNER_PREFIX: Final = "runner:"
RUNNERS: Final = frozenset({"tests", "staging", "deploy"})

BUILTIN_AGENTS: Final[Mapping[str, AgentConfig]] = {
    # Claude Code in print mode; it prints one JSON result with cost and usage.
    "claude": AgentConfig(
        command=[
            "claude",
            "-p",
            "{prompt}",
            "--output-format",
            "json",
            "--permission-mode",
            "acceptEdits",
            "--allowedTools",
            "Read,Write,Edit,Bash",
        ]
    ),
    # Deterministic, offline: writes plausible artifacts and a real code change.
    "scripted": AgentConfig(
        command=["{python}", "-m", "orchestrator.agents.scripted", "--stage", "{stage}"]
    ),
}


@dataclass(frozen=True)
class AgentSpec:
    """A resolved agent: its name, kind and configuration."""

    name: str
    kind: str  # agent | runner
    config: AgentConfig


@dataclass(frozen=True)
class RunContext:
    """What a command template and a prompt may refer to."""

    stage: str
    work_item: str
    worktree: Path
    prompt: str
    prompt_file: Path
    extra: Mapping[str, str] = field(default_factory=dict)


def resolve_agent(settings: Settings, name: str) -> AgentSpec:
    """The agent called ``name``: configured, built in, or a runner."""
    if name.startswith(RUNNER_PREFIX):
        runner = name.removeprefix(RUNNER_PREFIX)
        if runner not in RUNNERS:
            known = ", ".join(sorted(f"{RUNNER_PREFIX}{r}" for r in RUNNERS))
            raise AgentError(f"unknown runner '{name}'; runners: {known}")
        command = ["{python}", "-m", "orchestrator.runners", runner]
        return AgentSpec(name, "runner", AgentConfig(command=command))
    if name in settings.agents:
        return AgentSpec(name, "agent", settings.agents[name])
    if name in BUILTIN_AGENTS:
        return AgentSpec(name, "agent", BUILTIN_AGENTS[name])
    known = ", ".join(sorted({*settings.agents, *BUILTIN_AGENTS}))
    raise AgentError(
        f"unknown agent '{name}'; define [agents.{name}] in orch.toml (known: {known})"
    )


def _template(config: AgentConfig) -> list[str]:
    if isinstance(config.command, str):
        try:
            return shlex.split(config.command)
        except ValueError as exc:
            raise AgentError(f"agent command {config.command!r} cannot be split: {exc}") from None
    return list(config.command)


_PLACEHOLDER: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _fill(part: str, values: Mapping[str, str], agent: str) -> str:
    """Replace ``{name}`` placeholders; other braces (JSON, shell) are left alone."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            known = ", ".join("{" + key + "}" for key in sorted(values))
            raise AgentError(f"agent '{agent}': unknown placeholder {{{name}}}; known: {known}")
        return values[name]

    return _PLACEHOLDER.sub(replace, part)


def render_command(spec: AgentSpec, context: RunContext) -> list[str]:
    """The argument list to run: placeholders filled in, never passed through a shell."""
    values = {
        "python": sys.executable,
        "stage": context.stage,
        "work_item": context.work_item,
        "worktree": str(context.worktree),
        "prompt": context.prompt,
        "prompt_file": str(context.prompt_file),
        "model": spec.config.model,
        "effort": spec.config.effort,
        **context.extra,
    }
    argv = [_fill(part, values, spec.name) for part in _template(spec.config)]
    if not argv:
        raise AgentError(f"agent '{spec.name}' has an empty command; set [agents.{spec.name}]")
    return argv


def check_available(spec: AgentSpec) -> None:
    """Raise :class:`AgentError` unless the agent's program can be found."""
    template = _template(spec.config)
    if not template:
        raise AgentError(f"agent '{spec.name}' has an empty command; set [agents.{spec.name}]")
    program = template[0].replace("{python}", sys.executable)
    if "{" in program:
        return  # decided at run time
    if shutil.which(program) is None:
        raise AgentError(
            f"agent '{spec.name}': program '{program}' not found on PATH; install it or "
            f"set [agents.{spec.name}] command in orch.toml"
        )
