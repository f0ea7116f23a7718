"""The engine's side of a runner job: its repository's settings as ``ORCH_RUNNER_CONFIG``.

Runs in the engine's process (it reads :class:`~orchestrator.settings.Settings` and
renders the hybrid tester agent's command); the runner reads the result back with
:meth:`RunnerConfig.from_json`. Building it never raises: a configuration the runner
cannot use is passed on as a reason (``explainer_error``) for the report.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Final

from orchestrator.agents import RunContext, build_invocation, resolve_agent
from orchestrator.errors import OrchestratorError
from orchestrator.runners.config import RUNNER_CONFIG_ENV, RunnerConfig
from orchestrator.runners.coverage_ratchet import baseline_file
from orchestrator.runners.explain import explain_prompt
from orchestrator.settings import Settings
from orchestrator.store import Job, Task

__all__ = ["handoff_attempt", "runner_config", "runner_environment"]

# Part of agent_timeout_s kept back so the runner, not the engine, ends a slow run.
BUDGET_FRACTION: Final = 0.95


def _argv(command: list[str] | str | None) -> tuple[str, ...] | None:
    if command is None:
        return None
    parts = shlex.split(command) if isinstance(command, str) else list(command)
    return tuple(parts) or None


def handoff_attempt(settings: Settings) -> int | None:
    """The testing attempt whose DEFER goes to the hybrid agent; None when hybrid is off.

    DEFERs are retried ``test_runner_defer_retries`` times; the attempt after them hands
    off, but never later than ``max_attempts`` (the engine would fail the task first).
    """
    if not settings.test_runner_hybrid:
        return None
    return min(settings.test_runner_defer_retries + 1, settings.max_attempts)


def _explainer(settings: Settings, task: Task, prompt_dir: Path, job_id: int) -> dict[str, Any]:
    name = settings.hybrid_agent(Path(task.repository))
    docs = f"docs/work-items/{task.work_item}"
    prompt = explain_prompt(task.work_item, docs)
    try:
        spec = resolve_agent(settings, name, Path(task.repository), "testing")
        if spec.kind != "agent":
            raise OrchestratorError(f"test_runner_hybrid_agent '{name}' is not an agent")
        prompt_dir.mkdir(parents=True, exist_ok=True)
        prompt_file = (prompt_dir / f"{job_id:06d}-testing-explain-prompt.md").resolve()
        prompt_file.write_text(prompt, encoding="utf-8")
        # The agent's own adapter builds the command (claude-code, codex, command).
        invocation = build_invocation(
            spec, RunContext("testing", task.work_item, Path(task.worktree), prompt, prompt_file)
        )
    except (OrchestratorError, OSError) as exc:
        return {"explainer_name": name, "explainer_error": str(exc)}
    return {
        "explainer_name": name,
        "explainer_argv": tuple(invocation.argv),
        "explainer_env": {**invocation.env, **spec.config.env},
        "explainer_stdin": invocation.stdin,
        "explainer_timeout_s": spec.config.timeout_s or settings.agent_timeout_s,
    }


def runner_config(settings: Settings, task: Task, job: Job, prompt_dir: Path) -> RunnerConfig:
    """Everything the runner of ``job`` needs to know about its repository."""
    repository = Path(task.repository)
    repo = settings.repo_config(repository)
    budget = settings.agent_timeout_s * BUDGET_FRACTION
    timeout = repo.test_timeout_s or settings.test_runner_timeout_s
    hybrid: dict[str, Any] = {}
    handoff = handoff_attempt(settings) if job.stage == "testing" else None
    if handoff is not None and job.attempt >= handoff:
        hybrid = _explainer(settings, task, prompt_dir, job.id)
    return RunnerConfig(
        test_command=_argv(repo.test_command),
        setup_command=_argv(repo.setup_command),
        timeout_s=min(timeout, budget),
        budget_s=budget,
        junit_xml=repo.junit_xml,
        smoke_base_url=repo.smoke_base_url,
        smoke_endpoints=tuple(repo.smoke_endpoints),
        serial_gate=repo.serial_gate,
        lock_dir=str((settings.data_dir / "locks").resolve()),
        coverage_ratchet=repo.coverage_ratchet,
        coverage_source=tuple(repo.coverage_source),
        coverage_file=str(baseline_file(settings.data_dir.resolve(), repository)),
        handoff_attempt=handoff,
        staging_command=_argv(repo.staging_command),
        staging_health_path=repo.staging_health_path,
        staging_ready_timeout_s=min(repo.staging_ready_timeout_s, budget),
        log_max_bytes=settings.log_max_bytes,
        **hybrid,
    )


def runner_environment(
    settings: Settings, task: Task, job: Job, prompt_dir: Path
) -> dict[str, str]:
    """The variables the engine adds to a runner job's environment; never raises.

    A setting the runner cannot use (a test command shlex cannot split) reaches the
    runner as ``config_error``, which it reports as a DEFER naming the problem.
    """
    try:
        config = runner_config(settings, task, job, prompt_dir)
    except Exception as exc:  # the engine must never see a runner's configuration error
        config = RunnerConfig(config_error=f"{type(exc).__name__}: {exc}")
    return {RUNNER_CONFIG_ENV: config.to_json()}
