"""Prompt templates render in Jinja2's sandbox; the task's text is data, never template.

A repository's template is written by whoever can change the repository (an agent whose
change was merged): the classic escapes through ``__class__`` / ``__globals__`` must fail
with one clear error instead of running code in orch's process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.agents import render_prompt
from orchestrator.errors import AgentError

CONTEXT = {
    "role": "developer",
    "work_item": "T-1",
    "title": "t",
    "description": "d",
    "stage": "development",
    "attempt": 1,
    "artifact_dir": "docs/work-items/T-1",
    "worktree": "/w",
    "feedback": "",
}


@pytest.mark.parametrize(
    "escape",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.system('touch {marker}') }}",
        "{{ joiner.__init__.__globals__['os'].popen('touch {marker}').read() }}",
        "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system("
        "'touch {marker}') }}",
        "{% set x = ''.__class__ %}{{ x }}",
    ],
)
def test_a_template_escape_fails_with_one_clear_error(tmp_path: Path, escape: str) -> None:
    marker = tmp_path / "pwned"
    template = tmp_path / "dev.md.j2"
    template.write_text("Stage: {{ stage }}\n" + escape.replace("{marker}", str(marker)))
    with pytest.raises(AgentError) as caught:
        render_prompt("development", CONTEXT, template)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"prompt template {template}: ")
    assert "refused by the sandbox" in message or "undefined" in message
    assert not marker.exists()


def test_task_text_is_data_even_when_it_looks_like_a_template(tmp_path: Path) -> None:
    template = tmp_path / "dev.md.j2"
    template.write_text("Title: {{ title }}\nFeedback: {{ feedback }}\n")
    hostile = "{{ ''.__class__.__mro__ }}{% raw %}"
    context = {**CONTEXT, "title": hostile, "feedback": "{{ 7 * 7 }}"}
    rendered = render_prompt("development", context, template)
    assert rendered == f"Title: {hostile}\nFeedback: {{{{ 7 * 7 }}}}\n"


def test_an_ordinary_template_still_renders(tmp_path: Path) -> None:
    template = tmp_path / "dev.md.j2"
    template.write_text(
        "{% for n in range(2) %}{{ n }}{% endfor %} {{ title | upper }} {{ stage }}\n"
    )
    assert render_prompt("development", CONTEXT, template) == "01 T development\n"
