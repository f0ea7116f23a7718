"""The ``orch`` command line.

Human-first output (tables, live progress) with ``--json`` on every read command for
scripts (moments as ISO 8601 UTC strings, as the HTTP API shows them:
:mod:`orchestrator.api.format`). Errors are one line on stderr: exit code 2 for usage
errors, 1 for failures, and no traceback unless ``--debug``.

Both consoles have Rich markup off: titles, reasons, paths and setting values are user
text, and ``[bug] crash`` must print as written. Styling is applied with ``style=`` or
:class:`rich.text.Text`, never by formatting markup around user text.

Start-up is kept short (docs/architecture.md, "Command-line start-up"): this module
imports only click and what every command needs; the settings (pydantic), the store
(SQLAlchemy), Rich and each command's own modules are imported inside the commands that
use them, and ``orch dev`` (the model server's HTTP stack) only when one of its commands
is asked for. ``orch --help`` loads none of them; ``tests/e2e/test_cli_startup.py``
holds that line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from orchestrator import __version__
from orchestrator.api.cost_limits import DEFAULT_TOP, MAX_TOP
from orchestrator.auth import ROLES, TokenKind, local_actor, refuse_inside_job
from orchestrator.errors import ConfigError, NotFoundError, OrchestratorError, UsageError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from orchestrator.cli.progress import JobBoard
    from orchestrator.lifecycle.next_steps import NextSteps
    from orchestrator.lifecycle.service import TaskService
    from orchestrator.outbox.notifier import Notifier
    from orchestrator.settings import Settings, SettingSource
    from orchestrator.store import AgentRun, Store, Task

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


class _LazyConsole:
    """A Rich console made when something is first printed: importing Rich costs more
    than ``orch --help`` itself, and ``--help``, ``--version`` and ``--json`` print
    through click."""

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console  # noqa: PLC0415 - see the class docstring

            self._console = Console(
                stderr=self._stderr, highlight=False, soft_wrap=True, markup=False
            )
        return self._console

    @property
    def is_terminal(self) -> bool:
        return self.console.is_terminal

    def print(self, *objects: Any, **options: Any) -> None:
        """:meth:`rich.console.Console.print`."""
        self.console.print(*objects, **options)


out = _LazyConsole()
err = _LazyConsole(stderr=True)
# Variables that name where the data lives without an orch.toml (see require_config).
LOCATION_VARIABLES = ("ORCH_CONFIG", "ORCH_DATABASE_URL", "ORCH_DATA_DIR")
# `orch run` stopped by Ctrl-C (the shell's 128 + SIGINT).
EXIT_INTERRUPTED = 130
# How often `orch task logs --follow` looks for new output.
LOG_FOLLOW_POLL_S = 0.5


@dataclass
class Context:
    config: Path | None
    debug: bool
    _settings: Settings | None = None
    _store: Store | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from orchestrator.settings import load_settings  # noqa: PLC0415 - pydantic

            self._settings = load_settings(self.config)
        return self._settings

    @property
    def store(self) -> Store:
        if self._store is None:
            from orchestrator.store import Store  # noqa: PLC0415 - SQLAlchemy

            self._store = Store.open(self.settings.effective_database_url)
        return self._store

    def override_settings(self, values: dict[str, Any]) -> None:
        """Command-line options over every other source (e.g. `serve --port`)."""
        self._settings = self.settings.model_copy(update=values)

    @property
    def config_path(self) -> Path | None:
        """The orch.toml in use: --config, $ORCH_CONFIG or ./orch.toml; None when none."""
        from orchestrator.settings import find_config_file  # noqa: PLC0415 - pydantic

        return find_config_file(self.config)

    def where(self) -> str:
        """One line naming the orch.toml and the database this command uses."""
        path = self.config_path
        config = str(path.resolve()) if path is not None else "none found"
        return f"config: {config} · database: {display_database(self.settings)}"

    def warn_without_config(self) -> None:
        """On stderr: no orch.toml was found, so defaults (and ORCH_*) are in use."""
        if self.config_path is None:
            err.print(
                f"warning: no orch.toml in {Path.cwd()} (nor --config or ORCH_CONFIG); "
                "using defaults and ORCH_* variables",
                style="yellow",
            )

    def require_config(self, command: str) -> None:
        """Refuse to create a database in a directory nobody configured.

        Without orch.toml (here, --config or $ORCH_CONFIG) and without
        ORCH_DATABASE_URL / ORCH_DATA_DIR, ``command`` would silently make
        ``.orch/orch.db`` in whatever directory it was started from.
        """
        if self.config_path is not None or any(os.environ.get(v) for v in LOCATION_VARIABLES):
            return
        raise ConfigError(
            f"no orch.toml in {Path.cwd()} (nor --config or ORCH_CONFIG): run `orch init` "
            f"here first, or pass --config PATH; `orch {command}` does not create a database "
            "without one"
        )

    def has_database(self) -> bool:
        """False when the SQLite file does not exist yet: reads must not create it."""
        from orchestrator.store import sqlite_path  # noqa: PLC0415 - SQLAlchemy

        path = sqlite_path(self.settings.effective_database_url)
        return path is None or path.exists()

    def service(self) -> TaskService:
        from orchestrator.lifecycle.service import TaskService  # noqa: PLC0415 - git, agents

        return TaskService(self.store, self.settings, self.notifier())

    def notifier(self) -> Notifier:
        """The console, plus the outbox: the Telegram card, tracker write-back."""
        from orchestrator.integrations import build_notifier  # noqa: PLC0415 - keep --help fast

        return build_notifier(self.settings, self.store)

    def task(self, ref: str, repo: Path | None = None) -> Task:
        if not self.has_database():
            raise NotFoundError(f"no task {ref!r}: no tasks exist yet (no database)")
        repository = str(repo.expanduser().resolve()) if repo else None
        return self.store.find_task(ref, repository)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


pass_context = click.make_pass_decorator(Context)


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"error: {message}")
    sys.exit(code)


def display_database(settings: Settings) -> str:
    """The database URL for people: a SQLite file as its path, passwords hidden."""
    from orchestrator.store import database_label  # noqa: PLC0415 - SQLAlchemy

    return database_label(settings.effective_database_url)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def _task_json(
    store: Store, task: Task, *, full: bool = False, steps: NextSteps | None = None
) -> dict[str, Any]:
    from orchestrator.api.format import with_iso_times  # noqa: PLC0415 - a read command's

    data = with_iso_times(task.to_dict())
    data["failed"] = task.failed
    if steps is not None:
        data.update(steps.to_dict())
    if full:
        runs = store.task_runs(task.id)
        data["events"] = [with_iso_times(event.to_dict()) for event in store.task_events(task.id)]
        data["jobs"] = [with_iso_times(job.to_dict()) for job in store.task_jobs(task.id)]
        data["runs"] = [with_iso_times(run.to_dict()) for run in runs]
        data["cost_usd"] = round(sum(run.cost_usd for run in runs), 6)
    return data


def _state(task: Task, language: str) -> str:
    from orchestrator.kernel.stages import stage_label  # noqa: PLC0415 - a read command's

    if task.failed:
        return f"failed at {stage_label(task.stage, language)}"
    return stage_label(task.stage, language)


class _Group(click.Group):
    """Turns our errors into one line and an exit code; tracebacks only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OrchestratorError as exc:
            if _debug_requested():
                raise
            _fail(str(exc), exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as exc:
            if _debug_requested():
                raise
            _fail(
                f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
                1,
            )


def _debug_requested() -> bool:
    return "--debug" in sys.argv


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Path of orch.toml (default: ./orch.toml, or $ORCH_CONFIG).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(__version__, prog_name="orch")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, debug: bool) -> None:
    """orchestrator: a delivery pipeline for AI coding agents.

    A task moves through analysis, BRD approval, architecture, development,
    testing, staging and deploy; each stage is a job in the task's own git
    worktree, judged by quality gates. Start with `orch demo`.
    """
    import logging  # noqa: PLC0415 - not for --help and --version

    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    context = Context(config, debug)
    ctx.obj = context
    ctx.call_on_close(context.close)


# --- init / db / config -----------------------------------------------------------------
INIT_TEMPLATE = """\
# orchestrator settings. ORCH_* environment variables override these values.
# Every key is explained by `orch config show` and in docs/settings.md.

# data_dir = ".orch"                # database, worktrees and logs (next to this file)
# database_url = "postgresql+psycopg://postgres@127.0.0.1:5432/orch"
# max_attempts = 3                  # attempts of one stage before the task fails
# max_rollbacks = 2                 # rollbacks to development before the task fails
# agent_timeout_s = 3600
# task_budget_usd = 20.0            # per task, until a person retries it; 0 = no limit
# language = "en"                   # stage labels: en or ru

# Integrations (docs/integrations.md); keep tokens and secrets in ORCH_* variables.
# telegram_chat_id = "-1001234567890" # with ORCH_TELEGRAM_BOT_TOKEN: the live card
# tracker_mode = "edit"             # the card: "edit" in place or "bump" to the bottom
# forge = "local"                   # or "gitea", "github": forge_base_url, forge_repo
# merge_method = "merge"            # or "squash", "rebase"
# tracker = "local"                 # or "plane", "github" (issues)

# API access (docs/security.md): `orch init` wrote an operator token to
# <data_dir>/api-token; `orch token create NAME --role viewer|operator|admin` makes more.
# public_read = false               # reads without a token
# allowed_hosts = ["localhost", "127.0.0.1", "::1"]  # add your reverse proxy's name
# telegram_allowed_users = ["@alice", "123456789"]   # who may press buttons; empty: no one

# The agent that works on each stage. Built in: "claude" (Claude Code),
# "scripted" (offline, deterministic), and the runners "runner:tests",
# "runner:staging", "runner:deploy".
[stages.analysis]
agent = "claude"
[stages.architecture]
agent = "claude"
[stages.development]
agent = "claude"

# [agents.claude]                  # Claude Code; see docs/agents.md
# adapter = "claude-code"
# model = "claude-sonnet-4-5"
# max_turns = 60
# budget_usd = 5.0                 # per run

# Per-repository overrides, by directory name or with path = "...". POST /tasks and
# webhook intake only take repositories listed here with a path (allow_any_repo = true
# lifts that):
# [repos.myservice]
# skip = ["deploy-staging"]
# test_command = "make test"
"""


@cli.command()
@click.option("--force", is_flag=True, help="Overwrite an existing orch.toml.")
@pass_context
def init(context: Context, force: bool) -> None:
    """Write a commented orch.toml here and create the database."""
    from orchestrator.auth import issue_token, token_file, write_token_file  # noqa: PLC0415

    target = context.config or Path("orch.toml")
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists; use --force to overwrite it")
    refuse_inside_job(os.environ, "orch init")
    target.write_text(INIT_TEMPLATE, encoding="utf-8")
    context.config = target
    store = context.store
    out.print(f"wrote {target}")
    out.print(f"database ready: {store.engine.url.render_as_string()}")
    # The local CLI's own API token (operator): a fresh one at every init.
    actor = local_actor()
    name = f"local-{actor.removeprefix('cli:')}"[:64]
    name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
    store.revoke_api_token(name, actor=actor, event_kind=TokenKind.REVOKED)
    secret = issue_token(store, name, "operator", actor=actor)
    path = token_file(context.settings)
    write_token_file(path, secret)
    out.print(
        f"API token {name} (operator) written to {path} (mode 0600); use it as "
        f"'Authorization: Bearer $(cat {path})'",
        markup=False,
    )
    out.print("next: orch task create --repo PATH --title TEXT, then orch run")


@cli.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
@pass_context
def db_upgrade(context: Context) -> None:
    """Apply the database migrations (they also run at every start)."""
    from orchestrator.store import Store  # noqa: PLC0415 - SQLAlchemy

    store = Store(context.settings.effective_database_url)
    try:
        before, after = store.upgrade()
    finally:
        store.close()
    if before == after:
        out.print(f"database is up to date (revision {after})")
    else:
        out.print(f"database upgraded: {before or 'empty'} -> {after}")


@cli.group()
def config() -> None:
    """Inspect the effective settings."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def config_show(context: Context, as_json: bool) -> None:
    """Print every setting, its value, where it came from and what it means."""
    from orchestrator.settings import describe_settings  # noqa: PLC0415 - pydantic

    described = describe_settings(context.settings, context.config)
    database = display_database(context.settings)
    if as_json:
        shown = {d.name: _setting_json(d) for d in described}
        shown["database_url"]["effective"] = database
        _print_json(shown)
        return
    path = context.config_path
    out.print(f"config:   {path.resolve() if path else 'none found (defaults and ORCH_* only)'}")
    out.print(f"database: {database}")
    for item in described:
        text = _setting_text(item)
        if item.name == "database_url" and item.value is None:
            text = _setting_text(item, shown=f"unset: {database}")
        out.print()
        out.print(text)


def _setting_json(item: SettingSource) -> dict[str, Any]:
    return {"value": item.value, "source": item.source, "description": item.description}


def _setting_text(item: SettingSource, shown: str | None = None) -> Text:
    """``name = value  (source)`` and the meaning under it; never truncated (no table)."""
    from rich.text import Text  # noqa: PLC0415 - Rich only where it prints

    value = shown if shown is not None else json.dumps(item.value, default=str)
    text = Text.assemble((item.name, "bold"), " = ", value, (f"  ({item.source})", "dim"))
    if item.description:
        text.append(f"\n    {item.description}")
    return text


@config.command("reference")
def config_reference() -> None:
    """Print the settings reference (markdown) kept in docs/settings.md."""
    from orchestrator.settings_reference import render_settings_reference  # noqa: PLC0415

    click.echo(render_settings_reference(), nl=False)


# --- tasks ------------------------------------------------------------------------------
@cli.group()
def task() -> None:
    """Create, inspect and steer tasks."""


@task.command("create")
@click.option(
    "--repo", "repo", required=True, type=click.Path(path_type=Path), help="Repository path."
)
@click.option("--title", required=True, help="What the task is, in one line.")
@click.option("--work-item", default=None, help="Work item id (default: TASK-<n>).")
@click.option("--description", default="", help="Details for the agents.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def task_create(
    context: Context,
    repo: Path,
    title: str,
    work_item: str | None,
    description: str,
    as_json: bool,
) -> None:
    """Create a task; its first job is queued for `orch run` or `orch serve`."""
    from orchestrator.lifecycle.service import prepare_create  # noqa: PLC0415 - git, agents

    refuse_inside_job(os.environ, "creating a task")
    context.require_config("task create")
    # Check everything before the database is even opened: bad input writes nothing.
    prepare_create(
        context.settings, repo_path=repo, title=title, work_item=work_item, description=description
    )
    created = context.service().create_task(
        repo_path=repo,
        title=title,
        work_item=work_item,
        description=description,
        actor=local_actor(),
    )
    if as_json:
        _print_json(_task_json(context.store, created))
        return
    out.print(
        f"created {created.work_item} in {created.repository} "
        f"(branch {created.branch}, stage {created.stage})"
    )
    out.print("run it: orch run   (or keep `orch serve` running)")


@task.command("list")
@click.option("--stage", default=None, help="Only tasks in this stage.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def task_list(context: Context, stage: str | None, as_json: bool) -> None:
    """List tasks, newest first."""
    from rich.table import Table  # noqa: PLC0415 - Rich only where it prints

    from orchestrator.api.format import format_age  # noqa: PLC0415 - one command's

    context.warn_without_config()
    tasks = context.store.list_tasks(stage=stage) if context.has_database() else []
    if as_json:
        _print_json([_task_json(context.store, t) for t in tasks])
        return
    out.print(context.where(), style="dim")
    if not tasks:
        out.print("no tasks yet: orch task create --repo PATH --title TEXT")
        return
    language = context.settings.language
    table = Table("work item", "stage", "attempt", "title", "repository", "updated", box=None)
    for t in tasks:
        table.add_row(
            t.work_item,
            _state(t, language),
            str(t.attempt),
            t.title,
            Path(t.repository).name,
            format_age(time.time() - t.updated_at) + " ago",
        )
    out.print(table)


repo_option = click.option(
    "--repo", type=click.Path(path_type=Path), default=None, help="Repository, if ids clash."
)


@task.command("show")
@click.argument("ref")
@repo_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def task_show(context: Context, ref: str, repo: Path | None, as_json: bool) -> None:
    """Show a task: its stage, what to do next, its runs and its events trail."""
    from rich.table import Table  # noqa: PLC0415 - Rich only where it prints
    from rich.text import Text  # noqa: PLC0415

    from orchestrator.cli.progress import task_summary_rows  # noqa: PLC0415 - one command's
    from orchestrator.kernel.events import EventKind  # noqa: PLC0415
    from orchestrator.lifecycle.next_steps import next_steps  # noqa: PLC0415

    found = context.task(ref, repo)
    store = context.store
    events = store.task_events(found.id)
    steps = next_steps(
        found,
        events,
        options=["--config", str(context.config)] if context.config else [],
        repo=found.repository if repo else None,
    )
    if as_json:
        _print_json(_task_json(store, found, full=True, steps=steps))
        return
    language = context.settings.language
    out.print(Text.assemble((found.work_item, "bold"), "  ", found.title))
    out.print(f"stage:      {_state(found, language)}")
    if found.failed_reason:
        out.print(f"failed:     {found.failed_reason}")
    out.print(f"repository: {found.repository}  (branch {found.branch} from {found.base_branch})")
    if found.worktree_removed_at is None:
        out.print(f"worktree:   {found.worktree}", markup=False)
    else:
        removed = time.strftime("%Y-%m-%d %H:%M", time.localtime(found.worktree_removed_at))
        removal = next(
            (e.data or {} for e in reversed(events) if e.kind == EventKind.WORKTREE_REMOVED), {}
        )
        where = f"the branch {found.branch} keeps the commits"
        if removal.get("branch_deleted"):
            where = f"the branch {found.branch} was deleted, merged into {found.base_branch}"
            if removal.get("remote") and not removal.get("remote_branch_deleted"):
                where += f"; it stays on {removal['remote']}"
        out.print(f"worktree:   removed {removed} ({where})", markup=False)
    _print_next_steps(steps, found)
    runs = store.task_runs(found.id)
    summary = Table("stage", "agent", "attempts", "duration", "cost", "result", box=None)
    for row in task_summary_rows(store, found):
        summary.add_row(*row)
    out.print()
    out.print(summary)
    out.print(f"total cost: ${sum(r.cost_usd for r in runs):.4f}")
    out.print()
    out.print("events", style="bold")
    for event in events:
        stage = (
            f"{event.from_stage} -> {event.to_stage}"
            if event.from_stage
            else (event.to_stage or "")
        )
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.created_at))
        out.print(f"{when}  {event.kind:<14} {stage:<28} {event.actor:<10} {event.reason}")


def _print_next_steps(steps: NextSteps, task: Task) -> None:
    """The gate's document and commands, the retry command, or the merge commit."""
    if steps.artifact:
        out.print(f"read:       {steps.artifact}", markup=False)
    if steps.merge_commit:
        out.print(f"merged:     {steps.merge_commit} on {task.base_branch}", markup=False)
    for action, command in steps.commands.items():
        label = f"{action}:".ljust(11)
        suffix = "   (after fixing the cause)" if action == "retry" else ""
        out.print(f"{label} {command}{suffix}", markup=False)


def _human_action(name: str, doc: str) -> None:
    @task.command(name, help=doc)
    @click.argument("ref")
    @repo_option
    @click.option("--reason", default="", help="Why (kept in the events trail).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @pass_context
    def command(context: Context, ref: str, repo: Path | None, reason: str, as_json: bool) -> None:
        refuse_inside_job(os.environ, f"orch task {name}")
        found = context.task(ref, repo)
        service = context.service()
        actor = local_actor()
        if name == "approve":
            after = service.approve(found, actor=actor)
        elif name == "cancel":
            after = service.cancel(found, actor=actor, reason=reason)
        elif name == "rollback":
            after = service.rollback(found, actor=actor, reason=reason)
        else:
            after = service.retry(found, actor=actor)
        if as_json:
            _print_json(_task_json(context.store, after))
        else:
            state = _state(after, context.settings.language)
            out.print(f"{after.work_item}: {name} done; now {state}")


_human_action("approve", "Approve the BRD so the task moves on to architecture.")
_human_action("cancel", "Cancel a task; a running job is stopped.")


@task.command("reject")
@click.argument("ref")
@repo_option
@click.option(
    "--feedback",
    required=True,
    help="What must change; the analysis agent gets it in its prompt and $ORCH_FEEDBACK.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def task_reject(
    context: Context, ref: str, repo: Path | None, feedback: str, as_json: bool
) -> None:
    """Send the BRD back to analysis with feedback (at brd-approval)."""
    refuse_inside_job(os.environ, "orch task reject")
    found = context.task(ref, repo)
    after = context.service().reject(found, feedback=feedback, actor=local_actor())
    if as_json:
        _print_json(_task_json(context.store, after))
        return
    state = _state(after, context.settings.language)
    out.print(
        f"{after.work_item}: rejected; now {state}, its next run gets your feedback "
        "(orch run, or orch serve)",
        markup=False,
    )


_human_action("rollback", "Send a task back to development (from testing, staging, deploy).")
_human_action("retry", "Resume a failed task at its stage with fresh attempt budgets.")


@task.command("logs")
@click.argument("ref")
@repo_option
@click.option("--stage", default=None, help="Only runs of this stage.")
@click.option("--all", "all_runs", is_flag=True, help="Every run, not just the last.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: the runs with their logs.")
@click.option(
    "--follow", "-f", is_flag=True, help="Keep printing the last run's log as it is written."
)
@pass_context
def task_logs(
    context: Context,
    ref: str,
    repo: Path | None,
    stage: str | None,
    all_runs: bool,
    as_json: bool,
    follow: bool,
) -> None:
    """Print the log of the task's last run (or of all runs); secrets are masked."""
    from orchestrator.api.format import with_iso_times  # noqa: PLC0415 - one command's

    if follow and (all_runs or as_json):
        raise UsageError("--follow prints one run as it is written; leave out --all and --json")
    found = context.task(ref, repo)
    secrets = context.settings.log_mask_values
    runs = [
        run
        for run in context.store.task_runs(found.id)
        if stage is None or _run_stage(context.store, run.job_id) == stage
    ]
    chosen = runs if all_runs else runs[-1:]
    if as_json:
        _print_json(
            [
                {
                    **with_iso_times(run.to_dict()),
                    "stage": _run_stage(context.store, run.job_id),
                    "log": _log(run, secrets),
                }
                for run in chosen
            ]
        )
        return
    if not runs:
        out.print(f"{found.work_item} has no runs yet")
        return
    for run in chosen:
        out.print(_run_header(context.store, run), style="bold")
        if follow:
            _follow_log(context.store, run, secrets)
        else:
            click.echo(_log(run, secrets) or "(empty log)")


def _run_header(store: Store, run: AgentRun) -> str:
    return (
        f"== {_run_stage(store, run.job_id)} · {run.agent} · attempt {run.attempt} "
        f"· exit {run.exit_code} · {run.log_path}"
    )


def _log(run: AgentRun, secrets: frozenset[str]) -> str:
    from orchestrator.api.run_logs import masked_log, read_log  # noqa: PLC0415 - one command's

    return masked_log(read_log(Path(run.log_path)).text, secrets)


def _follow_log(store: Store, run: AgentRun, secrets: frozenset[str]) -> None:
    """Print the run's log, then what is written to it until the run ends; Ctrl-C
    leaves quietly (exit 0): the run goes on, only the watching stops."""
    from orchestrator.api.run_logs import (  # noqa: PLC0415 - one command's
        LogFollower,
        masked_log,
        read_log,
        run_ended,
    )

    first = read_log(Path(run.log_path), whole_lines=True)
    follower = LogFollower(Path(run.log_path), first.end)
    try:
        click.echo(masked_log(first.text, secrets), nl=False)
        while True:
            ended = run_ended(store, run)
            # Read after the check: a run that ended wrote all it will write.
            while text := follower.read_new(final=ended):
                click.echo(masked_log(text, secrets), nl=False)
            if ended:
                break
            time.sleep(LOG_FOLLOW_POLL_S)
    except KeyboardInterrupt:
        sys.exit(0)
    final = store.agent_run(run.id)
    code = final.exit_code if final is not None else None
    out.print(f"\n== the run ended (exit {code})", style="dim")


def _run_stage(store: Store, job_id: int) -> str:
    return store.get_job(job_id).stage


# --- API tokens ---------------------------------------------------------------------------
@cli.group()
def token() -> None:
    """API tokens: who may read and steer tasks over HTTP (docs/security.md)."""


@token.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    required=True,
    help="viewer: read; operator: also create and steer tasks; admin: everything.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def token_create(context: Context, name: str, role: str, as_json: bool) -> None:
    """Create a token; its secret is shown once, only its hash is kept."""
    from orchestrator.auth import issue_token  # noqa: PLC0415 - hashing, secrets

    refuse_inside_job(os.environ, "creating an API token")
    secret = issue_token(context.store, name, role, actor=local_actor())
    if as_json:
        _print_json({"name": name, "role": role, "token": secret})
        return
    out.print(f"token {name} ({role}) created; it is shown only now:", markup=False)
    click.echo(secret)
    out.print("send it as: Authorization: Bearer <token>", markup=False)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def token_list(context: Context, as_json: bool) -> None:
    """List tokens: name, role, who created them and when (never the secrets)."""
    from rich.table import Table  # noqa: PLC0415 - Rich only where it prints

    from orchestrator.api.format import with_iso_times  # noqa: PLC0415 - one command's

    tokens = context.store.api_tokens() if context.has_database() else []
    if as_json:
        _print_json([with_iso_times(t.to_dict()) for t in tokens])
        return
    if not tokens:
        out.print("no API tokens: orch token create NAME --role operator")
        return
    table = Table("name", "role", "created by", "created", box=None)
    for t in tokens:
        table.add_row(
            t.name,
            t.role,
            t.created_by,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t.created_at)),
        )
    out.print(table)


@token.command("revoke")
@click.argument("name")
@pass_context
def token_revoke(context: Context, name: str) -> None:
    """Revoke a token: requests with it are refused from now on."""
    refuse_inside_job(os.environ, "revoking an API token")
    if not context.has_database() or not context.store.revoke_api_token(
        name, actor=local_actor(), event_kind=TokenKind.REVOKED
    ):
        raise NotFoundError(f"no token named {name!r}; orch token list shows them")
    out.print(f"token {name} revoked", markup=False)


@cli.command("costs")
@click.option(
    "--since",
    default=None,
    metavar="DATE",
    help="Start of the period, ISO 8601 (2026-12-01 or 2026-12-01T09:30:00Z; "
    "UTC unless an offset is given). Default: 30 days before --until.",
)
@click.option(
    "--until",
    default=None,
    metavar="DATE",
    help="End of the period, excluded, ISO 8601 as for --since. Default: now.",
)
@click.option(
    "--top",
    type=click.IntRange(1, MAX_TOP),
    default=DEFAULT_TOP,
    show_default=True,
    help="How many of the costliest tasks (and budget rows) to show.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the GET /costs answer).")
@pass_context
def costs_command(
    context: Context, since: str | None, until: str | None, top: int, as_json: bool
) -> None:
    """What agent runs spent over a period, and how close running tasks are to budget.

    Spend per UTC day, per repository, per agent and model, per stage, and the
    costliest tasks, counting each run in the period it started in; then every task
    with a job running against its task_budget_usd, and every running job against
    its run budget.
    """
    from orchestrator.api.costs import cost_report, parse_period  # noqa: PLC0415 - one command's
    from orchestrator.cli.costs import cost_report_renderables  # noqa: PLC0415

    period = parse_period(since, until, time.time())
    context.warn_without_config()
    if not context.has_database():
        raise NotFoundError(
            f"no database at {display_database(context.settings)}: nothing was spent yet"
        )
    report = cost_report(context.store, context.settings, period, top)
    if as_json:
        _print_json(report.to_dict())
        return
    out.print(context.where(), style="dim")
    for renderable in cost_report_renderables(report):
        out.print(renderable)


# --- running ----------------------------------------------------------------------------
@contextmanager
def _engine_running(
    context: Context, interrupted: threading.Event | None = None
) -> Iterator[tuple[Any, threading.Event]]:
    """An engine for the foreground. On the way out its running jobs are killed, unless
    ``interrupted`` is set (Ctrl-C): then they are left running for the next engine."""
    from orchestrator.engine.core import Engine  # noqa: PLC0415 - keep `orch --help` fast
    from orchestrator.integrations import build_outbox_notifier  # noqa: PLC0415

    # `orch run` prints its own progress: only the outbox's notifiers, not the console.
    notifier = build_outbox_notifier(context.settings, context.store)
    engine = Engine(context.store, context.settings, notifier)
    stop = threading.Event()
    try:
        yield engine, stop
    finally:
        stop.set()
        engine.shutdown(kill=interrupted is None or not interrupted.is_set())


@contextmanager
def _first_ctrl_c_stops(
    stop: threading.Event, interrupted: threading.Event
) -> Iterator[threading.Event]:
    """The first Ctrl-C (SIGINT) sets ``stop`` and ``interrupted``: the engine ends its
    tick and returns, so nothing is cut off half-way. A second one interrupts at once;
    ``interrupted`` is set either way, so the jobs are left running, never killed."""
    if threading.current_thread() is not threading.main_thread():
        yield interrupted  # signals can only be handled in the main thread
        return

    def handle(_signum: int, _frame: FrameType | None) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        stop.set()

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _report_interrupted(store: Store, jobs: list[Any]) -> None:
    """Say what Ctrl-C left behind: running jobs go on, to be adopted; none failed."""
    if not jobs:
        out.print("interrupted: no job was running", style="yellow")
    for job in jobs:
        current = store.get_job(job.id)
        work_item = store.get_task(current.task_id).work_item
        out.print(
            f"interrupted: {work_item} {current.stage} ({current.agent}, attempt "
            f"{current.attempt}, pid {current.pid}) is left running, not counted as failed; "
            "the next `orch run` or `orch serve` adopts it",
            style="yellow",
        )
    waiting = len(store.jobs_by_status(("queued", "deferred")))
    if waiting:
        out.print(f"{waiting} job(s) stay queued for the next `orch run` or `orch serve`")


def _deliver_outbox(context: Context, engine: Any) -> None:
    """One delivery sweep of the outbox (cards, write-back) before `orch run` returns;
    what fails stays queued for the next `orch run` or `orch serve`."""
    from orchestrator.integrations import build_delivery  # noqa: PLC0415

    delivery = build_delivery(
        context.settings,
        context.store,
        owner=engine.boot_id,
        is_alive=engine.runtime.leases.instance_alive,
    )
    if delivery is not None:
        try:
            delivery.deliver_due()
        finally:
            delivery.close()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary at the end.")
@pass_context
def run(context: Context, as_json: bool) -> None:
    """Run queued jobs in the foreground until nothing is left to do.

    Tasks waiting for a human (BRD approval) or failed are left as they are;
    `orch run` returns then: exit code 1 when a task failed during this run.
    Use `orch serve` to keep the pipeline running.
    """
    from orchestrator.cli.progress import EventPrinter, JobBoard  # noqa: PLC0415 - one command's

    context.require_config("run")
    if not as_json:
        out.print(context.where(), style="dim")
    printer = EventPrinter(context.store, out.console, context.settings.language, quiet=as_json)
    printer.skip_existing()
    board = JobBoard(
        context.store,
        out.console,
        context.settings.log_mask_values,
        live=out.is_terminal and not as_json,
    )
    failed_before = {t.id for t in context.store.list_tasks() if t.failed}
    # Set by the first Ctrl-C, before any second one can raise: the engine's shutdown
    # reads it, so even an interrupted tick leaves the jobs running.
    interrupted = threading.Event()
    with _engine_running(context, interrupted) as (engine, stop):

        def on_tick() -> None:
            printer.poll()
            if not as_json:
                board.update(engine.running_jobs())

        with _first_ctrl_c_stops(stop, interrupted), _live_board(board):
            engine.run(stop, until=engine.idle, on_tick=on_tick)
        if interrupted.is_set():
            printer.poll()
            _report_interrupted(context.store, engine.running_jobs())
            sys.exit(EXIT_INTERRUPTED)
        _deliver_outbox(context, engine)
    printer.poll()
    tasks = context.store.list_tasks()
    failed_now = [t for t in tasks if t.failed and t.id not in failed_before]
    if as_json:
        _print_json([_task_json(context.store, t) for t in tasks])
    else:
        _print_run_summary(tasks, failed_now)
    if failed_now:
        sys.exit(1)


def _live_board(board: JobBoard) -> AbstractContextManager[object]:
    """The running jobs refreshed in place under the events trail (a terminal only)."""
    if not board.live:
        return nullcontext()
    from rich.live import Live  # noqa: PLC0415 - only on a terminal

    return Live(
        get_renderable=board.render, console=out.console, refresh_per_second=4, transient=True
    )


def _print_run_summary(tasks: list[Task], failed_now: list[Task]) -> None:
    from orchestrator.kernel.stages import TERMINAL_STAGES  # noqa: PLC0415 - one command's

    waiting = [t for t in tasks if t.stage not in TERMINAL_STAGES and not t.failed]
    failed = [t for t in tasks if t.failed]
    done = [t for t in tasks if t.stage == "done"]
    out.print(f"idle: {len(done)} done, {len(waiting)} waiting, {len(failed)} failed")
    for t in waiting:
        if t.stage == "brd-approval":
            out.print(f"  {t.work_item} waits for approval: orch task approve {t.work_item}")
    for t in failed_now:
        out.print(f"  {t.work_item} failed: {t.failed_reason}", style="red")
        out.print(
            f"    see orch task show {t.work_item}; after fixing: orch task retry {t.work_item}"
        )


@cli.command()
@click.option("--host", default=None, help="Address to listen on (default: the `host` setting).")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port to listen on (default: the `port` setting).",
)
@pass_context
def serve(context: Context, host: str | None, port: int | None) -> None:
    """Run the engine and the HTTP API (GET /health, /status, /queue, /tasks)."""
    from orchestrator.api.serve import run_server  # noqa: PLC0415 - pulls in the web stack

    context.require_config("serve")
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if overrides:
        context.override_settings(overrides)
    from orchestrator.maintenance.leadership import hold_single_instance  # noqa: PLC0415

    # SQLite is single-instance: a second orch serve on the file is refused here, before
    # it writes anything; the lock is held until this process ends.
    single = hold_single_instance(context.settings.effective_database_url)

    if not context.debug:
        import logging  # noqa: PLC0415 - configured by the group, see cli()

        logging.getLogger("orchestrator").setLevel(logging.INFO)
    from orchestrator.engine.core import Engine  # noqa: PLC0415
    from orchestrator.integrations import build_delivery  # noqa: PLC0415

    notifier = context.notifier()
    engine = Engine(context.store, context.settings, notifier)
    # Telegram or a tracker configured: a supervised thread of the server delivers the outbox.
    delivery = build_delivery(
        context.settings,
        context.store,
        owner=engine.boot_id,
        is_alive=engine.runtime.leases.instance_alive,
    )
    code = run_server(
        context.settings,
        context.store,
        notifier=notifier,
        engine=engine,
        delivery=delivery,
    )
    if single is not None:
        single.release()
    sys.exit(code)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@cli.command("gc")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def gc_command(context: Context, dry_run: bool, as_json: bool) -> None:
    """Remove what ended tasks left behind and report the space freed.

    \b
    - worktrees of done and cancelled tasks (at once, by default) and of
      failed tasks older than worktree_retention_failed_s (7 days);
    - directories under <data_dir>/worktrees that no task owns;
    - git's entries of worktrees whose directory is gone (git worktree prune).

    Branches are kept (delete_branch_on_done deletes merged ones of done tasks),
    and so are run logs. A running engine does the first sweep every minute by
    itself. Exit code 1 when something could not be removed.
    """
    from orchestrator.workspace.gc import GcReport, collect_garbage  # noqa: PLC0415 - keep --help fast

    report = (
        collect_garbage(context.store, context.settings, dry_run=dry_run)
        if context.has_database()  # no database: no tasks, nothing they left behind
        else GcReport(dry_run=dry_run)
    )
    if as_json:
        _print_json(report.to_dict())
    else:
        verb = "would remove" if dry_run else "removed"
        for item in report.released:
            branch = f" and branch orch/{item.work_item}" if item.branch_deleted else ""
            out.print(
                f"{verb} {item.work_item} ({item.reason}): {item.path}{branch}, "
                f"{_size(item.bytes)}",
                markup=False,
            )
        for orphan in report.orphans:
            out.print(f"{verb} orphan {orphan.path}, {_size(orphan.bytes)}", markup=False)
        for pruned in report.pruned:
            out.print(
                f"{'would prune' if dry_run else 'pruned'} {len(pruned.entries)} stale worktree "
                f"entries in {pruned.repository}",
                markup=False,
            )
        for kept in report.kept:
            until = (
                f" until {time.strftime('%Y-%m-%d %H:%M', time.localtime(kept.until))}"
                if kept.until
                else ""
            )
            out.print(f"kept {kept.work_item}: {kept.reason}{until}", markup=False)
        for failure in report.failed:
            err.print(f"could not remove {failure['path']}: {failure['error']}", markup=False)
        freed = _size(report.bytes_freed)
        out.print(f"would free {freed}" if dry_run else f"freed {freed}")
    if report.failed:
        sys.exit(1)


@cli.command()
@click.option(
    "--keep",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Build the demo in this (new or empty) directory and keep it.",
)
@pass_context
def demo(context: Context, keep: Path | None) -> None:
    """Run DEMO-1 ("add a slugify() helper") through the whole pipeline, offline."""
    from orchestrator.cli.demo import run_demo  # noqa: PLC0415

    sys.exit(run_demo(keep, out.console))


class _ElsewhereGroup(click.Group):
    """A group whose subcommands are defined in another module, imported when one of them
    is asked for (``orch dev model-server``, ``orch dev --help``): the group's own name
    and help, all ``orch --help`` shows, cost nothing."""

    def __init__(self, *args: Any, commands: Callable[[], click.Group], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._load = commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._load().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load().get_command(ctx, cmd_name)


def _dev_commands() -> click.Group:
    from orchestrator.cli.dev import dev  # noqa: PLC0415 - the model server's HTTP stack

    return dev


@cli.group(cls=_ElsewhereGroup, commands=_dev_commands)
def dev() -> None:
    """Developer tools: a scripted model server and a fake Telegram for dry runs."""


def main() -> None:
    cli(prog_name="orch")
