"""Per-stage prompts: Jinja2 templates that tell the agent the task, stage and artifact.

A repository's own template is code that whoever can change the repository wrote (an
agent whose change was merged, for one), rendered in orch's process: so every template
renders in Jinja2's :class:`~jinja2.sandbox.SandboxedEnvironment`, where reaching for
``__class__``, ``__globals__`` and the like raises instead of running. The task's text
(title, description, feedback) only ever enters as variables, never as template source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from orchestrator.errors import AgentError

__all__ = ["render_prompt"]

_BUILTIN = SandboxedEnvironment(
    loader=jinja2.PackageLoader("orchestrator.agents", "prompts"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # prompts are plain text for a CLI, not HTML
)


def render_prompt(stage: str, context: dict[str, Any], template_file: Path | None = None) -> str:
    """Render the stage's prompt from ``template_file`` or the built-in template."""
    try:
        if template_file is not None:
            source = template_file.read_text(encoding="utf-8")
            template = _BUILTIN.from_string(source)
        else:
            template = _BUILTIN.get_template(f"{stage}.md.j2")
        return template.render(**context)
    except OSError as exc:
        raise AgentError(f"prompt template {template_file}: {exc.strerror}") from None
    except jinja2.TemplateError as exc:
        where = template_file or f"built-in {stage} prompt"
        detail = " ".join(str(exc).split()).rstrip(".")
        if isinstance(exc, SecurityError):
            detail = (
                f"refused by the sandbox: {detail}; a prompt template may only use its variables"
            )
        raise AgentError(f"prompt template {where}: {detail}") from None
