"""The built-in ``scripted`` agent: deterministic, offline, no model.

Theory of operation
-------------------
The engine runs ``python -m orchestrator.agents.scripted --stage <stage>`` in the task's
worktree with the ``ORCH_*`` variables set. The agent does what a model would be asked
to do at that stage, from a recipe instead of a model:

=============== ======================================================================
analysis        writes ``01-brd.md`` built from the task's title and description
architecture    writes ``06-adr/ADR-001-<slug-of-title>.md``
development     applies the recipe's ``[[files]]``, then the files of the recipe's
                round for this development run (``[[rounds]]``), a real code change,
                and writes ``10-dev-notes.md`` (with the failing tests of the last test
                report after a rollback); when that changes nothing against ``HEAD`` it
                appends a revision comment to the first ``.py`` file of the recipe, so
                the stage always changes code
testing         runs the tests (``python -m pytest -q``) and writes ``13-test-report.md``
                whose ``result:``, ``status:`` and ``exit_code:`` follow the exit code
deploy-staging  writes ``14-staging-notes.md`` (it stages nothing, so it claims no verdict)
deploy          writes ``15-deploy-notes.md`` (it merges nothing, so it claims no verdict)
=============== ======================================================================

Its last stdout line is one JSON object shaped like Claude Code's result, with token
counts and a cost derived from the characters read and written, so that cost capture
can be exercised without a model. Nothing depends on the clock, the network or chance.

Recipe
------
Found at ``--recipe PATH``, else ``$ORCH_SCRIPTED_RECIPE``, else
``<artifact dir>/recipe.toml`` in the worktree, else a built-in default recipe that adds
``orch_scripted/<work item>.py`` (and a passing test when ``tests/`` exists)::

    [[files]]                       # applied, in order, by the development stage
    path = "src/pkg/mod.py"         # relative to the worktree
    content = '''...'''
    mode = "write"                  # or "append" (skipped if the file already ends so)

    [[rounds]]                      # per development run: 1 + the rollbacks so far
    run = 1                         # this round's files are applied on run 1 ...
    [[rounds.files]]                # ... and on later runs until a round with a
    path = "src/pkg/mod.py"         #     higher `run` takes over
    content = '''...'''
    [[rounds]]
    run = 2
    expect_feedback = ["test_x"]    # fail on purpose unless $ORCH_FEEDBACK or the last
    [[rounds.files]]                # test report mentions each of these
    path = "src/pkg/mod.py"
    content = '''...'''

    [behaviour]
    fail_stages = ["analysis"]      # exit 1 on these stages...
    fail_attempts = 1               # ...for attempts <= this (default: every attempt)

    [testing]
    command = ["{python}", "-m", "pytest", "-q"]   # {python}: this interpreter

Exit codes: 0 done, 1 failed on purpose (``fail_stages``, ``expect_feedback``), 2 bad
input (unknown stage, bad recipe, missing ``ORCH_WORK_ITEM``), always with one line on
stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final, NoReturn

from orchestrator.errors import UsageError
from orchestrator.kernel.gates import ADR_DIR, ARTIFACT_ROOT, BRD_FILE, TEST_REPORT_FILE

__all__ = [
    "STAGES",
    "AgentContext",
    "Recipe",
    "RecipeFile",
    "Round",
    "default_recipe",
    "load_recipe",
    "main",
    "parse_recipe",
    "render_adr",
    "render_brd",
    "render_test_report",
    "result_line",
]

STAGES: Final = ("analysis", "architecture", "development", "testing", "deploy-staging", "deploy")
RECIPE_FILE: Final = "recipe.toml"
RECIPE_ENV: Final = "ORCH_SCRIPTED_RECIPE"
DEV_NOTES_FILE: Final = "10-dev-notes.md"
STAGING_NOTES_FILE: Final = "14-staging-notes.md"
DEPLOY_NOTES_FILE: Final = "15-deploy-notes.md"
MODEL_NAME: Final = "scripted-1"
CHARS_PER_TOKEN: Final = 4
USD_PER_TOKEN: Final = 3e-6
TEST_TIMEOUT_S: Final = 1800
LOG_TAIL_LINES: Final = 60
EXIT_TIMEOUT: Final = 124
EXIT_NOT_FOUND: Final = 127
FILE_MODES: Final = frozenset({"write", "append"})
# Keeps the test run from leaving caches in the worktree, which the engine would commit.
DEFAULT_TEST_COMMAND: Final = ("{python}", "-m", "pytest", "-q", "-p", "no:cacheprovider")


@dataclass(frozen=True)
class AgentContext:
    """What the engine told the agent through ``ORCH_*`` variables."""

    stage: str
    work_item: str
    worktree: Path
    artifact_dir: str  # relative to the worktree, POSIX style
    attempt: int = 1
    rollback_count: int = 0
    title: str = ""
    description: str = ""
    feedback: str = ""
    prompt: str = ""

    @classmethod
    def from_env(cls, stage: str, env: Mapping[str, str], worktree: Path) -> AgentContext:
        """Read the context; raise :class:`UsageError` when a variable is unusable."""
        work_item = env.get("ORCH_WORK_ITEM", "").strip()
        if not work_item:
            raise UsageError("ORCH_WORK_ITEM is not set; the orchestrator sets it for agents")
        artifact_dir = env.get("ORCH_ARTIFACT_DIR", "").strip() or f"{ARTIFACT_ROOT}/{work_item}"
        prompt = ""
        prompt_file = env.get("ORCH_PROMPT_FILE", "")
        if prompt_file:
            try:
                prompt = Path(prompt_file).read_text(encoding="utf-8", errors="replace")
            except OSError:
                prompt = ""  # the prompt only feeds the token count
        return cls(
            stage=stage,
            work_item=work_item,
            worktree=worktree,
            artifact_dir=_relative_path(artifact_dir, "ORCH_ARTIFACT_DIR"),
            attempt=_int_env(env, "ORCH_ATTEMPT", default=1, minimum=1),
            rollback_count=_int_env(env, "ORCH_ROLLBACK_COUNT", default=0, minimum=0),
            title=env.get("ORCH_TASK_TITLE", "").strip() or work_item,
            description=env.get("ORCH_TASK_DESCRIPTION", "").strip(),
            feedback=env.get("ORCH_FEEDBACK", "").strip(),
            prompt=prompt,
        )

    def artifact(self, name: str) -> str:
        """Path of an artifact, relative to the worktree."""
        return f"{self.artifact_dir}/{name}"


@dataclass(frozen=True)
class RecipeFile:
    """One file the development stage writes or appends to."""

    path: str
    content: str
    mode: str = "write"


@dataclass(frozen=True)
class Round:
    """Files for one development run, and what its feedback must mention."""

    run: int
    files: tuple[RecipeFile, ...] = ()
    expect_feedback: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recipe:
    """What the scripted agent changes and when it fails on purpose."""

    files: tuple[RecipeFile, ...] = ()
    fail_stages: frozenset[str] = frozenset()
    fail_attempts: int | None = None  # None: every attempt
    test_command: tuple[str, ...] = DEFAULT_TEST_COMMAND
    source: str = "built-in default recipe"
    rounds: tuple[Round, ...] = ()

    def round_for(self, run: int) -> Round | None:
        """The round of development run ``run``: the last one whose ``run`` <= it."""
        eligible = [r for r in self.rounds if r.run <= run]
        return max(eligible, key=lambda r: r.run) if eligible else None

    def all_files(self) -> tuple[RecipeFile, ...]:
        """Every file the recipe may write, rounds included (for the ADR's plan)."""
        return self.files + tuple(f for r in self.rounds for f in r.files)

    def fails(self, stage: str, attempt: int) -> bool:
        """Whether this recipe makes ``stage`` fail on ``attempt``."""
        if stage not in self.fail_stages:
            return False
        return self.fail_attempts is None or attempt <= self.fail_attempts


@dataclass
class Tally:
    """Characters read and written and actions taken: the basis of the fake usage."""

    chars_read: int = 0
    chars_written: int = 0
    actions: int = 0
    written: list[str] = field(default_factory=list)


def _int_env(env: Mapping[str, str], name: str, *, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise UsageError(f"{name}={value} is below {minimum}")
    return value


def _relative_path(raw: str, what: str) -> str:
    """``raw`` as a clean POSIX path inside the worktree; raise :class:`UsageError` if not."""
    path = PurePosixPath(raw.replace("\\", "/"))
    if not raw.strip() or path.is_absolute() or ".." in path.parts or path.parts[:1] == (".git",):
        raise UsageError(f"{what} {raw!r} must be a relative path inside the worktree")
    return path.as_posix()


def _slug(text: str, separator: str = "-") -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", separator, ascii_text.lower()).strip(separator)


# --- recipes ---------------------------------------------------------------------------

_RECIPE_KEYS: Final = {"files", "behaviour", "testing", "rounds"}
_ROUND_KEYS: Final = {"run", "files", "expect_feedback"}
_FILE_KEYS: Final = {"path", "content", "mode"}
_BEHAVIOUR_KEYS: Final = {"fail_stages", "fail_attempts"}
_TESTING_KEYS: Final = {"command"}


def _table(value: Any, where: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a table")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {sorted(keys)}")
    return value


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UsageError(f"{where} must be a list of strings")
    return list(value)


def parse_recipe(text: str, source: str) -> Recipe:
    """Parse and check a recipe; raise :class:`UsageError` naming ``source`` if it is bad."""
    try:
        data = _table(tomllib.loads(text), f"recipe {source}", _RECIPE_KEYS)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"recipe {source} is not valid TOML: {exc}") from None
    files = _parse_files(data.get("files", []), f"recipe {source}: [[files]]")
    raw_rounds = data.get("rounds", [])
    if not isinstance(raw_rounds, list):
        raise UsageError(f"recipe {source}: 'rounds' must be an array of tables ([[rounds]])")
    rounds: list[Round] = []
    for index, raw in enumerate(raw_rounds, start=1):
        where = f"recipe {source}: [[rounds]] #{index}"
        entry = _table(raw, where, _ROUND_KEYS)
        run = entry.get("run")
        if not isinstance(run, int) or isinstance(run, bool) or run < 1:
            raise UsageError(f"{where}: 'run' must be an integer >= 1 (a development run)")
        if any(existing.run == run for existing in rounds):
            raise UsageError(f"{where}: run {run} has two rounds")
        expected = _string_list(entry.get("expect_feedback", []), f"{where}: expect_feedback")
        round_files = _parse_files(entry.get("files", []), f"{where} [[rounds.files]]")
        rounds.append(Round(run, tuple(round_files), tuple(expected)))
    behaviour = _table(data.get("behaviour", {}), f"recipe {source}: [behaviour]", _BEHAVIOUR_KEYS)
    fail_stages = _string_list(behaviour.get("fail_stages", []), f"recipe {source}: fail_stages")
    fail_attempts = behaviour.get("fail_attempts")
    if fail_attempts is not None and (
        not isinstance(fail_attempts, int) or isinstance(fail_attempts, bool) or fail_attempts < 0
    ):
        raise UsageError(f"recipe {source}: fail_attempts must be an integer >= 0")
    testing = _table(data.get("testing", {}), f"recipe {source}: [testing]", _TESTING_KEYS)
    command = _string_list(
        testing.get("command", list(DEFAULT_TEST_COMMAND)), f"recipe {source}: command"
    )
    if not command:
        raise UsageError(f"recipe {source}: [testing] command is empty")
    return Recipe(
        files=tuple(files),
        fail_stages=frozenset(fail_stages),
        fail_attempts=fail_attempts,
        test_command=tuple(command),
        source=source,
        rounds=tuple(sorted(rounds, key=lambda r: r.run)),
    )


def _parse_files(raw_files: Any, where_list: str) -> list[RecipeFile]:
    if not isinstance(raw_files, list):
        raise UsageError(f"{where_list} must be an array of tables")
    files = []
    for index, raw in enumerate(raw_files, start=1):
        where = f"{where_list} #{index}"
        entry = _table(raw, where, _FILE_KEYS)
        path, content, mode = entry.get("path"), entry.get("content"), entry.get("mode", "write")
        if not isinstance(path, str) or not isinstance(content, str):
            raise UsageError(f"{where} needs 'path' and 'content' strings")
        if mode not in FILE_MODES:
            raise UsageError(f"{where}: mode {mode!r} is not one of {sorted(FILE_MODES)}")
        files.append(RecipeFile(_relative_path(path, f"{where}: path"), content, mode))
    return files


def default_recipe(context: AgentContext) -> Recipe:
    """A small module named after the work item, and a passing test if ``tests/`` exists."""
    name = _slug(context.work_item, "_") or "work_item"
    if name[0].isdigit():
        name = f"wi_{name}"
    module = (
        '"""A change made by the scripted agent of the orchestrator."""\n\n'
        "from __future__ import annotations\n\n"
        f"WORK_ITEM = {context.work_item!r}\n"
        f"TITLE = {context.title!r}\n\n\n"
        "def summary() -> str:\n"
        '    """One line naming the work item and its title."""\n'
        '    return f"{WORK_ITEM}: {TITLE}"\n'
    )
    files = [RecipeFile(f"orch_scripted/{name}.py", module)]
    if (context.worktree / "tests").is_dir():
        test = (
            f"from orch_scripted.{name} import TITLE, WORK_ITEM, summary\n\n\n"
            "def test_summary_names_the_work_item() -> None:\n"
            '    assert summary() == f"{WORK_ITEM}: {TITLE}"\n'
            f"    assert summary().startswith({context.work_item!r})\n"
        )
        files.append(RecipeFile(f"tests/test_orch_scripted_{name}.py", test))
    return Recipe(files=tuple(files))


def load_recipe(explicit: str | None, env: Mapping[str, str], context: AgentContext) -> Recipe:
    """The recipe from ``--recipe``, ``$ORCH_SCRIPTED_RECIPE``, the artifact dir or built in."""
    candidates = [
        (explicit, True),
        (env.get(RECIPE_ENV) or None, True),
        (context.artifact(RECIPE_FILE), False),
    ]
    for raw, required in candidates:
        if raw is None:
            continue
        path = Path(raw)
        if not path.is_absolute():
            path = context.worktree / path
        if not required and not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read recipe {raw}: {exc}") from None
        return parse_recipe(text, raw)
    return default_recipe(context)


# --- output ----------------------------------------------------------------------------


def result_line(tally: Tally, *, stage: str, is_error: bool = False) -> str:
    """One JSON line in the shape of Claude Code's result, with deterministic numbers."""
    input_tokens = max(1, tally.chars_read // CHARS_PER_TOKEN)
    output_tokens = max(1, tally.chars_written // CHARS_PER_TOKEN)
    cost = round((input_tokens + output_tokens) * USD_PER_TOKEN, 6)
    summary = f"{stage}: {len(tally.written)} file(s) written"
    result = {
        "type": "result",
        "subtype": "error_during_execution" if is_error else "success",
        "is_error": is_error,
        "num_turns": max(1, tally.actions),
        "result": f"{stage} failed on purpose" if is_error else summary,
        "total_cost_usd": cost,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
        "modelUsage": {
            MODEL_NAME: {
                "inputTokens": input_tokens,
                "outputTokens": output_tokens,
                "costUSD": cost,
            }
        },
    }
    return json.dumps(result, separators=(",", ":"))


def _say(message: str) -> None:
    print(f"scripted: {message}", flush=True)


def _write(context: AgentContext, tally: Tally, relative: str, text: str, *, append: bool) -> None:
    target = context.worktree / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if append:
        existing = target.read_text(encoding="utf-8") if target.is_file() else ""
        if existing and not existing.endswith("\n"):
            text = "\n" + text
        with target.open("a", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
    else:
        target.write_text(text, encoding="utf-8", newline="\n")
    tally.chars_written += len(text)
    tally.actions += 1
    if relative not in tally.written:
        tally.written.append(relative)
    _say(f"{'appended to' if append else 'wrote'} {relative} ({len(text)} chars)")


# --- stages ----------------------------------------------------------------------------


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", text)
    return [part.strip().rstrip(".").strip() for part in parts if part.strip(" \t-*.")]


def render_brd(context: AgentContext) -> str:
    """The business requirements document for the task."""
    requirements = _sentences(context.description) or [context.title]
    lines = [
        f"# Business requirements: {context.title}",
        "",
        f"Work item: {context.work_item}",
        "",
        "## Problem",
        "",
        context.description or f"The product needs this change: {context.title}.",
        "",
        "## Functional requirements",
        "",
    ]
    lines += [f"{n}. FR-{n}: {text}." for n, text in enumerate(requirements, start=1)]
    n_last = len(requirements) + 1
    lines += [f"{n_last}. FR-{n_last}: Existing behaviour keeps working.", ""]
    lines += ["## Acceptance criteria", ""]
    lines += [
        f"- AC-{n}: an automated test shows FR-{n} holds." for n in range(1, len(requirements) + 1)
    ]
    lines += ["- The existing test suite passes.", ""]
    lines += [
        "## Out of scope",
        "",
        "- Changes to unrelated modules, public interfaces or deployment.",
        "- Performance work beyond what the requirements state.",
        "",
    ]
    if context.feedback:
        lines += ["## Revision notes", "", "Revised after this feedback:", ""]
        lines += [f"> {line}" for line in context.feedback.splitlines()[:20]]
        lines.append("")
    return "\n".join(lines)


def render_adr(context: AgentContext, recipe: Recipe) -> str:
    """The first architecture decision record for the task."""
    planned = [f"- `{f.path}` ({f.mode})" for f in recipe.all_files()] or ["- no file changes"]
    return "\n".join(
        [
            f"# ADR-001: {context.title}",
            "",
            "Status: accepted",
            "",
            "## Context",
            "",
            f"Work item {context.work_item} asks for: {context.description or context.title}",
            f"The requirements are in `{context.artifact(BRD_FILE)}`.",
            "",
            "## Decision",
            "",
            "Make the smallest change that meets the requirements, in the existing code",
            "layout, with tests beside it. Files to change:",
            "",
            *planned,
            "",
            "## Consequences",
            "",
            "- The change is small and reviewable; existing behaviour is untouched.",
            "- New tests guard the new behaviour.",
            "",
        ]
    )


def _analysis(context: AgentContext, recipe: Recipe, tally: Tally) -> None:
    _write(context, tally, context.artifact(BRD_FILE), render_brd(context), append=False)


def _architecture(context: AgentContext, recipe: Recipe, tally: Tally) -> None:
    name = f"ADR-001-{_slug(context.title)[:48].strip('-') or 'decision'}.md"
    path = context.artifact(f"{ADR_DIR}{name}")
    _write(context, tally, path, render_adr(context, recipe), append=False)


def _code_changed(context: AgentContext) -> bool | None:
    """Whether a path outside the work items differs from ``HEAD``; None if git cannot say."""
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "-z", "--untracked-files=all"],
            cwd=context.worktree,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    if status.returncode != 0:
        return None
    docs = (f"{ARTIFACT_ROOT}/", f"{context.artifact_dir}/")
    skip_next = False
    for entry in status.stdout.split("\0"):
        if skip_next or len(entry) < 4:
            skip_next = False
            continue
        code, path = entry[:2], entry[3:]
        skip_next = code[0] in "RC"  # the next entry is the rename's source
        if not path.startswith(docs):
            return True
    return False


def _last_test_report(context: AgentContext) -> str:
    """The testing stage's last report in the worktree ("" if none): the failure report."""
    path = context.worktree / context.artifact(TEST_REPORT_FILE)
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _failing_tests(report: str) -> list[str]:
    """The failing-test lines of a test runner's report."""
    return [line for line in report.splitlines() if line.startswith(("- failure in", "- error in"))]


class _FeedbackMissingError(Exception):
    """A round expected feedback that the agent was not given."""


def _development(context: AgentContext, recipe: Recipe, tally: Tally) -> None:
    run = context.rollback_count + 1
    current = recipe.round_for(run)
    report = _last_test_report(context) if context.rollback_count else ""
    tally.chars_read += len(report)
    if current is not None:
        heard = context.feedback + "\n" + report
        missing = [text for text in current.expect_feedback if text not in heard]
        if missing:
            raise _FeedbackMissingError(
                f"development run {run} (round {current.run}) expected feedback mentioning "
                f"{', '.join(repr(m) for m in missing)}; got none"
            )
        _say(f"development run {run}: round {current.run} ({len(current.files)} file(s))")
    for change in recipe.files + (current.files if current else ()):
        target = context.worktree / change.path
        # Appending is idempotent, so that a re-run converges on the same tree.
        if (
            change.mode == "append"
            and target.is_file()
            and target.read_text(encoding="utf-8").endswith(change.content)
        ):
            _say(f"{change.path} already ends with the recipe's text")
            continue
        _write(context, tally, change.path, change.content, append=change.mode == "append")
    changed = _code_changed(context)
    all_files = recipe.files + (current.files if current else ())
    if changed is None:
        _say("warning: git status failed; cannot tell whether code changed")
    elif not changed:
        revised = next((f.path for f in all_files if f.path.endswith(".py")), None)
        if revised is None:
            _say("warning: nothing changed and the recipe has no .py file to revise")
        else:
            comment = (
                f"# revised after feedback (attempt {context.attempt}, "
                f"rollback {context.rollback_count})\n"
            )
            _write(context, tally, revised, comment, append=True)
    notes = [
        f"# Development notes: {context.title}",
        "",
        f"Work item: {context.work_item}",
        f"Attempt: {context.attempt} (rollback {context.rollback_count})",
        f"Recipe: {recipe.source}" + (f", round {current.run}" if current else ""),
        "",
        "## Files changed",
        "",
        *(f"- `{path}`" for path in tally.written),
        "",
    ]
    failing = _failing_tests(report)
    if failing:
        notes += ["## Failing tests reported by the last test run", "", *failing, ""]
    if context.feedback:
        notes += [
            "## Feedback addressed",
            "",
            *(f"> {line}" for line in context.feedback.splitlines()[:20]),
            "",
        ]
    _write(context, tally, context.artifact(DEV_NOTES_FILE), "\n".join(notes), append=False)


def _run_tests(command: list[str], worktree: Path) -> tuple[int, str]:
    # The child stays in this process group: the engine stops the agent's whole group.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        done = subprocess.run(
            command,
            cwd=worktree,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
            timeout=TEST_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        return EXIT_NOT_FOUND, f"command not found: {command[0]}"
    except subprocess.TimeoutExpired as exc:
        output = exc.output if isinstance(exc.output, str) else ""
        return EXIT_TIMEOUT, f"{output}\ntimed out after {TEST_TIMEOUT_S}s"
    return done.returncode, done.stdout


def render_test_report(
    context: AgentContext, command: list[str], exit_code: int, output: str
) -> str:
    """A test report whose three verdict fields agree with the exit code."""
    verdict = "PASS" if exit_code == 0 else "FAIL"
    log = output.rstrip("\n").splitlines()
    tail = log[-LOG_TAIL_LINES:]
    first = len(log) - len(tail) + 1
    summary = next((line.strip() for line in reversed(log) if line.strip()), "(no output)")
    lines = [
        f"# Test report: {context.work_item}",
        "",
        f"result: {verdict}",
        f"status: {verdict}",
        f"exit_code: {exit_code}",
        "",
        f"Command: `{shlex.join(command)}`",
        f"Attempt: {context.attempt} (rollback {context.rollback_count})",
        f"Summary: {summary}",
        "",
        f"## Log tail (last {len(tail)} of {len(log)} lines)",
        "",
        "```text",
        # Numbered, so that no log line can read as a verdict field to the gate's parser.
        *(f"{number:5d}  {line}" for number, line in enumerate(tail, start=first)),
        "```",
        "",
    ]
    return "\n".join(lines)


def _testing(context: AgentContext, recipe: Recipe, tally: Tally) -> None:
    command = [part.replace("{python}", sys.executable) for part in recipe.test_command]
    _say(f"running {shlex.join(command)}")
    exit_code, output = _run_tests(command, context.worktree)
    tally.chars_read += len(output)
    tally.actions += 1
    _say(f"tests exited with {exit_code}")
    report = render_test_report(context, command, exit_code, output)
    _write(context, tally, context.artifact(TEST_REPORT_FILE), report, append=False)


def _note(file_name: str, what: str) -> Callable[[AgentContext, Recipe, Tally], None]:
    def stage(context: AgentContext, recipe: Recipe, tally: Tally) -> None:
        text = (
            f"# {what}: {context.work_item}\n\n"
            f"The scripted agent {what.lower()}s nothing; it claims no verdict.\n"
            "Configure a runner (runner:staging, runner:deploy) for a real one.\n"
        )
        _write(context, tally, context.artifact(file_name), text, append=False)

    return stage


STAGE_ACTIONS: Final[Mapping[str, Callable[[AgentContext, Recipe, Tally], None]]] = {
    "analysis": _analysis,
    "architecture": _architecture,
    "development": _development,
    "testing": _testing,
    "deploy-staging": _note(STAGING_NOTES_FILE, "Stage"),
    "deploy": _note(DEPLOY_NOTES_FILE, "Deploy"),
}


# --- command line ----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m orchestrator.agents.scripted",
        description="The deterministic, offline agent of the orchestrator.",
    )
    parser.add_argument("--stage", required=True, help=f"one of: {', '.join(STAGES)}")
    parser.add_argument(
        "--recipe",
        help=f"recipe TOML (default: ${RECIPE_ENV}, then "
        f"<artifact dir>/{RECIPE_FILE}, then built in)",
    )
    return parser


def _run(argv: list[str] | None, env: Mapping[str, str], worktree: Path) -> int:
    args = _parser().parse_args(argv)
    stage: str = args.stage
    if stage not in STAGE_ACTIONS:
        raise UsageError(f"unknown stage {stage!r}; the scripted agent knows: {', '.join(STAGES)}")
    context = AgentContext.from_env(stage, env, worktree)
    recipe = load_recipe(args.recipe, env, context)
    tally = Tally(
        chars_read=len(context.prompt)
        + len(context.title)
        + len(context.description)
        + len(context.feedback)
    )
    _say(f"{stage} for {context.work_item}, attempt {context.attempt} ({recipe.source})")
    if recipe.fails(stage, context.attempt):
        limit = f"attempts <= {recipe.fail_attempts}"
        if recipe.fail_attempts is None:
            limit = "every attempt"
        print(
            f"scripted: failing {stage} on purpose: recipe {recipe.source} lists it in "
            f"fail_stages ({limit}); this is attempt {context.attempt}",
            file=sys.stderr,
        )
        print(result_line(tally, stage=stage, is_error=True), flush=True)
        return 1
    try:
        STAGE_ACTIONS[stage](context, recipe, tally)
    except _FeedbackMissingError as exc:
        print(f"scripted: failing {stage} on purpose: {exc}", file=sys.stderr)
        print(result_line(tally, stage=stage, is_error=True), flush=True)
        return 1
    print(result_line(tally, stage=stage), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one stage in the current directory; return the exit code."""
    try:
        return _run(argv, os.environ, Path.cwd())
    except UsageError as exc:
        _complain(str(exc))
        return exc.exit_code
    except OSError as exc:
        _complain(str(exc))
        return 1


def _complain(message: str) -> None:
    # Always one line, so that whoever started the agent can show it as the reason.
    print(f"scripted: error: {' '.join(message.split())}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
