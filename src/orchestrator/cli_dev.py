"""``orch dev``: tools for trying the pipeline without a model.

``orch dev model-server`` serves the Anthropic Messages API locally from a script (the
built-in dry-run script by default), so real agent CLIs such as Claude Code can run
every agent stage with no model and no network. See docs/agents.md, "Dry run".
"""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.testing.model_server import DEFAULT_PORT, serve

__all__ = ["dev"]


@click.group()
def dev() -> None:
    """Developer tools: a scripted model server for dry runs."""


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
