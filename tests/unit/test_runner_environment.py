"""What the engine tells a runner: settings resolved into ``ORCH_RUNNER_CONFIG``."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.runners.config import RUNNER_CONFIG_ENV, RunnerConfig
from orchestrator.runners.environment import handoff_attempt, runner_config, runner_environment
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Job, Task


def _settings(tmp_path: Path, text: str) -> Settings:
    config = tmp_path / "orch.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n' + text)
    return load_settings(config)


def _task(tmp_path: Path) -> Task:
    repo = tmp_path / "svc"
    repo.mkdir(exist_ok=True)
    return Task(
        id=1,
        work_item="S-1",
        repository=str(repo),
        title="t",
        description="",
        stage="testing",
        version=1,
        attempt=1,
        rollback_count=0,
        failed_reason=None,
        branch="orch/S-1",
        base_branch="main",
        base_sha="0" * 40,
        worktree=str(tmp_path / "wt"),
        created_at=0.0,
        updated_at=0.0,
    )


def _job(attempt: int, stage: str = "testing") -> Job:
    return Job(
        id=7,
        task_id=1,
        stage=stage,
        kind="runner",
        agent="runner:tests",
        status="running",
        attempt=attempt,
        feedback=None,
        error=None,
        pid=None,
        owner_boot_id=None,
        pid_start=None,
        start_sha=None,
        not_before=0.0,
        enqueued_at=0.0,
        started_at=None,
        finished_at=None,
        updated_at=0.0,
    )


def test_the_hand_off_comes_after_the_retries_but_never_after_max_attempts(
    tmp_path: Path,
) -> None:
    assert handoff_attempt(_settings(tmp_path, "")) == 3  # 2 retries, max_attempts 3
    assert handoff_attempt(_settings(tmp_path, "test_runner_defer_retries = 0\n")) == 1
    assert handoff_attempt(_settings(tmp_path, "test_runner_defer_retries = 9\n")) == 3
    assert handoff_attempt(_settings(tmp_path, "test_runner_hybrid = false\n")) is None


def test_repository_settings_reach_the_runner(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        "agent_timeout_s = 100\n"
        "[repos.svc]\n"
        "setup_command = \"sh -c 'python3 -m venv .venv'\"\n"
        'test_command = ["make", "test"]\n'
        "test_timeout_s = 500\n"
        'serial_gate = "db"\n'
        'smoke_base_url = "http://127.0.0.1:9"\n'
        "coverage_ratchet = true\n",
    )
    config = runner_config(settings, _task(tmp_path), _job(1), tmp_path / "logs")
    assert config.setup_command == ("sh", "-c", "python3 -m venv .venv")
    assert config.test_command == ("make", "test")
    assert config.timeout_s == 95.0  # clamped to the job's budget (95% of agent_timeout_s)
    assert config.serial_gate == "db"
    assert config.lock_dir == str((tmp_path / "data" / "locks").resolve())
    assert config.smoke_endpoints == ("/health", "/status", "/queue")
    assert config.coverage_ratchet
    assert config.coverage_file is not None
    assert config.coverage_file.startswith(str((tmp_path / "data" / "coverage").resolve()))
    assert config.handoff_attempt == 3
    assert config.explainer_argv == ()  # attempt 1: nobody is asked yet


def test_the_hand_off_attempt_carries_the_explainer(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        'test_runner_hybrid_agent = "helper"\n'
        '[agents.helper]\ncommand = ["helper-cli", "--explain"]\nenv = { K = "V" }\n',
    )
    config = runner_config(settings, _task(tmp_path), _job(3), tmp_path / "logs")
    assert config.explainer_name == "helper"
    assert config.explainer_argv[0] == "helper-cli"
    assert config.explainer_env["K"] == "V"
    assert config.explainer_stdin is not None
    assert "You do NOT decide" in config.explainer_stdin
    assert config.explainer_error is None


def test_a_bad_configuration_reaches_the_runner_as_a_reason_not_an_exception(
    tmp_path: Path,
) -> None:
    unknown = _settings(tmp_path, 'test_runner_hybrid_agent = "nobody"\n')
    config = runner_config(unknown, _task(tmp_path), _job(3), tmp_path / "logs")
    assert config.explainer_error is not None
    assert "nobody" in config.explainer_error
    unsplittable = _settings(tmp_path, '[repos.svc]\ntest_command = "pytest \'unclosed"\n')
    env = runner_environment(unsplittable, _task(tmp_path), _job(1), tmp_path / "logs")
    parsed = RunnerConfig.from_json(env[RUNNER_CONFIG_ENV])
    assert parsed.config_error is not None
    assert "quotation" in parsed.config_error
    assert json.loads(env[RUNNER_CONFIG_ENV])["config_error"] == parsed.config_error


def test_the_default_explainer_is_the_repositorys_development_agent(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        '[agents.helper]\ncommand = ["helper-cli"]\n'
        '[repos.svc.stages.development]\nagent = "helper"\n',
    )
    assert settings.test_runner_hybrid_agent == ""
    assert settings.hybrid_agent(tmp_path / "svc") == "helper"
    assert settings.hybrid_agent(tmp_path / "other") == "claude"
    config = runner_config(settings, _task(tmp_path), _job(3), tmp_path / "logs")
    assert config.explainer_name == "helper"
    assert config.explainer_argv[0] == "helper-cli"
    named = _settings(tmp_path, 'test_runner_hybrid_agent = "scripted"\n')
    assert named.hybrid_agent(tmp_path / "svc") == "scripted"
