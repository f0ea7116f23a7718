"""The staging runner: a real service started from the worktree on a free port.

The service is a small ``http.server`` script committed in the repository; it reads
``$PORT``, answers per its mode, and records its pid (and a child's) in ``$PIDS`` so the
test can prove nothing of it is left running after the stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from runner_helpers import make_repo, process_running, report, run_runner

from orchestrator.kernel.gates import STAGING_REPORT_FILE, StageFacts, check_staging_passed
from orchestrator.runners import TOOL_ERROR_EXIT
from orchestrator.runners.config import RunnerConfig

SERVICE: Final = """\
import http.server, os, subprocess, sys
mode = sys.argv[1]
pids = open(os.environ["PIDS"], "a")
child = subprocess.Popen(["sleep", "600"])  # a worker the service starts
pids.write(f"{os.getpid()}\\n{child.pid}\\n")
pids.close()
if mode == "crash":
    sys.exit(7)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status = 500 if (mode == "bad-queue" and self.path == "/queue") else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def _staging_gate(repo: Path) -> bool:
    facts = StageFacts(
        "T-1", "deploy-staging", {STAGING_REPORT_FILE: report(repo, STAGING_REPORT_FILE)}
    )
    return check_staging_passed(facts).passed


def _run(tmp_path: Path, mode: str, **config: object) -> tuple[Path, int, list[int]]:
    repo = make_repo(tmp_path / "repo", {"service.py": SERVICE})
    pids = tmp_path / "pids.txt"
    pids.touch()
    runner_config = RunnerConfig(
        staging_command=("python3", "service.py", mode),
        staging_ready_timeout_s=20,
        **config,  # type: ignore[arg-type]
    )
    done = run_runner(repo, runner_config, runner="staging", extra_env={"PIDS": str(pids)})
    started = [int(line) for line in pids.read_text().split()]
    return repo, done.returncode, started


def test_a_healthy_service_passes_and_is_stopped(tmp_path: Path) -> None:
    repo, code, pids = _run(tmp_path, "ok")
    assert code == 0
    text = report(repo, STAGING_REPORT_FILE)
    assert "result: PASS" in text
    assert "- smoke: 3/3 endpoints answered 2xx" in text
    assert "- stopped: tree-killed its process group" in text
    assert _staging_gate(repo)
    assert len(pids) == 2
    assert not any(process_running(pid) for pid in pids), "the service outlived the stage"


def test_a_failing_smoke_endpoint_fails_the_stage_by_name(tmp_path: Path) -> None:
    repo, code, pids = _run(tmp_path, "bad-queue")
    assert code == 0
    text = report(repo, STAGING_REPORT_FILE)
    assert "result: FAIL" in text
    assert "the smoke failed: GET http://127.0.0.1:" in text
    assert "/queue -> 500" in text
    assert not _staging_gate(repo)
    assert not any(process_running(pid) for pid in pids)


def test_a_service_that_exits_fails_the_stage(tmp_path: Path) -> None:
    repo, code, pids = _run(tmp_path, "crash")
    assert code == 0
    text = report(repo, STAGING_REPORT_FILE)
    assert "result: FAIL" in text
    assert "the service exited with code 7 before it was healthy" in text
    assert not _staging_gate(repo)
    assert not any(process_running(pid) for pid in pids), "the crashed service's child lived on"


def test_a_command_that_cannot_start_is_a_tool_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"service.py": SERVICE})
    done = run_runner(
        repo, RunnerConfig(staging_command=("no-such-service-binary",)), runner="staging"
    )
    assert done.returncode == TOOL_ERROR_EXIT
    assert "cannot start 'no-such-service-binary'" in done.stderr
    # The environment's fault: the engine hands it to a person (defer_cause).
    result = next(line for line in done.stdout.splitlines() if line.startswith("ORCH-RESULT "))
    facts = json.loads(result.removeprefix("ORCH-RESULT "))
    assert facts["defer_cause"] == "environment"
    assert "no-such-service-binary" in facts["defer_reason"]


def test_nothing_configured_is_skipped(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"service.py": SERVICE})
    done = run_runner(repo, RunnerConfig(), runner="staging")
    assert done.returncode == 0
    assert "result: SKIPPED" in report(repo, STAGING_REPORT_FILE)
    assert _staging_gate(repo)


def test_the_port_placeholder_is_filled(tmp_path: Path) -> None:
    script = SERVICE.replace('int(os.environ["PORT"])', "int(sys.argv[2])")
    repo = make_repo(tmp_path / "repo", {"service.py": script})
    pids = tmp_path / "pids.txt"
    pids.touch()
    config = RunnerConfig(staging_command=("python3", "service.py", "ok", "{port}"))
    done = run_runner(repo, config, runner="staging", extra_env={"PIDS": str(pids)})
    assert done.returncode == 0, done.stderr
    assert "result: PASS" in report(repo, STAGING_REPORT_FILE)
