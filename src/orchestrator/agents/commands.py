"""Agent specs, their stage overrides and their command templates."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from orchestrator.errors import AgentError
from orchestrator.settings import AgentConfig, Settings, StageConfig

__all__ = [
    "BUILTIN_AGENTS",
    "AgentSpec",
    "RunContext",
    "command_template",
    "fill_template",
    "render_command",
    "resolve_agent",
]

RUNNER_PREFIX: Final = "runner:"
RUNNERS: Final = frozenset({"tests", "staging", "deploy"})
# Stage settings that override the agent's own (timeout_s applies to runners too).
STAGE_OVERRIDES: Final = ("model", "effort", "timeout_s", "budget_usd", "max_turns")

BUILTIN_AGENTS: Final[Mapping[str, AgentConfig]] = {
    # Claude Code in print mode, streaming its events; `claude` from PATH.
    "claude": AgentConfig(adapter="claude-code"),
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
    # Where a ``command`` agent may write its cost as JSON ({result_file}, ORCH_RESULT_FILE).
    result_file: Path | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


def resolve_agent(
    settings: Settings, name: str, repository: Path | None = None, stage: str | None = None
) -> AgentSpec:
    """The agent called ``name``: configured, built in, or a runner.

    Given the ``repository`` and ``stage`` it works on, the stage's settings (model,
    effort, timeout, budget, turns) override the agent's own.
    """
    spec = _lookup(settings, name)
    if repository is None or stage is None:
        return spec
    return with_stage_overrides(spec, settings.stage_config(repository, stage))


def _lookup(settings: Settings, name: str) -> AgentSpec:
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


def with_stage_overrides(spec: AgentSpec, stage: StageConfig) -> AgentSpec:
    """``spec`` with the stage's own model, effort, timeout, budget and turns."""
    keys = STAGE_OVERRIDES if spec.kind == "agent" else ("timeout_s",)
    update: dict[str, Any] = {
        key: getattr(stage, key) for key in keys if getattr(stage, key) is not None
    }
    if not update:
        return spec
    return AgentSpec(spec.name, spec.kind, spec.config.model_copy(update=update))


def command_template(config: AgentConfig) -> list[str]:
    """The agent's ``command`` as an argument list, placeholders still in it."""
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


def fill_template(spec: AgentSpec, context: RunContext, parts: Sequence[str]) -> list[str]:
    """``parts`` with their ``{placeholders}`` filled in from the run's context."""
    values = {
        "python": sys.executable,
        "stage": context.stage,
        "work_item": context.work_item,
        "worktree": str(context.worktree),
        "prompt": context.prompt,
        "prompt_file": str(context.prompt_file),
        "result_file": str(context.result_file or ""),
        "model": spec.config.model,
        "effort": spec.config.effort,
        **context.extra,
    }
    return [_fill(part, values, spec.name) for part in parts]


def render_command(spec: AgentSpec, context: RunContext) -> list[str]:
    """The argument list to run: placeholders filled in, never passed through a shell."""
    argv = fill_template(spec, context, command_template(spec.config))
    if not argv:
        raise AgentError(f"agent '{spec.name}' has an empty command; set [agents.{spec.name}]")
    return argv
