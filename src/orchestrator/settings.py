"""One settings object: ``ORCH_*`` variables over ``orch.toml`` over defaults.

Every kill-switch and limit of the product lives on :class:`Settings`, with a comment
saying what it guards. :func:`load_settings` finds ``orch.toml`` (``--config`` or the
current directory), validates it, and turns any mistake into one :class:`ConfigError`
line naming the file, the key and the line. :func:`describe_settings` tells where each
effective value came from, for ``orch config show``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from orchestrator.errors import ConfigError
from orchestrator.job_env import check_passthrough
from orchestrator.kernel.decisions import Limits
from orchestrator.kernel.gates import GATES
from orchestrator.kernel.stages import JOB_STAGES, STAGE_TRANSITIONS, Pipeline
from orchestrator.procs.kill import KILL_GRACE_S
from orchestrator.procs.native import Launcher
from orchestrator.redact import MASK, redact_value
from orchestrator.redact import secret_values as find_secret_values

# Words a shell would treat as operators: in a hook given as one string they mean the
# author expected a shell.
SHELL_OPERATORS: Final = frozenset({"&&", "||", "|", ";", ">", ">>", "<", "&"})


def _bare_words(command: str) -> list[str]:
    """The words of ``command`` as a shell splits them, leaving out every word with a
    quoted or escaped character in it: a quoted ``'|'`` (``tr '|' ,``) or an escaped
    ``\\;`` (``find -exec``) is meant as an argument, a bare ``&&`` as an operator."""
    words: list[str] = []
    word: list[str] = []
    quote: str | None = None
    quoted = in_word = False
    chars = iter(command)
    for char in chars:
        if quote is not None:
            if char == quote:
                quote = None
            else:
                word.append(next(chars, "") if char == "\\" and quote == '"' else char)
        elif char in "'\"":
            quote, quoted, in_word = char, True, True
        elif char == "\\":
            word.append(next(chars, ""))
            quoted = in_word = True
        elif char.isspace():
            if in_word and not quoted:
                words.append("".join(word))
            word, quoted, in_word = [], False, False
        else:
            word.append(char)
            in_word = True
    if in_word and not quoted:
        words.append("".join(word))
    return words


# What tools create and no one means to commit: the commit policy's built-in excludes
# (orchestrator.workspace.commit_policy), here because commit_exclude's check needs them.
# Gitignore syntax: "x/" is a directory named x at any depth, "/x/" only at the top of the
# worktree, "*" any characters but "/".
DEFAULT_COMMIT_EXCLUDE: Final[tuple[str, ...]] = (
    # virtualenvs (any other one is found by its pyvenv.cfg)
    ".venv/",
    "/venv/",
    "/env/",
    # JavaScript dependencies
    "node_modules/",
    # caches
    "__pycache__/",
    ".pytest_cache/",
    ".mypy_cache/",
    ".ruff_cache/",
    ".hypothesis/",
    ".tox/",
    ".nox/",
    # secrets
    ".env",
    ".env.*",
    # coverage output
    ".coverage",
    ".coverage.*",
    "htmlcov/",
    "coverage.xml",
    # build output
    "build/",
    "dist/",
    "*.egg-info/",
)

__all__ = [
    "DEFAULT_COMMIT_EXCLUDE",
    "AgentConfig",
    "PlaneProjectConfig",
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
# Settings whose values `orch config show` masks.
SECRET_SETTINGS = frozenset(
    {
        "admin_token",
        "telegram_bot_token",
        "telegram_webhook_secret",
        "forge_token",
        "gitea_webhook_secret",
        "github_webhook_secret",
        "plane_webhook_secret",
        "plane_api_key",
        "github_token",
    }
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentConfig(_Strict):
    """An agent: which adapter drives it, its command, and what to tell it.

    ``command`` is an argument list (or one string, split like a shell would, never run
    by a shell). Placeholders: ``{prompt}``, ``{prompt_file}``, ``{stage}``,
    ``{work_item}``, ``{worktree}``, ``{model}``, ``{effort}``, ``{python}``,
    ``{result_file}``. See docs/agents.md.
    """

    # How the agent is started and its output read: "command" (any CLI: exit code, cost
    # from an optional result file), "claude-code" (stream-json events, result parsed),
    # "codex" (`codex exec --json`, token usage).
    adapter: Literal["command", "claude-code", "codex"] = "command"
    # command: the whole argument list. claude-code / codex: the program and any leading
    # arguments; empty = "claude" / "codex" from PATH.
    command: list[str] | str = Field(default_factory=list, validate_default=True)
    # Model the CLI is asked for ({model}; claude-code --model); "" = the CLI's default.
    model: str = ""
    # Reasoning effort ({effort}; claude-code --effort, codex model_reasoning_effort).
    # "" = the CLI's default.
    effort: str = ""
    # Seconds before the agent's process group is killed; 0 = use agent_timeout_s.
    timeout_s: float = Field(default=0, ge=0)
    # Dollars one run may spend; 0 = no limit. Past it the run is tree-killed.
    budget_usd: float = Field(default=0, ge=0)
    # claude-code: --max-turns; 0 = the CLI's default.
    max_turns: int = Field(default=0, ge=0)
    # claude-code: --permission-mode (default acceptEdits); codex: --sandbox (default
    # workspace-write).
    permission_mode: str = ""
    # claude-code: --allowedTools; empty = Read, Write, Edit, Bash.
    allowed_tools: list[str] = Field(default_factory=list)
    # claude-code / codex: how the prompt is passed: on stdin, as an argument, or as an
    # argument naming the prompt file.
    prompt_via: Literal["stdin", "arg", "file"] = "stdin"
    # claude-code / codex: arguments appended to the command line.
    args: list[str] = Field(default_factory=list)
    # Prices, for agents that report tokens but no cost (codex): dollars per million.
    usd_per_mtok_input: float = Field(default=0, ge=0)
    usd_per_mtok_output: float = Field(default=0, ge=0)
    # codex: the price of cached input tokens (the part of the input the provider read
    # from its prompt cache, e.g. a tenth of the input price for OpenAI's GPT-5 models);
    # unset = priced as input.
    usd_per_mtok_cached_input: float | None = Field(default=None, ge=0)
    # Added to the run's environment as written (see agent_env_passthrough for what it
    # gets from orch's own environment).
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("command")
    @classmethod
    def _command_given(cls, value: list[str] | str, info: ValidationInfo) -> list[str] | str:
        if info.data.get("adapter", "command") == "command" and not value:
            raise ValueError(
                "required for adapter 'command' (any CLI); or set adapter = 'claude-code' "
                "or 'codex'"
            )
        _refuse_prompt_in_code(value)
        return value

    @field_validator("args")
    @classmethod
    def _args_safe(cls, value: list[str]) -> list[str]:
        _refuse_prompt_in_code(value)
        return value


# Programs that run the text after an inline-code flag (sh -c, python -c, node -e) as
# code: the prompt (issue text, feedback) must never become part of that code.
_SHELLS = re.compile(r"^(?:sh|bash|dash|zsh|ksh|mksh|ash|fish|busybox)$")
_SHELL_CODE_FLAG = re.compile(r"^-[A-Za-z]*c[A-Za-z]*$")  # -c, -lc, -ec
_INTERPRETERS = re.compile(
    r"^(?:python[0-9.]*|pypy[0-9.]*|node|nodejs|deno|bun|perl|ruby|php|lua[0-9.]*|pwsh)$"
)
_INTERPRETER_CODE_FLAG = re.compile(r"^(?:-c|-e|-E|-p|-r|--eval|--print|-Command|eval)$")


def _refuse_prompt_in_code(command: list[str] | str) -> None:
    """ValueError when ``{prompt}`` would be spliced into code: after ``sh -c``,
    ``python -c``, ``node -e`` and the like (also behind ``env``, ``timeout``, ...)."""
    if isinstance(command, str):
        try:
            parts = shlex.split(command)
        except ValueError:
            return  # reported when the command is used
    else:
        parts = list(command)
    code_flag: re.Pattern[str] | None = None
    inline_code = False
    for part in parts:
        if "{prompt}" in part and inline_code:
            raise ValueError(
                "{prompt} inside a shell or interpreter command (sh -c, python -c, ...) "
                "would run the task's text as code; pass the prompt by file "
                "({prompt_file}, $ORCH_PROMPT_FILE) or on stdin instead"
            )
        name = Path(part).name
        if _SHELLS.match(name):
            code_flag = _SHELL_CODE_FLAG
        elif _INTERPRETERS.match(name):
            code_flag = _INTERPRETER_CODE_FLAG
        elif code_flag is not None and code_flag.match(part):
            inline_code = True


class StageConfig(_Strict):
    """Who works on a stage and which gates judge it."""

    # The agent: a name under [agents], a built-in ("claude", "scripted") or a runner
    # ("runner:tests", "runner:staging", "runner:deploy"); None = the stage's default.
    agent: str | None = None
    # A Jinja2 template file for the prompt, relative to the repository; None = built-in.
    prompt: str | None = None
    # Gate names from orchestrator.kernel.gates.GATES; None = the stage's defaults.
    gates: list[str] | None = None
    # Override the agent's settings for this stage (None = the agent's own).
    model: str | None = None
    effort: str | None = None
    timeout_s: float | None = Field(default=None, ge=0)
    budget_usd: float | None = Field(default=None, ge=0)
    max_turns: int | None = Field(default=None, ge=0)

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


_FORGE_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


def _check_forge_repo(value: str | None) -> str | None:
    if value and not _FORGE_REPO.match(value):
        raise ValueError(f"'{value}' is not 'owner/name' (e.g. acme/webshop)")
    return value


class RepoConfig(_Strict):
    """Per-repository overrides, under ``[repos.<name>]``."""

    # Path of the repository; the table name matches the directory name when omitted.
    path: str | None = None
    # Branch that task branches start from and merge into; None = detect (HEAD).
    default_branch: str | None = None
    # Stages this repository's pipeline leaves out.
    skip: list[str] = Field(default_factory=list)
    # This repository's stage settings, [repos.<name>.stages.<stage>], over the global ones.
    stages: dict[str, StageConfig] = Field(default_factory=dict)
    # Command the tests run with in the worktree (argument list or one string).
    test_command: list[str] | str | None = None
    # Run first in the worktree by the test and staging runners, e.g. to create a venv
    # (argument list or one string); its failure is a tool error (DEFER), not a verdict.
    setup_command: list[str] | str | None = None
    # Seconds the setup and test commands may take together; None = test_runner_timeout_s.
    test_timeout_s: float | None = Field(default=None, gt=0)
    # JUnit XML the test command writes, relative to the worktree, when it is not pytest
    # (for pytest the runner asks for one itself): counts and failing tests in the report.
    junit_xml: str | None = None
    # Base URL of a running instance the test runner smoke-checks (read-only GETs) after
    # the tests pass; None = no smoke.
    smoke_base_url: str | None = None
    # Paths the smoke (and the staging runner) GETs; each must answer 2xx.
    smoke_endpoints: list[str] = Field(default_factory=lambda: ["/health", "/status", "/queue"])
    # Named lock: test runs naming the same resource (a shared database, a port) run one
    # at a time, across tasks and processes (a file lock under data_dir/locks).
    serial_gate: str | None = None
    # Coverage ratchet: measure line coverage (coverage.py, pytest commands only); below
    # the repository's baseline the tests FAIL; a merged success raises the baseline.
    coverage_ratchet: bool = False
    # What coverage measures (coverage.py --source, relative to the worktree); empty = all.
    coverage_source: list[str] = Field(default_factory=list)
    # deploy-staging: command that starts the service from the task worktree; it gets a
    # free local port as $PORT and in the {port} placeholder. None = the stage is skipped.
    staging_command: list[str] | str | None = None
    # deploy-staging: path polled until the started service answers 2xx.
    staging_health_path: str = "/health"
    # deploy-staging: seconds the service has to become healthy.
    staging_ready_timeout_s: float = Field(default=60.0, gt=0)
    # Run in the repository after the merge (env ORCH_DEPLOY_COMMIT); None = the merge
    # itself is the deploy.
    deploy_command: list[str] | str | None = None
    # Prints the commit currently deployed; lets recovery tell whether a deploy that was
    # interrupted actually happened. Without it such a deploy fails closed for a human.
    deploy_check_command: list[str] | str | None = None
    # Post-deploy monitor: after the deploy, this URL is polled (GET, 2xx = healthy) for
    # post_deploy_window_s; post_deploy_failures failed checks in a row roll the deploy
    # back once (revert on the default branch, redeploy, back to development). None = no
    # monitor: the task is done when the deploy command succeeds.
    post_deploy_health_url: str | None = None
    # Seconds the monitor watches a deploy before the task is done.
    post_deploy_window_s: float = Field(default=30.0, gt=0)
    # Seconds between two health checks (each check times out after as long).
    post_deploy_interval_s: float = Field(default=2.0, gt=0)
    # Failed checks in a row that make a deploy unhealthy (one blip is not a rollback).
    post_deploy_failures: int = Field(default=3, ge=1)
    # This repository's task_budget_usd; None = the global one.
    task_budget_usd: float | None = Field(default=None, ge=0)
    # This repository's forge ("local", "gitea", "github"); None = the global `forge`.
    forge: Literal["local", "gitea", "github"] | None = None
    # "owner/name" of this repository on its forge; None = the global `forge_repo`. Also
    # how a webhook's repository is matched to this one.
    forge_repo: str | None = None
    # How this repository's task branches are merged; None = the global `merge_method`.
    merge_method: Literal["merge", "squash", "rebase"] | None = None
    # The git remote through which this repository's task branches and default branch
    # travel between hosts that share no disk: a remote of the clone ("origin") or a URL.
    # Every host needs a clone at the same path (docs/scaling.md). "" = one host only.
    remote: str = ""

    # --- workspace and commit policy (docs/workspace.md) --------------------------------
    # Patterns (gitignore syntax) of paths the engine never commits, on top of the
    # built-in list (virtualenvs, node_modules, caches, .env*, coverage and build
    # output); "!<pattern>" drops that pattern from the built-in list.
    commit_exclude: list[str] = Field(default_factory=list)
    # Run once in a new worktree, before its first job (e.g. create the venv); argument
    # list or one string split like a shell would, never run by one (for "&&", write
    # ["sh", "-c", "..."]). Its failure fails the task for a person, never for the agent.
    after_create: list[str] | str | None = None
    # Run in the worktree before every agent or runner job; failure as after_create.
    before_run: list[str] | str | None = None
    # Seconds one hook may run before its process group is killed (a failure).
    hook_timeout_s: float = Field(default=600.0, gt=0)
    # Patterns (relative to the repository) of ignored files copied from the main
    # checkout into a new worktree, e.g. [".env"]; never committed.
    worktree_include: list[str] = Field(default_factory=list)

    @field_validator("skip")
    @classmethod
    def _skippable(cls, value: list[str]) -> list[str]:
        Pipeline(frozenset(value))  # raises ValueError naming the bad stage
        return value

    _stages_known = field_validator("stages")(_check_stage_keys)
    _forge_repo_shape = field_validator("forge_repo")(_check_forge_repo)

    @field_validator("after_create", "before_run")
    @classmethod
    def _no_shell(cls, value: list[str] | str | None) -> list[str] | str | None:
        """A hook given as one string is split like a shell would, never run by one: an
        ``&&`` in it would reach the command as an argument."""
        if not isinstance(value, str):
            return value
        try:
            shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} cannot be split into arguments: {exc}") from None
        operators = [word for word in _bare_words(value) if word in SHELL_OPERATORS]
        if operators:
            raise ValueError(
                f"{value!r} is not run by a shell, so {operators[0]!r} would reach the "
                f'command as an argument; write ["sh", "-c", {json.dumps(value)}]'
            )
        return value

    @field_validator("commit_exclude", "worktree_include")
    @classmethod
    def _patterns(cls, value: list[str], info: ValidationInfo) -> list[str]:
        for pattern in value:
            if not pattern.strip() or any(ch in pattern for ch in "\n\r\0"):
                raise ValueError(f"{pattern!r} is not a pattern: one non-empty line each")
            if info.field_name == "worktree_include" and (
                pattern.startswith("/") or ".." in pattern.split("/")
            ):
                raise ValueError(f"{pattern!r} must stay inside the repository (no / or ..)")
            dropped = pattern[1:]
            excluding = info.field_name == "commit_exclude"
            if excluding and pattern.startswith("!") and dropped not in DEFAULT_COMMIT_EXCLUDE:
                raise ValueError(
                    f"{pattern!r} drops a built-in pattern, but {dropped!r} is not one; "
                    f"built-in: {', '.join(DEFAULT_COMMIT_EXCLUDE)}"
                )
        return value


# A repository without overrides (a frozen model: one instance serves them all).
NO_REPO_OVERRIDES: Final = RepoConfig()


class PlaneProjectConfig(_Strict):
    """A Plane project whose work items become tasks, under ``[plane_projects.<project id>]``."""

    # Path of the repository the project's tasks work in.
    repo: str
    # The project's identifier, the "PROJ" of PROJ-42; "" = read from Plane's API.
    identifier: str = ""


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
    # Directory for the SQLite database, worktrees and run logs; a relative path is
    # relative to orch.toml's directory (without orch.toml: the working directory).
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
    # Seconds between the SIGTERM to a stopped job (timeout, budget, cancel) and the
    # SIGKILL of whatever of it is left; the engine never waits it out.
    kill_grace_s: float = Field(default=KILL_GRACE_S, gt=0, le=600)
    # The per-job supervisor: native (a small C program, built with the host's C
    # compiler on first use and cached; the Python one, said in one log line, where it
    # cannot be built) or python (python -m orchestrator.procs.launcher, about 6 MB more
    # memory per running job). Both write the same files: a job is adopted either way.
    launcher: Launcher = "native"
    # Dollars a task may spend on agent runs since it was created or last retried by a
    # person; past it no new agent job starts and the task fails for a human. 0 = no limit.
    task_budget_usd: float = Field(default=0.0, ge=0)
    # Reaper tier 2: a job whose exit code is recorded this long but is not finalized.
    reaper_finalize_grace_s: float = Field(default=300.0, ge=0)
    # Reaper tier 3: a job running longer than this is killed whatever its lease says.
    reaper_max_running_s: float = Field(default=7200.0, gt=0)
    # Hosts that share no disk (a repository `remote`): the jobs of a host no instance of
    # which has beaten for this long are retried elsewhere (its agents are gone with it,
    # or will be wasted if it comes back). PostgreSQL's leader does it (the rescuer).
    host_takeover_s: float = Field(default=120.0, ge=10)
    # Running jobs at once on this instance, over all repositories: each `orch serve`
    # sharing a PostgreSQL database has its own (a host's capacity).
    max_running_jobs: int = Field(default=4, ge=1)
    # Running jobs at once per repository, counted over every instance of the database.
    max_running_jobs_per_repo: int = Field(default=2, ge=1)
    # Repository affinity: the repositories (directory names or paths) whose jobs this
    # instance runs; empty = every repository. Instances sharing a PostgreSQL database
    # may split the repositories between them (docs/scaling.md).
    instance_repos: list[str] = Field(default_factory=list)
    # Threads that run side-effectful crossings (merge, deploy, post-deploy health window,
    # rollback) beside the engine's loop, which keeps dispatching and enforcing timeouts;
    # more crossings at once wait their turn.
    crossing_workers: int = Field(default=4, ge=1, le=64)
    # How long stopping the engine waits for crossings in flight; one still going then is
    # left to the next engine (its lease expires, the effect journal finds what it did).
    crossing_shutdown_wait_s: float = Field(default=30.0, ge=0)
    # Size cap of one run's log file; output beyond it is dropped with a marker.
    log_max_bytes: int = Field(default=5_000_000, ge=1024)
    # The engine's commit after a job: over this many files or bytes it commits nothing
    # and the stage fails, naming the biggest paths (docs/workspace.md).
    commit_max_files: int = Field(default=2_000, ge=1)
    commit_max_bytes: int = Field(default=20_000_000, ge=1)

    # --- worktree lifecycle (docs/architecture.md, "Worktree lifecycle") -------------------
    # Seconds the worktree of a done or cancelled task is kept; 0 = removed as it ends.
    # Its branch keeps every commit; uncommitted changes go with the worktree.
    worktree_retention_done_s: float = Field(default=0.0, ge=0)
    # Seconds the worktree of a failed task is kept for a person to look at (7 days);
    # `orch task retry` recreates it from the branch when it is gone.
    worktree_retention_failed_s: float = Field(default=604800.0, ge=0)
    # Also delete a done task's branch orch/<ID> when its worktree goes, once the branch
    # is merged into the default branch; with a repository's remote, there too. Off: the
    # branch is kept.
    delete_branch_on_done: bool = False

    # --- kill-switches and their scopes (empty list = every repository) -------------------
    # Deterministic test runner on the testing stage instead of the tester agent.
    test_runner_enabled: bool = True
    # Repositories (directory names or paths) the test runner is on for; empty = all.
    test_runner_repos: list[str] = Field(default_factory=list)
    # Wall-clock limit of the test runner's setup + test commands (a repo may set its own).
    test_runner_timeout_s: float = Field(default=1800.0, gt=0)
    # Times a DEFER of the test runner (a tool error, not a verdict) is retried, with
    # backoff, before the hand-off below (or, without it, before max_attempts fails it).
    test_runner_defer_retries: int = Field(default=2, ge=0)
    # Hybrid mode: a DEFER that outlasts its retries is explained by an LLM tester agent,
    # which never decides: the report keeps the runner's DEFER and the gate fails it.
    test_runner_hybrid: bool = True
    # The agent that explains a persistent DEFER in hybrid mode; empty = the repository's
    # development agent (so a task needs no agent beyond its stages'). `orch task create`
    # checks it can start; one that cannot at run time sends the task to a person.
    test_runner_hybrid_agent: str = ""
    # Durable transition lease + compare-and-swap stage writes.
    transition_lease_enabled: bool = True
    # Repositories (directory names or paths) the transition lease is on for; empty = all.
    transition_lease_repos: list[str] = Field(default_factory=list)

    # --- presentation ----------------------------------------------------------------------
    # Live card behaviour: edit in place, or bump (re-create at the bottom). Not 'bump' = edit.
    tracker_mode: Literal["edit", "bump"] = "edit"
    # Stage labels on cards and in the CLI: en or ru.
    language: Literal["en", "ru"] = "en"

    # Name of this orchestrator instance in leases and heartbeats; "" = the host name.
    instance_name: str = ""
    # Legacy: a bearer token that authenticates as an admin (named "admin_token"); prefer
    # `orch token create NAME --role admin`. "" = none.
    admin_token: str = ""

    # --- access control (docs/security.md, docs/decisions/0009) --------------------------
    # Reads (GET /status, /queue, /tasks...) without a token; writes always need one, and
    # /health is always open.
    public_read: bool = False
    # Host names (the Host header, without port) the API answers; others get 400 (DNS
    # rebinding). Add the public name your reverse proxy forwards; "*" = any (not advised).
    allowed_hosts: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1", "::1"])
    # POST /tasks and webhook intake may use any git repository on the host, not only
    # those listed as [repos.<name>] with a path.
    allow_any_repo: bool = False
    # Telegram users whose card button presses act: numeric ids or @usernames. Empty: any
    # member of telegram_chat_id (a private group), and no one on a public @channel.
    telegram_allowed_users: list[str] = Field(default_factory=list)

    # --- integrations: the Telegram live card and the outbox (docs/integrations.md) ----
    # Bot token from @BotFather; with telegram_chat_id set, cards and alerts go to Telegram.
    telegram_bot_token: str = ""
    # Chat the cards and alerts go to: a numeric id (-100... for groups) or @channelname.
    telegram_chat_id: str = ""
    # Bot API base URL; point it at a local server (orch dev fake-telegram) for dry runs.
    telegram_api_base_url: str = "https://api.telegram.org"
    # secret_token given to setWebhook; POST /webhooks/telegram checks it in the
    # X-Telegram-Bot-Api-Secret-Token header. "" = the webhook endpoint is disabled.
    telegram_webhook_secret: str = ""
    # Base delay before an outbox message is retried; doubles with each attempt (capped).
    # 0 in tests. A 429's retry_after always wins.
    outbox_backoff_s: float = Field(default=2.0, ge=0)
    # Attempts of one outbox message before it is marked failed (429s do not count).
    outbox_max_attempts: int = Field(default=10, ge=1)

    # --- server ----------------------------------------------------------------------------
    # Address and port `orch serve` listens on (`orch serve --host/--port` override them).
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=1, le=65535)

    # --- integrations: forges, trackers, webhooks in (docs/integrations.md) ----------------
    # Where pull requests live and how task branches merge: "local" (the repository on
    # disk, merged with git), "gitea" or "github". A repository may choose its own.
    forge: Literal["local", "gitea", "github"] = "local"
    # The forge's API root: Gitea "https://gitea.example.com/api/v1"; GitHub "" (=
    # https://api.github.com) or "https://HOST/api/v3" for GitHub Enterprise.
    forge_base_url: str = ""
    # The forge's API token (Gitea: an access token; GitHub: a PAT or app token). Prefer
    # the ORCH_FORGE_TOKEN variable to writing it in orch.toml.
    forge_token: str = ""
    # "owner/name" of the repository on the forge; a repository may set its own.
    forge_repo: str = ""
    # The git remote task branches are pushed to before a pull request is opened on a
    # remote forge; "" = do not push (something else pushes them).
    forge_remote: str = "origin"
    # How task branches are merged: a merge commit, one squashed commit, or rebased
    # commits. A repository may choose its own.
    merge_method: Literal["merge", "squash", "rebase"] = "merge"
    # HMAC-SHA256 secrets of the webhook endpoints (POST /webhooks/gitea, /github,
    # /plane), as entered in each service's webhook form. "" = that endpoint refuses all.
    gitea_webhook_secret: str = ""
    github_webhook_secret: str = ""
    plane_webhook_secret: str = ""
    # Largest webhook body accepted, in bytes; a larger one gets 413.
    webhook_max_body_bytes: int = Field(default=1_000_000, ge=1024)
    # Largest body of any other request (POST /tasks, reject, ...; docs/security.md), in bytes: a
    # larger Content-Length gets 413 before the body is read, a chunked body as it passes.
    api_max_body_bytes: int = Field(default=262_144, ge=1024)
    # Largest request line plus headers uvicorn buffers, in bytes (h11's
    # max_incomplete_event_size); a larger head gets 431/400 and the connection closes.
    http_max_header_bytes: int = Field(default=65_536, ge=4096)
    # Seconds an idle keep-alive connection is held open between requests.
    http_keep_alive_s: int = Field(default=5, ge=1)
    # Connections (and requests) served at once; more are answered 503 at once.
    http_limit_concurrency: int = Field(default=200, ge=1)
    # On SIGTERM, seconds to let requests in flight finish; then connections still open
    # (a client that stalled mid-request) are closed and the server stops.
    http_graceful_shutdown_s: int = Field(default=10, ge=1)
    # Live streams (GET /events, GET /tasks/{id}/logs?follow=1) open at once; more are
    # answered 429, so streams never take every connection from the API and webhooks.
    http_max_streams: int = Field(default=32, ge=1)
    # Where work items come from and where stage outcomes are written back: "local" (CLI
    # and API only), "plane" or "github" (issues).
    tracker: Literal["local", "plane", "github"] = "local"
    # Tracker state per stage, e.g. {development = "In Progress", done = "Done"} (Plane
    # state names; GitHub "open" / "closed"). Stages left out use the adapter's defaults.
    tracker_states: dict[str, str] = Field(default_factory=dict)
    # Plane: API root (self-hosted: "https://plane.example.com"), API key (X-API-Key),
    # workspace slug, and the projects whose work items become tasks.
    plane_base_url: str = "https://api.plane.so"
    plane_api_key: str = ""
    plane_workspace: str = ""
    plane_projects: dict[str, PlaneProjectConfig] = Field(default_factory=dict)
    # GitHub issues as tracker: API root and token ("" = forge_token); an issue labeled
    # with github_intake_label becomes task <github_work_item_prefix>-<number>.
    github_api_url: str = "https://api.github.com"
    github_token: str = ""
    github_intake_label: str = "orch"
    github_work_item_prefix: str = "GH"

    # --- agents' containment (docs/security.md) ---------------------------------------------
    # Variables of orch's own environment a job (agent or runner) also gets, by name or
    # `*` pattern, e.g. ["ANTHROPIC_API_KEY", "*_PROXY", "*_proxy"]. Besides these a job
    # gets only PATH, HOME, USER, LOGNAME, SHELL, TERM, TMPDIR, TZ, LANG, LANGUAGE, LC_*,
    # its agent's `env` and its ORCH_* task variables; never an ORCH_* setting, never a
    # value holding one of orch's secrets.
    agent_env_passthrough: list[str] = Field(default_factory=list)

    @field_validator("agent_env_passthrough")
    @classmethod
    def _passthrough_names(cls, value: list[str]) -> list[str]:
        return [check_passthrough(pattern) for pattern in value]

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
    _forge_repo_shape = field_validator("forge_repo")(_check_forge_repo)

    @field_validator("tracker_states")
    @classmethod
    def _tracker_state_stages(cls, value: dict[str, str]) -> dict[str, str]:
        for stage in value:
            if stage not in STAGE_TRANSITIONS:
                raise ValueError(
                    f"'{stage}' is not a stage; stages: {', '.join(STAGE_TRANSITIONS)}"
                )
        return value

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
    def secret_values(self) -> frozenset[str]:
        """orch's own secrets (every secret-looking setting, passwords in URLs, the
        database URL), which no job's environment may hold. Agents' own ``env`` is
        theirs, not orch's, and is left out."""
        dumped = self.model_dump(mode="json", exclude={"agents"})
        found = set(find_secret_values(dumped))
        found |= find_secret_values({"database_url": self.effective_database_url})
        if self.database_url:
            found.add(self.database_url)
        return frozenset(found)

    @property
    def log_mask_values(self) -> frozenset[str]:
        """What shown logs mask: orch's own secrets and the secret-looking ``env`` values
        of the agents (an agent that prints its environment must not show its API key to
        whoever reads its log)."""
        agents = self.model_dump(mode="json", include={"agents"})
        return self.secret_values | find_secret_values(agents)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_attempts, self.max_rollbacks, self.retry_backoff_s)

    def repo_config(self, repo_path: Path) -> RepoConfig:
        """The overrides of the repository at ``repo_path`` (empty when none match)."""
        if not self.repos:
            return NO_REPO_OVERRIDES  # asked several times a job: no path resolved
        resolved = repo_path.resolve()
        for name, config in self.repos.items():
            if config.path is not None:
                if Path(config.path).expanduser().resolve() == resolved:
                    return config
            elif name == resolved.name:
                return config
        return NO_REPO_OVERRIDES

    def task_budget_for(self, repo_path: Path) -> float:
        """Dollars a task in this repository may spend; 0 = no limit."""
        override = self.repo_config(repo_path).task_budget_usd
        return self.task_budget_usd if override is None else override

    @property
    def telegram_enabled(self) -> bool:
        """Whether cards and alerts go to Telegram (a bot token and a chat are set)."""
        return bool(self.telegram_bot_token and self.telegram_chat_id)

    def pipeline_for(self, repo_path: Path) -> Pipeline:
        return Pipeline(frozenset(self.skip) | frozenset(self.repo_config(repo_path).skip))

    def hybrid_agent(self, repo_path: Path) -> str:
        """The agent that explains a persistent test DEFER for this repository."""
        development = self.stage_config(repo_path, "development").agent
        return self.test_runner_hybrid_agent or development or "claude"

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
    # The comment above the field (orchestrator.field_docs); not part of the identity.
    description: str = field(default="", compare=False)


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
    from orchestrator.field_docs import field_docs  # noqa: PLC0415 - reads source text

    descriptions = {doc.name: doc.description for doc in field_docs(Settings)}
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
        if name in SECRET_SETTINGS and value:
            value = MASK  # `orch config show` must not print a secret
        value = redact_value(value, name)  # nor one in agents' env or a database URL
        if _env_name(name) in os.environ:
            source = f"env {_env_name(name)}"
        elif name in data and path is not None:
            source = f"{path}:{lines.get((name,), '?')}"
        else:
            source = "default"
        described.append(SettingSource(name, value, source, descriptions.get(name, "")))
    return described
