"""Unit tests of settings: defaults < orch.toml < ORCH_* variables, and clear errors."""

from __future__ import annotations

import os
import re
import shlex
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.errors import ConfigError, UsageError
from orchestrator.kernel.decisions import Limits
from orchestrator.kernel.stages import Pipeline
from orchestrator.settings import (
    Settings,
    SettingSource,
    _bare_words,
    describe_settings,
    find_config_file,
    load_settings,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ORCH_* variable of the developer's shell, and no orch.toml of the checkout."""
    for name in list(os.environ):
        if name.startswith("ORCH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_config(directory: Path, text: str) -> Path:
    path = directory / "orch.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> str:
    write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(cwd=tmp_path)
    return str(caught.value)


def sources(settings: Settings, config: Path | None) -> dict[str, SettingSource]:
    return {s.name: s for s in describe_settings(settings, config)}


# --- layering -----------------------------------------------------------------------------


def test_defaults_without_a_config_file(tmp_path: Path) -> None:
    settings = load_settings(cwd=tmp_path)
    assert settings.max_attempts == 3
    assert settings.max_rollbacks == 2
    assert settings.retry_backoff_s == 5.0
    assert settings.limits == Limits(3, 2, 5.0)
    assert settings.tracker_mode == "edit"
    assert settings.language == "en"
    assert settings.port == 8765
    assert settings.test_runner_enabled is True
    assert settings.test_runner_repos == []
    assert settings.skip == []
    assert settings.data_dir == (tmp_path / ".orch").resolve()
    assert settings.effective_database_url == f"sqlite:///{tmp_path.resolve() / '.orch/orch.db'}"


def test_toml_overrides_defaults(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
        max_attempts = 5
        retry_backoff_s = 0
        language = "ru"
        data_dir = "state"
        database_url = "postgresql+psycopg://orch@db/orch"
        skip = ["deploy-staging"]
        """,
    )
    settings = load_settings(cwd=tmp_path)
    assert settings.limits == Limits(5, 2, 0.0)
    assert settings.language == "ru"
    assert settings.data_dir == (tmp_path / "state").resolve()
    assert settings.effective_database_url == "postgresql+psycopg://orch@db/orch"
    assert settings.skip == ["deploy-staging"]
    assert settings.port == 8765  # untouched keys keep their default


def test_env_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path, "max_attempts = 5\nport = 9000\n")
    monkeypatch.setenv("ORCH_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("ORCH_TEST_RUNNER_REPOS", '["demo", "/srv/other"]')
    monkeypatch.setenv("ORCH_TEST_RUNNER_ENABLED", "false")
    settings = load_settings(cwd=tmp_path)
    assert settings.max_attempts == 7
    assert settings.port == 9000
    assert settings.test_runner_repos == ["demo", "/srv/other"]
    assert settings.test_runner_enabled is False


def test_env_overrides_defaults_without_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_LANGUAGE", "ru")
    assert load_settings(cwd=tmp_path).language == "ru"


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "data"
    write_config(tmp_path, f'data_dir = "{elsewhere.as_posix()}"\n')
    assert load_settings(cwd=tmp_path).data_dir == elsewhere


# --- finding the file ---------------------------------------------------------------------


def test_explicit_config_wins_over_the_current_directory(tmp_path: Path) -> None:
    write_config(tmp_path, "max_attempts = 4\n")
    other = tmp_path / "other"
    other.mkdir()
    explicit = write_config(other, "max_attempts = 9\n")
    assert load_settings(config=explicit, cwd=tmp_path).max_attempts == 9
    assert find_config_file(explicit, tmp_path) == explicit
    assert find_config_file(None, tmp_path) == tmp_path / "orch.toml"


def test_relative_data_dir_lives_next_to_the_config_file(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    explicit = write_config(other, 'data_dir = "state"\n')
    assert load_settings(config=explicit, cwd=tmp_path).data_dir == (other / "state").resolve()


def test_missing_explicit_config_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: config file not found")):
        load_settings(config=missing, cwd=tmp_path)


def test_orch_config_variable_points_at_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "conf"
    other.mkdir()
    monkeypatch.setenv("ORCH_CONFIG", str(write_config(other, "max_attempts = 6\n")))
    assert load_settings(cwd=tmp_path).max_attempts == 6


def test_orch_config_variable_to_a_missing_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match="from ORCH_CONFIG"):
        load_settings(cwd=tmp_path)


def test_no_file_in_the_current_directory_means_defaults(tmp_path: Path) -> None:
    assert find_config_file(None, tmp_path) is None


# --- errors -------------------------------------------------------------------------------


def test_config_error_is_a_usage_error() -> None:
    assert issubclass(ConfigError, UsageError)
    assert ConfigError.exit_code == 2


def test_malformed_toml_names_the_file_and_the_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, 'host = "x"\nport = \nlanguage = "en"\n')
    assert message.startswith(f"{tmp_path / 'orch.toml'}: malformed TOML")
    assert "line 2" in message


def test_unknown_key_names_the_file_the_key_and_the_line(tmp_path: Path) -> None:
    message = config_error(
        tmp_path,
        """
        max_attempts = 3

        [repos.demo.stages.analysis]
        agent = "claude"
        prompt = "prompts/analysis.j2"
        bogus = 1
        """,
    )
    assert (
        message
        == f"{tmp_path / 'orch.toml'}:6: unknown key 'bogus' in [repos.demo.stages.analysis]"
    )


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, 'host = "x"\nmax_atempts = 5\n')
    assert message == f"{tmp_path / 'orch.toml'}:2: unknown key 'max_atempts'"


def test_unknown_key_in_a_dotted_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, 'language = "en"\nrepos.demo.bogus = true\n')
    assert message == f"{tmp_path / 'orch.toml'}:2: unknown key 'bogus' in [repos.demo]"


def test_unknown_key_in_a_later_table_gets_its_own_line(tmp_path: Path) -> None:
    message = config_error(
        tmp_path,
        """
        [repos.demo.stages.analysis]
        agent = "claude"

        [repos.demo.stages.testing]
        agent = "scripted"
        bogus = 2
        """,
    )
    assert (
        message == f"{tmp_path / 'orch.toml'}:6: unknown key 'bogus' in [repos.demo.stages.testing]"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'host = "x"\nmax_attempts = "many"\n',
            ":2: max_attempts: Input should be a valid integer",
        ),
        ("max_attempts = 0\n", ":1: max_attempts: Input should be greater than or equal to 1"),
        ("port = 70000\n", ":1: port: Input should be less than or equal to 65535"),
        ('language = "de"\n', ":1: language: Input should be 'en' or 'ru'"),
        ('test_runner_repos = "demo"\n', ":1: test_runner_repos: Input should be a valid list"),
        ("host = 'x'\n[agents.x]\nmodel = 'm'\n", ":2: agents.x.command: Value error, required"),
        ('[repos.demo]\nskip = ["done"]\n', ":2: repos.demo.skip: Value error, cannot skip"),
        ('[stages.testing]\ngates = ["nope"]\n', ":2: stages.testing.gates: Value error, unknown"),
    ],
)
def test_wrong_values_name_the_file_the_key_and_the_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    message = config_error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'orch.toml'}{expected}")


def test_a_stage_without_a_job_is_rejected(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[stages.done]\nagent = "x"\n')
    assert message.startswith(f"{tmp_path / 'orch.toml'}")
    assert "'done' is not a stage with a job" in message


def test_a_stage_without_a_job_is_rejected_with_its_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, 'host = "x"\n[stages.done]\nagent = "x"\n')
    assert message.startswith(f"{tmp_path / 'orch.toml'}:2: ")


def test_wrong_env_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, "max_attempts = 5\n")
    monkeypatch.setenv("ORCH_MAX_ATTEMPTS", "abc")
    with pytest.raises(ConfigError) as caught:
        load_settings(cwd=tmp_path)
    assert str(caught.value).startswith("ORCH_MAX_ATTEMPTS: max_attempts: Input should be")


# --- tracker_mode -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"bump"', "bump"),
        ('"BUMP"', "bump"),
        ('" Bump "', "bump"),
        ('"edit"', "edit"),
        ('"bumpy"', "edit"),
        ('"replace"', "edit"),
        ('""', "edit"),
        ("1", "edit"),
        ("true", "edit"),
    ],
)
def test_tracker_mode_other_than_bump_means_edit(tmp_path: Path, value: str, expected: str) -> None:
    write_config(tmp_path, f"tracker_mode = {value}\n")
    assert load_settings(cwd=tmp_path).tracker_mode == expected


@pytest.mark.parametrize(("value", "expected"), [("Bump", "bump"), ("bmp", "edit")])
def test_tracker_mode_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    write_config(tmp_path, 'tracker_mode = "edit"\n' if expected == "bump" else "")
    monkeypatch.setenv("ORCH_TRACKER_MODE", value)
    assert load_settings(cwd=tmp_path).tracker_mode == expected


# --- describe_settings --------------------------------------------------------------------


def test_describe_settings_says_where_each_value_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(
        tmp_path,
        """
        # limits
        max_attempts = 5
        port = 9000
        """,
    )
    monkeypatch.setenv("ORCH_PORT", "9100")
    monkeypatch.setenv("ORCH_LANGUAGE", "ru")
    settings = load_settings(config=path, cwd=tmp_path)
    described = sources(settings, path)
    assert set(described) == set(Settings.model_fields)
    assert described["max_attempts"] == SettingSource("max_attempts", 5, f"{path}:2")
    assert described["port"] == SettingSource("port", 9100, "env ORCH_PORT")
    assert described["language"] == SettingSource("language", "ru", "env ORCH_LANGUAGE")
    assert described["host"] == SettingSource("host", "127.0.0.1", "default")
    assert described["data_dir"].source == "default"
    assert described["data_dir"].value == str((tmp_path / ".orch").resolve())


def test_describe_settings_without_a_file_is_all_default(tmp_path: Path) -> None:
    described = describe_settings(load_settings(cwd=tmp_path), None)
    assert {s.source for s in described} == {"default"}


def test_describe_settings_dumps_nested_values(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        skip = ["deploy-staging"]
        repos = { demo = { skip = ["testing"], stages = { analysis = { agent = "x" } } } }
        """,
    )
    described = sources(load_settings(config=path, cwd=tmp_path), path)
    assert described["skip"] == SettingSource("skip", ["deploy-staging"], f"{path}:1")
    assert described["repos"].value == {
        "demo": {"skip": ["testing"], "stages": {"analysis": {"agent": "x"}}}
    }
    assert described["repos"].source == f"{path}:2"


def test_describe_settings_gives_the_line_of_a_table_setting(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        max_attempts = 5

        [agents.claude]
        command = ["claude", "-p", "{prompt}"]
        """,
    )
    described = sources(load_settings(config=path, cwd=tmp_path), path)
    assert described["agents"].source == f"{path}:3"


# --- stages, scopes and skips ---------------------------------------------------------------


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path]:
    demo, other = tmp_path / "demo", tmp_path / "other"
    demo.mkdir()
    other.mkdir()
    return demo, other


def test_testing_uses_the_test_runner_by_default(tmp_path: Path, repos: tuple[Path, Path]) -> None:
    demo, _ = repos
    settings = load_settings(cwd=tmp_path)
    assert settings.stage_config(demo, "testing").agent == "runner:tests"
    assert settings.stage_config(demo, "development").agent == "claude"
    assert settings.stage_config(demo, "deploy").agent == "runner:deploy"


def test_test_runner_switched_off_gives_the_configured_agent(
    tmp_path: Path, repos: tuple[Path, Path]
) -> None:
    demo, _ = repos
    write_config(tmp_path, "test_runner_enabled = false\n")
    assert load_settings(cwd=tmp_path).stage_config(demo, "testing").agent == "claude"


def test_test_runner_switched_off_by_env(
    tmp_path: Path, repos: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    demo, _ = repos
    write_config(tmp_path, "[stages.testing]\nprompt = 'p.j2'\n")
    monkeypatch.setenv("ORCH_TEST_RUNNER_ENABLED", "0")
    config = load_settings(cwd=tmp_path).stage_config(demo, "testing")
    assert (config.agent, config.prompt) == ("claude", "p.j2")


@pytest.mark.parametrize("scope_item", ["demo", "{demo}"])
def test_test_runner_scope_by_name_or_path(
    tmp_path: Path, repos: tuple[Path, Path], scope_item: str
) -> None:
    demo, other = repos
    item = scope_item.format(demo=demo.resolve())
    write_config(tmp_path, f"test_runner_repos = [{item!r}]\n")
    settings = load_settings(cwd=tmp_path)
    assert settings.stage_config(demo, "testing").agent == "runner:tests"
    assert settings.stage_config(other, "testing").agent == "claude"


def test_an_agent_chosen_for_testing_beats_the_test_runner(
    tmp_path: Path, repos: tuple[Path, Path]
) -> None:
    demo, other = repos
    write_config(
        tmp_path,
        """
        [repos.demo.stages.testing]
        agent = "scripted"
        """,
    )
    settings = load_settings(cwd=tmp_path)
    assert settings.stage_config(demo, "testing").agent == "scripted"
    assert settings.stage_config(other, "testing").agent == "runner:tests"


def test_gates_only_override_keeps_the_test_runner(
    tmp_path: Path, repos: tuple[Path, Path]
) -> None:
    demo, _ = repos
    write_config(tmp_path, '[stages.testing]\ngates = ["tests_passed"]\n')
    config = load_settings(cwd=tmp_path).stage_config(demo, "testing")
    assert (config.agent, config.gates) == ("runner:tests", ["tests_passed"])


def test_repository_stage_config_layers_over_global(
    tmp_path: Path, repos: tuple[Path, Path]
) -> None:
    demo, other = repos
    write_config(
        tmp_path,
        """
        [stages.analysis]
        agent = "global-agent"
        prompt = "global.j2"

        [repos.demo.stages.analysis]
        agent = "demo-agent"
        """,
    )
    settings = load_settings(cwd=tmp_path)
    mine = settings.stage_config(demo, "analysis")
    assert (mine.agent, mine.prompt) == ("demo-agent", "global.j2")
    theirs = settings.stage_config(other, "analysis")
    assert (theirs.agent, theirs.prompt) == ("global-agent", "global.j2")


def test_per_repository_skip_adds_to_the_global_skip(
    tmp_path: Path, repos: tuple[Path, Path]
) -> None:
    demo, other = repos
    write_config(
        tmp_path,
        """
        skip = ["brd-approval"]

        [repos.demo]
        skip = ["deploy-staging"]
        """,
    )
    settings = load_settings(cwd=tmp_path)
    assert settings.pipeline_for(demo) == Pipeline(frozenset({"brd-approval", "deploy-staging"}))
    assert settings.pipeline_for(other) == Pipeline(frozenset({"brd-approval"}))
    assert settings.pipeline_for(demo).next_stage("testing") == "deploy"
    assert settings.pipeline_for(other).next_stage("testing") == "deploy-staging"


def test_repository_matched_by_path(tmp_path: Path, repos: tuple[Path, Path]) -> None:
    demo, other = repos
    write_config(
        tmp_path,
        f"""
        [repos.anything]
        path = "{demo.as_posix()}"
        skip = ["architecture"]
        """,
    )
    settings = load_settings(cwd=tmp_path)
    assert settings.repo_config(demo).skip == ["architecture"]
    assert settings.repo_config(other).skip == []
    assert settings.repo_config(tmp_path / "anything").skip == []


def test_commit_exclude_may_drop_only_a_built_in_pattern(tmp_path: Path) -> None:
    write_config(tmp_path, '[repos.r]\ncommit_exclude = ["*.sqlite3", "!build/"]\n')
    assert load_settings().repos["r"].commit_exclude == ["*.sqlite3", "!build/"]
    message = config_error(tmp_path, '[repos.r]\ncommit_exclude = ["!src/"]\n')
    assert "'!src/' drops a built-in pattern, but 'src/' is not one" in message
    assert "orch.toml:2" in message


def test_commit_exclude_patterns_are_one_line_each(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[repos.r]\ncommit_exclude = ["a\\nb"]\n')
    assert "is not a pattern: one non-empty line each" in message


def test_commit_limits_have_sane_defaults(tmp_path: Path) -> None:
    settings = load_settings()
    assert (settings.commit_max_files, settings.commit_max_bytes) == (2_000, 20_000_000)


# --- hooks are not run by a shell -------------------------------------------------------


@pytest.mark.parametrize("operator", ["&&", "||", "|", ";", ">", "<"])
def test_a_hook_string_expecting_a_shell_is_refused_with_the_fix(
    tmp_path: Path, operator: str
) -> None:
    hook = f"python3 -m venv .venv {operator} .venv/bin/pip install -e ."
    message = config_error(tmp_path, f"[repos.app]\nafter_create = {hook!r}\n")
    assert "repos.app.after_create" in message
    assert f"{operator!r} would reach the command as an argument" in message
    assert f'write ["sh", "-c", "{hook}"]' in message


def test_hooks_that_need_no_shell_load_as_written(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
        [repos.app]
        after_create = "make setup ARGS='a && b'"
        before_run = ["sh", "-c", "test -d .venv && echo ready"]
        [repos.other]
        after_create = "tr '|' ,"
        before_run = 'find . -name x -exec rm {} \\;'
        """,
    )
    loaded = load_settings(cwd=tmp_path)
    config = loaded.repos["app"]
    assert config.after_create == "make setup ARGS='a && b'"  # quoted: one argument
    assert config.before_run == ["sh", "-c", "test -d .venv && echo ready"]
    assert loaded.repos["other"].after_create == "tr '|' ,"
    assert loaded.repos["other"].before_run == "find . -name x -exec rm {} \\;"


def test_a_hook_string_that_cannot_be_split_is_refused(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[repos.app]\nbefore_run = "echo \'unclosed"\n')
    assert "cannot be split into arguments" in message


@given(
    st.lists(
        st.tuples(st.text(alphabet="ab1&|;<>'\" $", min_size=1, max_size=6), st.booleans()),
        min_size=1,
        max_size=6,
    )
)
def test_bare_words_are_the_words_written_without_quotes_or_escapes(
    parts: list[tuple[str, bool]],
) -> None:
    """Each word either quoted (shlex.quote, forced) or written as is when it needs no
    quoting: the bare words are exactly the second kind, and a shell's split of the
    whole line gives back every word."""
    rendered = []
    bare = []
    for word, force_quote in parts:
        plain = shlex.quote(word) == word
        if plain and not force_quote:
            rendered.append(word)
            bare.append(word)
        else:
            rendered.append("'" + word.replace("'", "'\"'\"'") + "'")
    line = " ".join(rendered)
    assert shlex.split(line) == [word for word, _ in parts]
    assert _bare_words(line) == bare
