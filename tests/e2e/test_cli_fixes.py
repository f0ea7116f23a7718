"""Issue 13's CLI fixes, through the real `orch` command as a subprocess."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from orchestrator.cli.demo_project import create_demo_repository

pytestmark = pytest.mark.e2e

ORCH = [sys.executable, "-m", "orchestrator"]
SCRIPTED_CONFIG = """\
data_dir = ".orch"
retry_backoff_s = 0
instance_name = "[bold red]box[/]"

[stages.analysis]
agent = "scripted"
[stages.architecture]
agent = "scripted"
[stages.development]
agent = "scripted"
"""
MARKUP_TITLES = ("[bug] crash on start", "[bold red]x[/] and [link=http://evil]y[/link]")


def orch(
    workdir: Path, *args: str, env: dict[str, str] | None = None, exit_code: int | None = 0
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    result = subprocess.run(
        [*ORCH, *args],
        cwd=workdir,
        env={**base, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if exit_code is not None and result.returncode != exit_code:
        pytest.fail(f"orch {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "orch-home"
    work.mkdir()
    (work / "orch.toml").write_text(SCRIPTED_CONFIG)
    return work


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    # Brackets in the path too: paths are user text as well.
    return create_demo_repository(tmp_path / "lib[dev]")


def test_titles_paths_and_values_print_as_written_never_as_markup(
    workdir: Path, repo: Path
) -> None:
    """Seen failing before: `[bug] crash on start` printed as ` crash on start`."""
    for number, title in enumerate(MARKUP_TITLES, start=1):
        created = orch(
            workdir, "task", "create", "--repo", str(repo), "--title", title,
            "--work-item", f"MK-{number}",
        )  # fmt: skip
        assert f"in {repo}" in created.stdout
    # Rich colours only a terminal; FORCE_COLOR makes it style as it would there.
    color = {"FORCE_COLOR": "1", "COLUMNS": "300"}
    listed = orch(workdir, "task", "list", env=color).stdout
    shown = orch(workdir, "task", "show", "MK-1", env=color).stdout
    shown_2 = orch(workdir, "task", "show", "MK-2", env=color).stdout
    assert MARKUP_TITLES[0] in listed
    assert MARKUP_TITLES[1] in listed
    assert MARKUP_TITLES[0] in shown
    assert MARKUP_TITLES[1] in shown_2
    assert "\x1b]8;" not in shown_2  # no hyperlink escape from [link=...]
    assert "\x1b[1;31m" not in listed + shown_2  # "bold red" never applied to user text
    config = orch(workdir, "config", "show", env=color).stdout
    assert ' = "[bold red]box[/]"' in config  # instance_name, from orch.toml
    # The progress lines of `orch run` (a created task's title is its first event).
    orch(workdir, "task", "cancel", "MK-2")
    ran = orch(workdir, "run", env=color).stdout
    assert "MK-1" in ran
    # An error naming user text.
    missing = orch(workdir, "task", "show", "[bold]NOPE[/bold]", exit_code=None)
    assert missing.returncode == 1
    assert "[bold]NOPE[/bold]" in missing.stderr


def test_task_logs_json_gives_each_run_with_its_log(workdir: Path, repo: Path) -> None:
    """The README says list, show and logs all take --json; logs did not."""
    orch(workdir, "task", "create", "--repo", str(repo), "--title", "t", "--work-item", "LG-1")
    orch(workdir, "run")
    last = json.loads(orch(workdir, "task", "logs", "LG-1", "--json").stdout)
    assert [run["stage"] for run in last] == ["analysis"]
    assert last[0]["exit_code"] == 0
    assert last[0]["log"]
    assert last[0]["log"] == Path(last[0]["log_path"]).read_text(encoding="utf-8")
    every = json.loads(orch(workdir, "task", "logs", "LG-1", "--all", "--json").stdout)
    assert len(every) >= 1
    none = json.loads(orch(workdir, "task", "logs", "LG-1", "--stage", "deploy", "--json").stdout)
    assert none == []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_listens_on_host_and_port_given_on_the_command_line(workdir: Path) -> None:
    port = _free_port()
    log = workdir / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [*ORCH, "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        healthy = False
        for _ in range(600):
            if server.poll() is not None:
                pytest.fail(f"orch serve exited {server.returncode}:\n{log.read_text()}")
            try:
                healthy = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).is_success
            except httpx.TransportError:
                healthy = False
            if healthy:
                break
            time.sleep(0.1)
        assert healthy, log.read_text()
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, log.read_text()
    bad = orch(workdir, "serve", "--port", "70000", exit_code=2)
    assert "70000" in bad.stderr


def test_run_outside_a_configured_directory_refuses_and_creates_nothing(tmp_path: Path) -> None:
    """Seen before: `orch run` here made .orch/orch.db and said "no tasks yet"."""
    for args in (["run"], ["serve"], ["task", "create", "--repo", ".", "--title", "x"]):
        refused = orch(tmp_path, *args, exit_code=2)
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, refused.stderr
        assert "no orch.toml in" in lines[0]
        assert "orch init" in lines[0]
        assert "--config" in lines[0]
    assert list(tmp_path.iterdir()) == []
    # Reads do not refuse, and do not create anything either; they say so.
    listed = orch(tmp_path, "task", "list")
    assert "warning: no orch.toml" in listed.stderr
    assert "config: none found" in listed.stdout
    assert list(tmp_path.iterdir()) == []
    # Saying where the data lives is enough.
    database = tmp_path / "elsewhere" / "orch.db"
    database.parent.mkdir()
    ran = orch(tmp_path, "run", env={"ORCH_DATABASE_URL": f"sqlite:///{database}"})
    assert f"database: SQLite {database}" in ran.stdout
    assert database.exists()
    assert not (tmp_path / ".orch").exists()


def test_run_and_list_name_the_config_and_database_they_use(workdir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = workdir / "orch.toml"
    database = workdir / ".orch" / "orch.db"
    for cwd, args in ((workdir, []), (elsewhere, ["--config", str(config)])):
        ran = orch(cwd, *args, "run")
        assert f"config: {config}" in ran.stdout
        assert f"database: SQLite {database}" in ran.stdout
        listed = orch(cwd, *args, "task", "list")
        assert f"config: {config}" in listed.stdout
        assert f"database: SQLite {database}" in listed.stdout
        assert "warning" not in listed.stderr


def test_config_show_describes_each_setting_in_full_when_piped(workdir: Path) -> None:
    long_url = "https://gitea.example.com/" + "a" * 300 + "/api/v1"
    with (workdir / "orch.toml").open("a") as config:
        config.write('\n[repos.lib]\nskip = ["deploy-staging"]\n')
    text = orch(workdir, "config", "show", env={"ORCH_FORGE_BASE_URL": long_url}).stdout
    assert f'forge_base_url = "{long_url}"  (env ORCH_FORGE_BASE_URL)' in text
    assert f"database: SQLite {workdir / '.orch' / 'orch.db'}" in text
    assert f"database_url = unset: SQLite {workdir / '.orch' / 'orch.db'}" in text
    assert "Attempts of one stage (agent failures, failed gates) before the task fails." in text
    assert "Size cap of one run's log file" in text  # log_max_bytes
    assert '"deploy-staging"' in text
    shown = json.loads(orch(workdir, "config", "show", "--json").stdout)
    assert shown["log_max_bytes"]["description"].startswith("Size cap of one run's log file")
    assert all(entry["description"] for entry in shown.values())
    assert shown["database_url"]["effective"] == f"SQLite {workdir / '.orch' / 'orch.db'}"
