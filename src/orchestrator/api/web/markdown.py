"""Artifacts (BRD, ADR, reports) as HTML, safe to show whatever an agent wrote.

markdown-it-py in CommonMark mode with raw HTML off: a ``<script>`` or an ``onerror=``
in an artifact comes out as text. Links keep markdown-it's own URL check (no
``javascript:``, ``vbscript:``, ``file:`` or ``data:`` links) and open without a
referrer. Images are not drawn: they are shown as links, so an artifact cannot make the
browser fetch anything (the dashboard works offline, and an artifact cannot track who
reads it). The page's Content-Security-Policy (no inline script) backs this up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from markupsafe import Markup

__all__ = ["MAX_MARKDOWN_CHARS", "render_markdown"]

# An artifact longer than this is cut (with a note); agents' reports are far shorter.
MAX_MARKDOWN_CHARS: Final = 200_000


def _link_open(
    renderer: RendererHTML,
    tokens: Sequence[Token],
    idx: int,
    options: OptionsDict,
    env: EnvType,
) -> str:
    tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
    return renderer.renderToken(tokens, idx, options, env)


def _image_as_link(
    renderer: RendererHTML,
    tokens: Sequence[Token],
    idx: int,
    options: OptionsDict,
    env: EnvType,
) -> str:
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = renderer.renderInlineAsText(token.children or [], options, env) or src
    escaped_src = Markup.escape(src)
    return str(
        Markup('<a href="{}" rel="noopener noreferrer nofollow">[image: {}]</a>').format(
            escaped_src, alt
        )
    )


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable("table")
    md.enable("strikethrough")
    md.add_render_rule("link_open", _link_open)
    md.add_render_rule("image", _image_as_link)
    return md


_MD: Final = _parser()


def render_markdown(text: str) -> Markup:
    """``text`` (Markdown) as HTML with no raw HTML passed through."""
    note = ""
    if len(text) > MAX_MARKDOWN_CHARS:
        text = text[:MAX_MARKDOWN_CHARS]
        note = f"\n\n*(cut at {MAX_MARKDOWN_CHARS:,} characters)*\n"
    html: Any = _MD.render(text + note)
    return Markup(str(html))  # noqa: S704 - markdown-it escapes everything; html is off
