"""What a runner is told about its repository: one JSON variable, ``ORCH_RUNNER_CONFIG``.

The engine builds a :class:`RunnerConfig` from the settings
(:func:`orchestrator.runners.environment.runner_environment`) and the runner reads it
back here. This module imports nothing heavy, so a runner starts fast: the settings
machinery (pydantic, TOML) stays in the engine's process.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["DEFAULT_SMOKE_ENDPOINTS", "RUNNER_CONFIG_ENV", "RunnerConfig"]

RUNNER_CONFIG_ENV: Final = "ORCH_RUNNER_CONFIG"
DEFAULT_SMOKE_ENDPOINTS: Final = ("/health", "/status", "/queue")


@dataclass(frozen=True)
class RunnerConfig:
    """A repository's runner settings, resolved by the engine for one job."""

    # The test command; None = ``python -m pytest`` with the worktree's venv if it has one.
    test_command: tuple[str, ...] | None = None
    # Run first (e.g. create a venv); a failure is a tool error.
    setup_command: tuple[str, ...] | None = None
    # Seconds setup + tests may take together.
    timeout_s: float = 1800.0
    # Seconds the whole runner job may take (the engine kills it after agent_timeout_s).
    budget_s: float = 3600.0
    # JUnit XML written by a non-pytest test command, relative to the worktree.
    junit_xml: str | None = None
    smoke_base_url: str | None = None
    smoke_endpoints: tuple[str, ...] = DEFAULT_SMOKE_ENDPOINTS
    smoke_timeout_s: float = 10.0
    # Name of the serial gate and where its lock files live.
    serial_gate: str | None = None
    lock_dir: str | None = None
    coverage_ratchet: bool = False
    coverage_source: tuple[str, ...] = ()
    # The repository's coverage baseline file (data_dir/coverage/<repo>.json).
    coverage_file: str | None = None
    # The attempt of the testing stage from which a DEFER is explained by the hybrid
    # agent instead of being retried; None = no hand-off (hybrid off).
    handoff_attempt: int | None = None
    # The hybrid agent: name, rendered command, extra environment, stdin prompt, timeout.
    explainer_name: str = ""
    explainer_argv: tuple[str, ...] = ()
    explainer_env: Mapping[str, str] = field(default_factory=dict)
    explainer_stdin: str | None = None
    explainer_timeout_s: float = 900.0
    # Why the hybrid agent cannot be used (its configuration is wrong), if so.
    explainer_error: str | None = None
    staging_command: tuple[str, ...] | None = None
    staging_health_path: str = "/health"
    staging_ready_timeout_s: float = 60.0
    log_max_bytes: int = 5_000_000
    # Set when the engine could not build this config; the runner DEFERs, naming it.
    config_error: str | None = None

    def to_json(self) -> str:
        """The config as one JSON object (tuples become lists)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> RunnerConfig:
        """Parse :meth:`to_json` output; None or empty gives the defaults.

        Unknown keys are ignored, so an engine one version ahead does not break a runner.
        Raises ``ValueError`` when the text is not a JSON object.
        """
        if not text:
            return cls()
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"{RUNNER_CONFIG_ENV} must be a JSON object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in known:
                continue
            values[key] = tuple(value) if isinstance(value, list) else value
        return cls(**values)
