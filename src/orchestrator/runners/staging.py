"""The staging runner (``deploy-staging``): start the service, check it, stop it.

With a ``staging_command`` configured for the repository, in the task worktree:

1. the setup command, if any (as for the tests);
2. the staging command, in its own session, with a free local port in ``$PORT`` and in
   the ``{port}`` placeholder;
3. wait (``staging_ready_timeout_s``) until ``http://127.0.0.1:<port><health path>``
   answers 2xx; the service exiting first, or the wait running out, is a FAIL;
4. the smoke: a read-only GET of each ``smoke_endpoints`` path, each must answer 2xx;
5. stop the service (tree-kill of its session) and write ``14-staging-report.md``:
   ``result: PASS`` or ``result: FAIL`` with the failing step or endpoint named.

A FAIL rolls the task back to development (the code does not come up). The runner's
own trouble (the command cannot be started at all, the setup fails) is the environment's:
:func:`~orchestrator.runners.context.defer_for_environment`, and the task waits for a
person (``orch task retry`` after the fix). No command configured: the stage
passes with ``result: SKIPPED``.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.kernel.gates import STAGING_REPORT_FILE
from orchestrator.runners.context import RunnerContext, defer_for_environment, emit_result
from orchestrator.runners.process import CommandResult, run_command, start_command, stop_command
from orchestrator.runners.report import numbered
from orchestrator.runners.smoke import SmokeResult, smoke, wait_healthy

__all__ = ["free_port", "run"]

LOG_TAIL_LINES = 40


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class _Staging:
    result: str = "FAIL"
    reason: str = ""
    argv: tuple[str, ...] = ()
    port: int = 0
    setup: CommandResult | None = None
    health: SmokeResult | None = None
    ready_s: float = 0.0
    smoke: list[SmokeResult] = field(default_factory=list)
    stopped: str = ""
    log: str = ""


def _skipped(context: RunnerContext) -> int:
    context.artifact_dir.mkdir(parents=True, exist_ok=True)
    (context.artifact_dir / STAGING_REPORT_FILE).write_text(
        f"# Staging report: {context.work_item}\n\n"
        "result: SKIPPED\n\n"
        "No staging command is configured for this repository, so nothing was started.\n",
        encoding="utf-8",
    )
    emit_result(staging="skipped")
    return 0


def _render(context: RunnerContext, staging: _Staging) -> str:
    lines = [
        f"# Staging report: {context.work_item}",
        "",
        f"result: {staging.result}",
        "",
        f"Verdict: {staging.result}, {staging.reason}.",
        "",
        "- decided by: the deterministic staging runner (`runner:staging`); no model",
        f"- command: `{' '.join(staging.argv)}` on port {staging.port}",
    ]
    if staging.setup is not None:
        lines.append(f"- setup: `{' '.join(staging.setup.argv)}`, {staging.setup.describe()}")
    if staging.health is not None:
        lines.append(f"- health: {staging.health.describe()} after {staging.ready_s:.1f}s")
    if staging.smoke:
        ok = sum(1 for r in staging.smoke if r.ok)
        lines.append(f"- smoke: {ok}/{len(staging.smoke)} endpoints answered 2xx")
    lines.append(f"- stopped: {staging.stopped or 'not started'}")
    lines.append("")
    if staging.smoke:
        lines += ["## Smoke (read-only GETs)", "", "| endpoint | answer | ms |", "|---|---|---|"]
        for r in staging.smoke:
            answer = str(r.status_code) if r.error is None else r.error.replace("|", "/")
            lines.append(f"| `{r.url}` | {answer} | {r.elapsed_ms:.0f} |")
        lines.append("")
    tail, total = numbered(staging.log, LOG_TAIL_LINES)
    lines += [
        f"## Service log (last {len(tail)} of {total} lines)",
        "",
        "```text",
        *tail,
        "```",
        "",
    ]
    return "\n".join(lines)


def _check(context: RunnerContext, staging: _Staging, scratch: Path) -> int | None:
    """Start, wait, smoke, stop; fills ``staging``. Returns an exit code for a tool error."""
    config = context.config
    assert config.staging_command is not None
    env = context.child_env(PYTHONDONTWRITEBYTECODE="1")
    if config.setup_command:
        staging.setup = run_command(
            config.setup_command,
            cwd=context.worktree,
            env=env,
            timeout_s=config.timeout_s,
            log_path=scratch / "setup.log",
        )
        if not staging.setup.ok:
            return defer_for_environment(f"the setup command {staging.setup.describe()}")
    staging.port = free_port()
    port = str(staging.port)
    staging.argv = tuple(part.replace("{port}", port) for part in config.staging_command)
    log_path = scratch / "service.log"
    try:
        service = start_command(
            staging.argv, cwd=context.worktree, env={**env, "PORT": port}, log_path=log_path
        )
    except OSError as exc:
        return defer_for_environment(f"cannot start {staging.argv[0]!r}: {exc}")
    base_url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        staging.health = wait_healthy(
            base_url + "/" + config.staging_health_path.lstrip("/"),
            timeout_s=config.staging_ready_timeout_s,
            still_running=lambda: service.poll() is None,
        )
        staging.ready_s = time.monotonic() - started
        if not staging.health.ok:
            exited = service.poll()
            staging.reason = (
                f"the service exited with code {exited} before it was healthy"
                if exited is not None
                else f"the service was not healthy within {config.staging_ready_timeout_s:.0f}s "
                f"({staging.health.describe()})"
            )
        else:
            staging.smoke = smoke(
                base_url, config.smoke_endpoints, timeout_s=config.smoke_timeout_s
            )
            failing = [r.describe() for r in staging.smoke if not r.ok]
            if failing:
                staging.reason = "the smoke failed: " + "; ".join(failing)
            else:
                staging.result = "PASS"
                staging.reason = (
                    f"healthy after {staging.ready_s:.1f}s and every smoke GET answered 2xx"
                )
    finally:
        was_running = stop_command(service)
        staging.stopped = (
            "tree-killed its process group" if was_running else f"it had exited ({service.poll()})"
        )
        staging.log = log_path.read_text(encoding="utf-8", errors="replace")
    return None


def run(context: RunnerContext) -> int:
    """Stage the task's code, or skip when nothing is configured."""
    if not context.config.staging_command:
        return _skipped(context)
    scratch = Path(tempfile.mkdtemp(prefix="orch-staging-"))
    try:
        staging = _Staging()
        tool_error = _check(context, staging, scratch)
        if tool_error is not None:
            return tool_error
        context.artifact_dir.mkdir(parents=True, exist_ok=True)
        (context.artifact_dir / STAGING_REPORT_FILE).write_text(
            _render(context, staging), encoding="utf-8"
        )
        print(staging.log.rstrip("\n"), flush=True)
        print(f"staging runner: {staging.result}: {staging.reason}", flush=True)
        emit_result(
            staging=staging.result.lower(),
            staging_reason=staging.reason,
            smoke_failed=[r.endpoint for r in staging.smoke if not r.ok],
        )
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
