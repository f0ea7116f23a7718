"""One settings object: ``ORCH_*`` variables over ``orch.toml`` over defaults.

Every kill-switch and limit of the product lives on :class:`Settings`, with a comment
saying what it guards. :func:`load_settings` finds ``orch.toml`` (``--config`` or the
current directory), validates it, and turns any mistake into one :class:`ConfigError`
line naming the file, the key and the line. :func:`describe_settings` tells where each
effective value came from, for ``orch config show``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from orchestrator.errors import ConfigError
from orchestrator.kernel.decisions import Limits
from orchestrator.kernel.gates import GATES
from orchestrator.kernel.stages import JOB_STAGES, Pipeline

__all__ = [
    "AgentConfig",
    "RepoConfig",
    "SettingSource",
    "Settings",
    "StageConfig",
    "describe_settings",
    "find_config_file",
    "load_settings",
]

CONFIG_FILE_NAME = "orch.toml"
ENV_PREFIX = "ORCH_"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentConfig(_Strict):
    """An agent: a command template and what to tell it.

    ``command`` is an argument list (or one string, split like a shell would, never run
    by a shell). Placeholders: ``{prompt}``, ``{prompt_file}``, ``{stage}``,
    ``{work_item}``, ``{worktree}``, ``{model}``, ``{effort}``, ``{python}``.
    """

    command: list[str] | str
    model: str = ""
    effort: str = ""
    # Seconds before the agent's process group is killed; 0 = use agent_timeout_s.
    timeout_s: float = 0
    env: dict[str, str] = Field(default_factory=dict)


class StageConfig(_Strict):
    """Who works on a stage and which gates judge it."""

    agent: str | None = None
    # A Jinja2 template file for the prompt, relative to the repository; None = built-in.
    prompt: str | None = None
    # Gate names from orchestrator.kernel.gates.GATES; None = the stage's defaults.
    gates: list[str] | None = None

    @field_validator("gates")
    @classmethod
    def _known_gates(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            if name not in GATES:
                raise ValueError(f"unknown gate '{name}'; known: {', '.join(sorted(GATES))}")
        return value


def _check_stage_keys(value: dict[str, StageConfig]) -> dict[str, StageConfig]:
    for stage in value:
        if stage not in JOB_STAGES:
            known = ", ".join(sorted(JOB_STAGES))
            raise ValueError(f"'{stage}' is not a stage with a job; stages: {known}")
    return value


class RepoConfig(_Strict):
    """Per-repository overrides, under ``[repos.<name>]``."""

    # Path of the repository; the table name matches the directory name when omitted.
    path: str | None = None
    # Branch that task branches start from and merge into; None = detect (HEAD).
    default_branch: str | None = None
    # Stages this repository's pipeline leaves out.
    skip: list[str] = Field(default_factory=list)
    stages: dict[str, StageConfig] = Field(default_factory=dict)
    # Command the tests run with in the worktree (argument list or one string).
    test_command: list[str] | str | None = None

    @field_validator("skip")
    @classmethod
    def _skippable(cls, value: list[str]) -> list[str]:
        Pipeline(frozenset(value))  # raises ValueError naming the bad stage
        return value

    _stages_known = field_validator("stages")(_check_stage_keys)


DEFAULT_STAGES: Mapping[str, StageConfig] = {
    "analysis": StageConfig(agent="claude"),
    "architecture": StageConfig(agent="claude"),
    "development": StageConfig(agent="claude"),
    "testing": StageConfig(agent="claude"),
    "deploy-staging": StageConfig(agent="runner:staging"),
    "deploy": StageConfig(agent="runner:deploy"),
}


class _TomlSource(PydanticBaseSettingsSource):
    """Feeds the parsed orch.toml into pydantic-settings, below the environment."""

    def __init__(self, settings_cls: type[BaseSettings], data: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = dict(data)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


class Settings(BaseSettings):
    """Effective settings of one orchestrator process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        env_nested_delimiter="__",
    )

    # --- where things live -------------------------------------------------------------
    # Directory for the SQLite database, worktrees and run logs (relative to cwd).
    data_dir: Path = Path(".orch")
    # SQLAlchemy URL; None = SQLite file <data_dir>/orch.db. PostgreSQL:
    # postgresql+psycopg://user@host/db
    database_url: str | None = None

    # --- limits --------------------------------------------------------------------------
    # Attempts of one stage (agent failures, failed gates) before the task fails.
    max_attempts: int = Field(default=3, ge=1, le=100)
    # Rollbacks to development (failed tests, staging, deploy) before the task fails.
    max_rollbacks: int = Field(default=2, ge=0, le=100)
    # Base delay before a retry; doubles with each attempt. 0 in tests.
    retry_backoff_s: float = Field(default=5.0, ge=0)
    # Wall-clock limit of one agent run; its process group is killed after it.
    agent_timeout_s: float = Field(default=3600.0, gt=0)
    # Reaper tier 2: a job whose exit code is recorded this long but is not finalized.
    reaper_finalize_grace_s: float = Field(default=300.0, ge=0)
    # Reaper tier 3: a job running longer than this is killed whatever its lease says.
    reaper_max_running_s: float = Field(default=7200.0, gt=0)
    # Running jobs at once, over all repositories and per repository.
    max_running_jobs: int = Field(default=4, ge=1)
    max_running_jobs_per_repo: int = Field(default=2, ge=1)
    # Size cap of one run's log file; output beyond it is dropped with a marker.
    log_max_bytes: int = Field(default=5_000_000, ge=1024)

    # --- kill-switches and their scopes (empty list = every repository) -------------------
    # Deterministic test runner on the testing stage instead of the tester agent.
    test_runner_enabled: bool = True
    test_runner_repos: list[str] = Field(default_factory=list)
    # Durable transition lease + compare-and-swap stage writes.
    transition_lease_enabled: bool = True
    transition_lease_repos: list[str] = Field(default_factory=list)

    # --- presentation ----------------------------------------------------------------------
    # Live card behaviour: edit in place, or bump (re-create at the bottom). Not 'bump' = edit.
    tracker_mode: Literal["edit", "bump"] = "edit"
    # Stage labels on cards and in the CLI: en or ru.
    language: Literal["en", "ru"] = "en"

    # --- server ----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=1, le=65535)

    # --- pipeline --------------------------------------------------------------------------
    # Agents by name; built-ins: claude, scripted, and runner:<name> for runners.
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    # Who works on each stage, for every repository.
    stages: dict[str, StageConfig] = Field(default_factory=dict)
    # Per-repository overrides.
    repos: dict[str, RepoConfig] = Field(default_factory=dict)
    # Stages every repository skips (a repository's own `skip` adds to it).
    skip: list[str] = Field(default_factory=list)

    @field_validator("tracker_mode", mode="before")
    @classmethod
    def _tracker_mode(cls, value: object) -> str:
        # Anything other than "bump" means edit, so a typo never changes behaviour.
        return "bump" if str(value).strip().lower() == "bump" else "edit"

    @field_validator("skip")
    @classmethod
    def _skippable(cls, value: list[str]) -> list[str]:
        Pipeline(frozenset(value))
        return value

    _stages_known = field_validator("stages")(_check_stage_keys)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_data = _PENDING_TOML.get("data", {})
        return (init_settings, env_settings, _TomlSource(settings_cls, toml_data))

    # --- derived views -------------------------------------------------------------------
    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'orch.db').resolve()}"

    @property
    def limits(self) -> Limits:
        return Limits(self.max_attempts, self.max_rollbacks, self.retry_backoff_s)

    def repo_config(self, repo_path: Path) -> RepoConfig:
        """The overrides of the repository at ``repo_path`` (empty when none match)."""
        resolved = repo_path.resolve()
        for name, config in self.repos.items():
            if config.path is not None:
                if Path(config.path).expanduser().resolve() == resolved:
                    return config
            elif name == resolved.name:
                return config
        return RepoConfig()

    def pipeline_for(self, repo_path: Path) -> Pipeline:
        return Pipeline(frozenset(self.skip) | frozenset(self.repo_config(repo_path).skip))

    def stage_config(self, repo_path: Path, stage: str) -> StageConfig:
        """The stage's agent, prompt and gates: repository over global over defaults."""
        merged: dict[str, Any] = DEFAULT_STAGES[stage].model_dump()
        for layer in (self.stages.get(stage), self.repo_config(repo_path).stages.get(stage)):
            if layer is not None:
                merged.update(layer.model_dump(exclude_unset=True))
        if stage == "testing" and self._test_runner_applies(repo_path, merged):
            merged["agent"] = "runner:tests"
        return StageConfig(**merged)

    def _test_runner_applies(self, repo_path: Path, stage: Mapping[str, Any]) -> bool:
        explicitly_chosen = any(
            layer is not None and "agent" in layer.model_fields_set
            for layer in (
                self.stages.get("testing"),
                self.repo_config(repo_path).stages.get("testing"),
            )
        )
        return (
            self.test_runner_enabled
            and not explicitly_chosen
            and in_scope(self.test_runner_repos, repo_path)
            and str(stage.get("agent", "")) != "runner:tests"
        )


def in_scope(scope: Sequence[str], repo_path: Path) -> bool:
    """Whether a repository is in a kill-switch's scope list (empty = all)."""
    if not scope:
        return True
    resolved = repo_path.resolve()
    return any(item in (resolved.name, str(resolved)) for item in scope)


# pydantic-settings builds sources inside the constructor; the parsed TOML is handed
# over here for the duration of one load_settings() call.
_PENDING_TOML: dict[str, Mapping[str, Any]] = {}


@dataclass(frozen=True)
class SettingSource:
    """Where one effective setting came from."""

    name: str
    value: Any
    source: str  # "default", "env ORCH_X", or "orch.toml:LINE"


def find_config_file(explicit: Path | None, cwd: Path | None = None) -> Path | None:
    """``--config`` (must exist), else ``ORCH_CONFIG``, else ``./orch.toml`` if present."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"{explicit}: config file not found; check the --config path")
        return explicit
    from_env = os.environ.get("ORCH_CONFIG")
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found (from ORCH_CONFIG)")
        return path
    candidate = (cwd or Path.cwd()) / CONFIG_FILE_NAME
    return candidate if candidate.is_file() else None


_TABLE_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY_LINE = re.compile(r"^\s*([A-Za-z0-9_\-\".' ]+?)\s*=")


def _split_dotted(text: str) -> list[str]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([^.\s]+)', text)
    return [a or b or c for a, b, c in parts]


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each dotted key path of a TOML text to the line that defines it."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE_HEADER.match(line)
        if header:
            table = tuple(_split_dotted(header.group(1)))
            # [agents.claude] also defines `agents` (for errors and `config show`).
            for end in range(1, len(table) + 1):
                lines.setdefault(table[:end], number)
            continue
        key = _KEY_LINE.match(line)
        if key:
            path = (*table, *_split_dotted(key.group(1)))
            lines.setdefault(path, number)
    return lines


def _line_of(lines: Mapping[tuple[str, ...], int], loc: Sequence[object]) -> int | None:
    path = tuple(str(part) for part in loc)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def _read_toml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message already ends with "(at line N, column M)".
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    return data, _key_lines(text)


def _env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(config: Path | None = None, cwd: Path | None = None) -> Settings:
    """Build the effective settings, or raise one clear :class:`ConfigError`."""
    path = find_config_file(config, cwd)
    data, lines = _read_toml(path) if path else ({}, {})
    _PENDING_TOML["data"] = data
    try:
        settings = Settings()
    except ValidationError as exc:
        raise _config_error(exc, path, lines) from None
    finally:
        _PENDING_TOML.pop("data", None)
    if not settings.data_dir.is_absolute():
        # A relative data_dir lives next to orch.toml (or in the working directory).
        base = path.parent if path is not None else (cwd or Path.cwd())
        settings = settings.model_copy(update={"data_dir": (base / settings.data_dir).resolve()})
    return settings


def _config_error(
    exc: ValidationError, path: Path | None, lines: Mapping[tuple[str, ...], int]
) -> ConfigError:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    # Drop pydantic's union-branch markers ("list[str]", "function-after[...]") from loc.
    loc = [part for part in loc if "[" not in part]
    key = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        message = f"unknown key '{loc[-1] if loc else key}'"
        if len(loc) > 1:
            message += f" in [{'.'.join(loc[:-1])}]"
    else:
        message = f"{key}: {error['msg']}"
    top = loc[0] if loc else ""
    if top and _env_name(top) in os.environ:
        return ConfigError(f"{_env_name(top)}: {message}")
    if path is not None:
        line = _line_of(lines, loc)
        where = f"{path}:{line}" if line else str(path)
        return ConfigError(f"{where}: {message}")
    return ConfigError(message)


def describe_settings(settings: Settings, config: Path | None = None) -> list[SettingSource]:
    """Each top-level setting with its effective value and where it came from."""
    path = find_config_file(config)
    data, lines = _read_toml(path) if path else ({}, {})
    described: list[SettingSource] = []
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            value = value.model_dump()
        elif isinstance(value, dict):
            value = {
                k: v.model_dump(exclude_defaults=True) if isinstance(v, BaseModel) else v
                for k, v in value.items()
            }
        elif isinstance(value, Path):
            value = str(value)
        if _env_name(name) in os.environ:
            source = f"env {_env_name(name)}"
        elif name in data and path is not None:
            source = f"{path}:{lines.get((name,), '?')}"
        else:
            source = "default"
        described.append(SettingSource(name, value, source))
    return described
