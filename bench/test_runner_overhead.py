"""What the deterministic test runner costs on top of the tests it runs.

Theory of operation
-------------------
One temporary git repository holds a pytest suite: a generated one by default (``--files``
files of ``--tests`` tests, each test spinning the CPU for ``--work-ms``), or a copy of
``--suite DIR``. In the same run, alternating so that machine load hits both alike, it
times ``--rounds`` of each:

* **bare**: ``python -m pytest -q -p no:cacheprovider`` in the repository;
* **runner**: ``python -m orchestrator.runners tests`` in the repository, started with
  the environment the engine gives it. It runs the same command plus ``--junitxml``, in
  its own session, then parses the XML and writes ``13-test-report.md``;
* **runner + smoke** (unless ``--no-smoke``): the same with a read-only smoke of three
  endpoints of a local HTTP server.

It prints the medians and the ratio runner / bare (the issue's goal: at most 1.05 plus
the smoke time). Because the two medians come from different processes on a shared
machine, it also prints the runner's *own cost*: its wall time minus the wall time of the
test command it ran (the runner measures that itself and prints it in its ``ORCH-RESULT``
line), and the ratio (bare + own cost) / bare. ``--json`` prints the raw figures. Every
runner round must report PASS, or the script exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.runners.config import RUNNER_CONFIG_ENV, RunnerConfig

GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
}
WORK_ITEM = "BENCH-1"


def generate_suite(root: Path, files: int, tests: int, work_ms: float) -> None:
    """``files`` test modules of ``tests`` tests, each busy for about ``work_ms``."""
    (root / "tests").mkdir(parents=True)
    body = (
        "import time\n\n\n"
        "def _work(ms):\n"
        "    end = time.perf_counter() + ms / 1000\n"
        "    n = 0\n"
        "    while time.perf_counter() < end:\n"
        "        n += 1\n"
        "    return n\n"
    )
    for f in range(files):
        cases = "".join(
            f"\n\ndef test_{f}_{t}():\n    assert _work({work_ms}) > 0\n" for t in range(tests)
        )
        (root / "tests" / f"test_gen_{f}.py").write_text(body + cases, encoding="utf-8")


def make_repo(root: Path, suite: Path | None, files: int, tests: int, work_ms: float) -> Path:
    repo = root / "repo"
    if suite is not None:
        shutil.copytree(suite, repo / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        generate_suite(repo, files, tests, work_ms)
    (repo / ".gitignore").write_text("__pycache__/\n.pytest_cache/\n", encoding="utf-8")
    env = {**os.environ, **GIT_ENV}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "suite"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)
    return repo


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}


def time_bare(repo: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=repo,
        env={**clean_env(), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bare pytest failed ({done.returncode}):\n{done.stdout[-2000:]}")
    return elapsed


def time_runner(repo: Path, config: RunnerConfig) -> tuple[float, float]:
    """The runner's wall time, and its own cost: wall minus its test command's time."""
    env = {
        **clean_env(),
        "ORCH_WORK_ITEM": WORK_ITEM,
        "ORCH_STAGE": "testing",
        "ORCH_ATTEMPT": "1",
        "ORCH_ARTIFACT_DIR": f"docs/work-items/{WORK_ITEM}",
        "ORCH_REPOSITORY": str(repo),
        "ORCH_BRANCH": "main",
        "ORCH_BASE_BRANCH": "main",
        RUNNER_CONFIG_ENV: config.to_json(),
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.runners", "tests"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    report = repo / "docs" / "work-items" / WORK_ITEM / "13-test-report.md"
    text = report.read_text(encoding="utf-8") if report.exists() else ""
    if done.returncode != 0 or "result: PASS" not in text:
        raise SystemExit(f"the runner did not PASS ({done.returncode}):\n{done.stderr[-2000:]}")
    facts = json.loads(
        next(line for line in done.stdout.splitlines() if line.startswith("ORCH-RESULT "))[12:]
    )
    return elapsed, elapsed - float(facts["tests_duration_s"])


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        return


@contextlib.contextmanager
def local_instance() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="orch-bench-runner-") as tmp:
        repo = make_repo(Path(tmp), args.suite, args.files, args.tests, args.work_ms)
        bare: list[float] = []
        runner: list[float] = []
        own: list[float] = []
        smoked: list[float] = []
        with local_instance() as base_url:
            smoke_config = RunnerConfig(smoke_base_url=base_url)
            time_bare(repo)  # warm the page cache and .pyc files outside the timing
            time_runner(repo, RunnerConfig())
            for _ in range(args.rounds):
                bare.append(time_bare(repo))
                wall, own_cost = time_runner(repo, RunnerConfig())
                runner.append(wall)
                own.append(own_cost)
                if not args.no_smoke:
                    smoked.append(time_runner(repo, smoke_config)[0])
    bare_s = statistics.median(bare)
    runner_s = statistics.median(runner)
    result: dict[str, Any] = {
        "suite": str(args.suite)
        if args.suite
        else f"generated {args.files}x{args.tests} tests of {args.work_ms} ms",
        "rounds": args.rounds,
        "bare_s": bare,
        "runner_s": runner,
        "bare_median_s": bare_s,
        "runner_median_s": runner_s,
        "overhead_s": runner_s - bare_s,
        "ratio": runner_s / bare_s,
        # Less noisy: what the runner adds around its own test command, in the same run.
        "own_cost_s": own,
        "own_cost_median_s": statistics.median(own),
        "ratio_from_own_cost": (bare_s + statistics.median(own)) / bare_s,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
        },
    }
    if smoked:
        smoke_s = statistics.median(smoked)
        result.update(
            runner_smoke_s=smoked,
            runner_smoke_median_s=smoke_s,
            smoke_s=smoke_s - runner_s,
            ratio_with_smoke=smoke_s / bare_s,
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--suite", type=Path, help="a tests/ directory to copy (default: generated)"
    )
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--tests", type=int, default=10)
    parser.add_argument("--work-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-smoke", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"suite: {result['suite']}, {result['rounds']} rounds, medians")
    print(f"bare pytest     {result['bare_median_s']:.3f} s")
    print(
        f"runner          {result['runner_median_s']:.3f} s  "
        f"(+{result['overhead_s'] * 1000:.0f} ms, ratio {result['ratio']:.3f})"
    )
    print(
        f"runner's own cost {result['own_cost_median_s'] * 1000:.0f} ms "
        f"(wall minus its test command), ratio {result['ratio_from_own_cost']:.3f}"
    )
    if "runner_smoke_median_s" in result:
        print(
            f"runner + smoke  {result['runner_smoke_median_s']:.3f} s  "
            f"(smoke {result['smoke_s'] * 1000:.0f} ms, ratio {result['ratio_with_smoke']:.3f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
