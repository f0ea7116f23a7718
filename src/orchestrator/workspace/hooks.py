"""``python -m orchestrator.workspace.hooks SPEC -- COMMAND...``: run a job's workspace hooks,
then it.

The engine puts this module between the launcher and a job's command when the
repository has hooks (``after_create``, ``before_run``). It runs in the job's process
group, in the task worktree, so a tree-kill of the job reaches a hook too, and the
hooks' output lands in the job's log. It then *becomes* the command (``exec``), which
keeps its pid, its stdin (the prompt) and its exit code.

For each hook of the spec (a JSON file the engine wrote), in order:

1. skip it if its ``done_marker`` exists (``after_create`` runs once per worktree);
2. run it with stdin closed (the prompt is the agent's), under its timeout; past it, every
   process of the group but this one and the launcher gets the one tree-kill
   (:func:`orchestrator.procs.kill.kill_tree`: SIGTERM, its grace, SIGKILL);
3. append the untracked paths it created to ``created_record``: the engine never commits
   them;
4. on failure print the runners' environment marker (an ``ORCH-RESULT`` line with
   ``defer_cause = "environment"``, see ``runners/context.py``) and exit
   :data:`HOOK_FAILED_EXIT` without starting the command: the engine fails the task for
   a person, with the reason and ``orch task retry``; no agent is asked to fix it.

Standard library and :mod:`orchestrator.procs.kill` only, like the launcher: it must not
fail on an import of ours that pulls in the rest of the orchestrator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.procs.kill import kill_tree

# The runners' DEFER exit and result line (runners/context.py; a test keeps them equal).
HOOK_FAILED_EXIT = 3
RESULT_PREFIX = "ORCH-RESULT "
ENVIRONMENT_CAUSE = "environment"
USAGE = "usage: python -m orchestrator.workspace.hooks SPEC -- COMMAND..."


def _say(text: str) -> None:
    print(f"[orch: {text}]", flush=True)


def _kill_hook(hook: subprocess.Popen[bytes]) -> None:
    """The one tree-kill on the hook: every process of our group, and every one under us
    that left it, but neither us nor the launcher."""
    kill_tree(
        group=os.getpgid(0), root=os.getpid(), spare=(os.getpid(), os.getppid()), reap=hook.poll
    )


def _untracked() -> set[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--others", "--exclude-standard", "--directory"],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return {path for path in listed.stdout.split("\0") if path}


def _run_hook(hook: dict[str, Any]) -> str | None:
    """Run one hook; None on success, else why it failed."""
    argv = [str(part) for part in hook["argv"]]
    timeout_s = float(hook["timeout_s"])
    _say(f"hook {hook['name']}: {' '.join(argv)}")
    started = time.monotonic()
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    except OSError as exc:
        return f"cannot start {argv[0]!r}: {exc.strerror}"
    try:
        code = child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_hook(child)
        child.wait()
        return f"timed out after {timeout_s:g}s (hook_timeout_s)"
    _say(f"hook {hook['name']} exited with code {code} after {time.monotonic() - started:.1f}s")
    return None if code == 0 else f"exited with code {code}"


def run(spec: dict[str, Any], argv: list[str]) -> int:
    record = Path(spec["created_record"]) if spec.get("created_record") else None
    for hook in spec.get("hooks", []):
        marker = Path(hook["done_marker"]) if hook.get("done_marker") else None
        if marker is not None and marker.exists():
            continue
        before = _untracked() if record is not None else set()
        failure = _run_hook(hook)
        if record is not None:
            created = sorted(_untracked() - before)
            if created:
                record.parent.mkdir(parents=True, exist_ok=True)
                with record.open("a", encoding="utf-8") as handle:
                    handle.write("".join(f"{path}\n" for path in created))
        if failure is not None:
            _say(f"hook {hook['name']} failed: {failure}; the job did not start")
            reason = f"the {hook['name']} hook failed: {failure} (its output: {spec.get('log')})"
            facts = {"defer_cause": ENVIRONMENT_CAUSE, "defer_reason": reason}
            print(RESULT_PREFIX + json.dumps(facts, sort_keys=True), flush=True)
            return HOOK_FAILED_EXIT
        if marker is not None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("done\n")
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)  # noqa: S606 - the job's own argument list, no shell
    except OSError as exc:
        _say(f"cannot start {argv[0]!r}: {exc.strerror}")
        return 127


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    if len(args) < 3 or args[1] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    return run(spec, args[2:])


if __name__ == "__main__":
    raise SystemExit(main())
