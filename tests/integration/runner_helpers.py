"""Shared by the runner tests: a real git repository and the runner as a real subprocess.

The runner is started exactly as the engine starts it: ``python -m orchestrator.runners
<name>`` in the worktree, with the ``ORCH_*`` variables and ``ORCH_RUNNER_CONFIG``.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

from orchestrator.kernel.gates import TEST_REPORT_FILE, StageFacts, Verdict, check_tests_passed
from orchestrator.runners.config import RUNNER_CONFIG_ENV, RunnerConfig

WORK_ITEM: Final = "T-1"
RUNNER_TIMEOUT_S: Final = 180
GIT_ENV: Final = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@localhost",
}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def make_repo(path: Path, files: Mapping[str, str]) -> Path:
    """A git repository on ``main`` with ``files`` committed (and caches ignored)."""
    path.mkdir(parents=True)
    git(path, "init", "--quiet", "-b", "main")
    everything = {".gitignore": "__pycache__/\n.pytest_cache/\n.venv/\n", **files}
    for relative, text in everything.items():
        target = path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    git(path, "add", "--all")
    git(path, "commit", "--quiet", "-m", "initial")
    return path


def commit(repo: Path, files: Mapping[str, str], message: str = "change") -> None:
    for relative, text in files.items():
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        (repo / relative).write_text(text, encoding="utf-8")
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", message)


def runner_env(
    repo: Path, config: RunnerConfig, *, attempt: int = 1, work_item: str = WORK_ITEM
) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return {
        **base,
        "ORCH_WORK_ITEM": work_item,
        "ORCH_STAGE": "testing",
        "ORCH_ATTEMPT": str(attempt),
        "ORCH_ARTIFACT_DIR": f"docs/work-items/{work_item}",
        "ORCH_REPOSITORY": str(repo),
        "ORCH_BRANCH": "main",
        "ORCH_BASE_BRANCH": "main",
        RUNNER_CONFIG_ENV: config.to_json(),
    }


def run_runner(
    repo: Path,
    config: RunnerConfig | None = None,
    *,
    runner: str = "tests",
    attempt: int = 1,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {**runner_env(repo, config or RunnerConfig(), attempt=attempt), **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.runners", runner],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUNNER_TIMEOUT_S,
        check=False,
    )


def start_runner(
    repo: Path, config: RunnerConfig, *, extra_env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    env = {**runner_env(repo, config), **(extra_env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.runners", "tests"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def report(repo: Path, name: str = TEST_REPORT_FILE, work_item: str = WORK_ITEM) -> str:
    return (repo / "docs" / "work-items" / work_item / name).read_text(encoding="utf-8")


def gate_verdict(repo: Path, work_item: str = WORK_ITEM) -> Verdict:
    """The testing gate, on the report as the engine would collect it."""
    facts = StageFacts(work_item, "testing", {TEST_REPORT_FILE: report(repo, work_item=work_item)})
    return check_tests_passed(facts)


def process_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


class _Handler(http.server.BaseHTTPRequestHandler):
    statuses: Mapping[str, int] = {}

    def do_GET(self) -> None:
        status = self.statuses.get(self.path, 404)
        body = f'{{"path": "{self.path}"}}'.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@contextlib.contextmanager
def http_instance(statuses: Mapping[str, int]) -> Iterator[str]:
    """A real HTTP server in a thread answering ``statuses``; yields its base URL."""
    handler = type("Handler", (_Handler,), {"statuses": dict(statuses)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
