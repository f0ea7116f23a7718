"""Artifacts rendered as HTML (web/markdown.py): whatever an agent writes, no element
but Markdown's own comes out, no event handler attribute, no script or data link, and
no image the browser would fetch.

Seen failing with ``html: True`` (the raw <script> and <img onerror> came through),
and with the image rule left on (an <img src=http://...> appeared).
"""

from __future__ import annotations

from html.parser import HTMLParser

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.api.web.markdown import MAX_MARKDOWN_CHARS, render_markdown

ALLOWED_TAGS = frozenset(
    [
        "p",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "ul",
        "ol",
        "li",
        "em",
        "strong",
        "code",
        "pre",
        "blockquote",
        "a",
        "hr",
        "br",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "s",
        "del",
    ]
)
HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<iframe src=http://evil.example></iframe>",
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](data:text/html;base64,PHNjcmlwdD4=)",
    "[x](vbscript:msgbox)",
    "![pixel](http://evil.example/p.png)",
    '<a href="javascript:alert(1)">x</a>',
    "<svg onload=alert(1)>",
    "<style>body{display:none}</style>",
    '<div style="background:url(http://evil.example)">',
    "`<script>`",
    "```\n<script>alert(1)</script>\n```",
    "<!-- comment --><meta http-equiv=refresh content=0;url=http://evil.example>",
    "[x](http://ok.example/ 'title\" onmouseover=\"alert(1)')",
]


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def _check(html: str) -> None:
    parser = _Collect()
    parser.feed(html)
    for tag, attrs in parser.tags:
        assert tag in ALLOWED_TAGS, (tag, html)
        for name, value in attrs:
            assert not name.startswith("on"), (name, html)
            assert name in ("href", "rel", "title", "start", "class", "style"), (name, html)
            if name == "style":  # markdown-it's table alignment only
                assert value in ("text-align:left", "text-align:right", "text-align:center")
            if name == "href":
                scheme = (value or "").strip().lower().split(":", 1)[0]
                assert scheme not in ("javascript", "vbscript", "data", "file"), html


def test_known_hostile_snippets_come_out_as_text() -> None:
    for snippet in HOSTILE:
        html = str(render_markdown(snippet))
        _check(html)
        assert "<script" not in html
        assert "<img" not in html


@settings(max_examples=300)
@given(
    st.lists(
        st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40)),
        max_size=8,
    ).map("\n".join)
)
def test_any_mix_of_markdown_and_markup_is_safe(text: str) -> None:
    _check(str(render_markdown(text)))


def test_links_get_no_referrer_and_images_become_links() -> None:
    html = str(render_markdown("[a](https://example.org) ![b](https://example.org/b.png)"))
    assert 'rel="noopener noreferrer nofollow"' in html
    assert "[image: b]" in html


def test_an_enormous_artifact_is_cut_with_a_note() -> None:
    html = str(render_markdown("a" * (MAX_MARKDOWN_CHARS + 10)))
    assert "cut at" in html
