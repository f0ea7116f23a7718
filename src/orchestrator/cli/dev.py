"""``orch dev``: tools for trying the pipeline without a model.

``orch dev model-server`` serves the Anthropic Messages API locally from a script (the
built-in dry-run script by default), so real agent CLIs such as Claude Code can run
every agent stage with no model and no network. See docs/agents.md, "Dry run".

``orch dev fake-telegram`` serves a fake Telegram Bot API locally (printing every call),
for trying the live card without a bot. See docs/integrations.md.
"""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.testing.model_server import DEFAULT_PORT, serve

__all__ = ["dev"]


@click.group()
def dev() -> None:
    """Developer tools: a scripted model server and a fake Telegram for dry runs."""


@dev.command("model-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=int, default=DEFAULT_PORT, show_default=True, help="Port (0 = any free one)."
)
@click.option(
    "--script",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML or JSON script (default: the built-in dry-run script).",
)
def model_server(host: str, port: int, script: Path | None) -> None:
    """Serve the Messages API from a script until Ctrl-C.

    Point Claude Code at it with ANTHROPIC_BASE_URL (printed at start).
    """
    serve(script, host, port, click.echo)


@dev.command("fake-telegram")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8081, show_default=True, help="Port (0 = any free one).")
@click.option(
    "--token",
    default=None,
    help="Bot token it accepts (default: the fake's own, printed at start).",
)
def fake_telegram(host: str, port: int, token: str | None) -> None:
    """Serve a fake Telegram Bot API until Ctrl-C, printing every call.

    Point the orchestrator at it with ORCH_TELEGRAM_API_BASE_URL (printed at start).
    """
    from orchestrator.testing import fake_telegram as fake  # noqa: PLC0415

    fake.serve(host, port, token or fake.DEFAULT_TOKEN, click.echo)
