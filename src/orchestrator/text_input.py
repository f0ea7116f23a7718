"""Text from outside, checked at the edge: what we store, pass to the OS, or show.

Theory of operation
-------------------
Every string a request, a webhook or the CLI hands us is hostile until checked. Three
things break the layers behind the edge, and are refused here with one clear line
(:class:`~orchestrator.errors.UsageError`, HTTP 422) instead of a 500 further in:

* a lone UTF-16 surrogate (``"\\ud800"``, legal in JSON, not in UTF-8): SQLite,
  PostgreSQL, git and the file system cannot encode it;
* NUL: C strings (paths, argv, PostgreSQL text) end there;
* over-long names: a path component over ``NAME_MAX`` (255 bytes) or a path over
  ``PATH_MAX`` makes the OS raise ``ENAMETOOLONG``.

Unicode *format* characters (category Cf: the zero-width joiner in 👩‍💻, the
right-to-left mark of Hebrew and Arabic text) are text, and accepted; only their
bidirectional *overrides and isolates*, which reorder what a reader sees, are dropped
where text is shown (:func:`display_safe`). A tool's terminal escapes (a test suite
run with ``--color=yes``) are dropped from output we quote in reports and feedback
(:func:`strip_terminal_escapes`).

:func:`parse_json_object` is the JSON parser of the webhooks: it refuses nesting past
Python's recursion limit and lone surrogates anywhere (keys too), naming where; NUL
characters in values are dropped (a vendor's text may carry one; no column can).
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Any, Final

from orchestrator.errors import UsageError

__all__ = [
    "MAX_PATH_BYTES",
    "MAX_PATH_COMPONENT_BYTES",
    "BadJSONError",
    "check_path",
    "check_text",
    "display_safe",
    "lone_surrogate_at",
    "parse_json_object",
    "strip_terminal_escapes",
]

# Linux's NAME_MAX and PATH_MAX (ext4, xfs, btrfs, tmpfs all keep NAME_MAX at 255).
MAX_PATH_COMPONENT_BYTES: Final = 255
MAX_PATH_BYTES: Final = 4096
# How much of a refused value an error message repeats.
SHOWN_CHARS: Final = 60
# Bidirectional embeddings, overrides and isolates (LRE..RLO, LRI..PDI): they reorder the
# characters a reader sees ("Trojan Source"). Marks (LRM, RLM, ALM) do not, and stay.
BIDI_CONTROLS: Final = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# ECMA-48 sequences a terminal acts on: CSI (colours, cursor moves: ESC [ ... final),
# OSC (titles, links: ESC ] ... BEL or ESC \\), character-set choices (ESC ( B) and the
# two-character ESC X forms; then
# any ESC or other C1 control left over.
TERMINAL_ESCAPE: Final = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[ -/]+[0-~]"
    r"|\x1b[@-Z\\-_]"
    r"|[\x1b\x80-\x9f]"
)


class BadJSONError(ValueError):
    """A body that is not a JSON object we can take (the message says why)."""


def lone_surrogate_at(text: str) -> int | None:
    """The index of the first lone surrogate in ``text``, None when it is valid Unicode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _shown(text: str) -> str:
    cut = text[:SHOWN_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")
    return repr(cut) + ("…" if len(text) > SHOWN_CHARS else "")


def check_text(
    text: str, what: str, *, max_chars: int | None = None, one_line: bool = False
) -> str:
    """``text`` if it can be stored and shown; :class:`UsageError` naming ``what`` if not.

    ``one_line`` refuses control characters (newlines, tabs, escapes) too; format
    characters (ZWJ, RLM) are always accepted.
    """
    index = lone_surrogate_at(text)
    if index is not None:
        raise UsageError(
            f"{what} contains a lone UTF-16 surrogate (\\u{ord(text[index]):04x} at "
            f"character {index}); send valid Unicode text"
        )
    if "\x00" in text:
        raise UsageError(f"{what} contains a NUL character; remove it")
    if max_chars is not None and len(text) > max_chars:
        raise UsageError(f"{what} is {len(text)} characters; the limit is {max_chars}")
    if one_line and any(unicodedata.category(ch) == "Cc" for ch in text):
        raise UsageError(f"{what} contains control characters or newlines; use one line")
    return text


def check_path(text: str, what: str = "the path") -> Path:
    """An absolute path the OS can take: valid Unicode, no NUL, names not over-long."""
    check_text(text, what)
    encoded = text.encode("utf-8")
    if len(encoded) > MAX_PATH_BYTES:
        raise UsageError(f"{what} is {len(encoded)} bytes; the limit is {MAX_PATH_BYTES}")
    for part in text.split("/"):
        size = len(part.encode("utf-8"))
        if size > MAX_PATH_COMPONENT_BYTES:
            raise UsageError(
                f"{what} has a component of {size} bytes ({_shown(part)}); a file name "
                f"is at most {MAX_PATH_COMPONENT_BYTES} bytes"
            )
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # "~nobody/...": no such user's home
        raise UsageError(f"{what} {_shown(text)} names an unknown home directory") from None
    if not path.is_absolute():
        raise UsageError(f"{what} {_shown(text)} is not an absolute path; give the full path")
    return path


def strip_terminal_escapes(text: str) -> str:
    """``text`` without the escape sequences a terminal would act on (colours, cursor
    moves, titles): what ``pytest --color=yes`` or a progress bar prints, as a reader of
    a Markdown report or an agent's prompt should see it."""
    return TERMINAL_ESCAPE.sub("", text)


def display_safe(text: str) -> str:
    """``text`` for a terminal or a chat: bidi overrides and isolates removed, lone
    surrogates replaced; emoji sequences and right-to-left marks kept."""
    cleaned = "".join(ch for ch in text if ch not in BIDI_CONTROLS)
    return cleaned.encode("utf-8", "replace").decode("utf-8")


def _where(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "the body"


def _clean(value: str, where: list[str | int]) -> str:
    if lone_surrogate_at(value) is not None:
        raise BadJSONError(
            f"{_where(where)[:200]} contains a lone UTF-16 surrogate; send valid Unicode"
        )
    return value.replace("\x00", "")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object, or :class:`BadJSONError` with one line saying why.

    Strings come back free of NUL characters (dropped); a lone surrogate anywhere, or a
    NUL in a key, refuses the body.
    """
    try:
        value = json.loads(body)
    except RecursionError:
        raise BadJSONError("the body is JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadJSONError(f"the body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise BadJSONError("the body is JSON but not an object")
    # Iterative: a deep document must not exhaust the stack a second time.
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            for key, item in node.items():
                if lone_surrogate_at(key) is not None or "\x00" in key:
                    raise BadJSONError(
                        f"a key in {_where(path)[:200]} contains a lone UTF-16 surrogate or "
                        "a NUL; send valid Unicode"
                    )
                if isinstance(item, str):
                    node[key] = _clean(item, [*path, key])
                else:
                    stack.append((item, [*path, key]))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                if isinstance(item, str):
                    node[index] = _clean(item, [*path, index])
                else:
                    stack.append((item, [*path, index]))
    return value
