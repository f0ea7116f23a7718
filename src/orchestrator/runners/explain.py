"""Hybrid mode: a tester agent explains a DEFER it cannot overturn.

When the test runner has deferred (a tool error) on every allowed attempt, the
hand-off attempt asks the configured tester agent (an LLM) *why*. The agent is strictly
off the control path; five things make sure it cannot flip the verdict:

1. it runs as a child of the runner, in its own session, after the runner has decided;
   its whole process group is killed before the runner writes anything else;
2. everything it changed in the worktree is thrown away (``git checkout`` + ``git
   clean`` back to the job's starting commit): only the text of its explanation file is
   kept, read into memory first;
3. the runner then writes ``13-test-report.md`` itself, with its own DEFER in the
   verdict fields; whatever the agent wrote to that file is gone;
4. the explanation goes into the report with every line numbered, so no line of it can
   parse as ``result:`` / ``status:`` / ``exit_code:`` (and a second, different value
   of a field would only make the gate's parser fail, never pass);
5. the gate judges the report's fields, which say DEFER: a hand-off never advances the
   task. The code goes back to development with the report as feedback, and only a
   later run of the runner itself can say PASS.

An agent that cannot be asked at all (not configured, not installed) is a configuration
problem: the runner then hands the DEFER to a person, never to development.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Final

from orchestrator.runners.config import RunnerConfig
from orchestrator.runners.process import run_command
from orchestrator.settings import DEFAULT_COMMIT_EXCLUDE
from orchestrator.workspace.setup import recorded_patterns

__all__ = ["EXPLANATION_FILE", "Explanation", "explain_defer", "explain_prompt"]

EXPLANATION_FILE: Final = "13-test-explanation.md"
MAX_EXPLANATION_CHARS: Final = 20_000


def explain_prompt(work_item: str, artifact_dir: str) -> str:
    """What the tester agent is asked in a hand-off (rendered by the engine)."""
    return (
        f"You are the tester of work item {work_item}. The deterministic test runner could\n"
        f"not reach a verdict: its report `{artifact_dir}/13-test-report.md` says DEFER (a\n"
        "tool error: the tests timed out, could not be collected, or the tool crashed).\n\n"
        "Explain why, for the developer who will read it next: what failed, where (file\n"
        "and line when you can tell), and what to change. Run commands to investigate if\n"
        "that helps. You do NOT decide whether the tests pass: the runner's DEFER stands\n"
        "whatever you write, and any change you make to the worktree is discarded.\n\n"
        f"Write your explanation, in markdown, to `{artifact_dir}/{EXPLANATION_FILE}`.\n"
    )


class Explanation:
    """What the tester agent said, and how its run ended."""

    def __init__(
        self, text: str, outcome: str, output_tail: str, unavailable: str | None = None
    ) -> None:
        self.text = text
        self.outcome = outcome
        self.output_tail = output_tail
        # Why the agent could not be asked at all (not configured, not installed).
        self.unavailable = unavailable


def _git(worktree: Path, *args: str) -> None:
    subprocess.run(
        ["git", *args], cwd=worktree, capture_output=True, text=True, timeout=120, check=False
    )


def _discard_changes(worktree: Path) -> None:
    """Back to the job's starting commit: tracked files restored, new files removed
    (ignored files are kept, and so is what the commit policy never commits: a venv made
    by the setup command, a `.env` copied into the worktree)."""
    _git(worktree, "checkout", "--force", "HEAD", "--", ".")
    kept = (*DEFAULT_COMMIT_EXCLUDE, *recorded_patterns(worktree))
    _git(worktree, "clean", "-d", "--force", "--quiet", *(f"--exclude={p}" for p in kept))


def explain_defer(
    *,
    config: RunnerConfig,
    worktree: Path,
    artifact_dir: Path,
    env: dict[str, str],
    timeout_s: float,
    log_path: Path,
) -> Explanation:
    """Run the hybrid tester agent; return its explanation. Never raises for its sake."""
    if config.explainer_error:
        return Explanation(
            "", f"not asked: {config.explainer_error}", "", unavailable=config.explainer_error
        )
    if not config.explainer_argv:
        why = "no tester agent is configured"
        return Explanation("", f"not asked: {why}", "", unavailable=why)
    explanation_path = artifact_dir / EXPLANATION_FILE
    explanation_path.unlink(missing_ok=True)
    result = run_command(
        config.explainer_argv,
        cwd=worktree,
        env={**env, **config.explainer_env},
        timeout_s=timeout_s,
        log_path=log_path,
        stdin_text=config.explainer_stdin,
    )
    if result.start_error is not None:
        _discard_changes(worktree)
        return Explanation("", result.describe(), "", unavailable=result.describe())
    text = ""
    try:
        text = explanation_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    if not text.strip():
        text = "(no explanation file was written; the agent's last output follows)\n" + "\n".join(
            result.output_tail.splitlines()[-40:]
        )
    _discard_changes(worktree)
    return Explanation(text[:MAX_EXPLANATION_CHARS], result.describe(), result.output_tail)
