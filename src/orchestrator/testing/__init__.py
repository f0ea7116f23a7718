"""Test doubles shipped with the product: the scripted model server for real agent CLIs.

``ModelServer`` speaks the Anthropic Messages API and the OpenAI Responses API locally
and replays a ``Script``, so Claude Code (and anything else that honours
``ANTHROPIC_BASE_URL``) and Codex (through ``ModelServer.codex_args()``) run for real
with no model and no network: in our tests, and in a user's dry run (``orch dev
model-server``).
"""

from orchestrator.testing.model_script import (
    DEFAULT_SCRIPT,
    Script,
    Session,
    Turn,
    load_script,
    parse_script,
)
from orchestrator.testing.model_server import ModelServer

__all__ = [
    "DEFAULT_SCRIPT",
    "ModelServer",
    "Script",
    "Session",
    "Turn",
    "load_script",
    "parse_script",
]
