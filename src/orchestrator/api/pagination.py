"""Keyset pagination for the API's lists: ``limit``, an opaque ``cursor``, ``next_cursor``.

A page is keyed on row ids, never on offsets: a cursor says "after (or before) id N of
list L", so rows inserted while a client pages neither shift nor repeat what it sees.
The cursor is ``base64url("<list>:<id>")`` without padding: opaque to clients (they pass
back what they were given), readable to us. Decoding is strict; a cursor that is not
one of ours, names another list or an id out of range is one :class:`UsageError`
line (HTTP 422). A forged cursor that decodes well only moves the client in a list it
may read anyway, so it is not signed. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Generic, TypeVar

from fastapi import Query

from orchestrator.errors import UsageError

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_CURSOR_CHARS",
    "MAX_LIMIT",
    "Cursor",
    "Limit",
    "Page",
    "decode_cursor",
    "encode_cursor",
    "page_of",
]

# Items per page when the client names no limit, and the most it may ask for.
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1_000
MAX_CURSOR_CHARS: Final = 100
# Ids are database integers; anything wider is not ours.
MAX_ID: Final = 2**63 - 1
_LIST_NAME: Final = re.compile(r"[a-z][a-z0-9_.-]{0,39}")
_DECODED: Final = re.compile(r"([a-z][a-z0-9_.-]{0,39}):(0|[1-9][0-9]{0,18})")
_ALPHABET: Final = re.compile(r"[A-Za-z0-9_-]+")

T = TypeVar("T")

Limit = Annotated[
    int,
    Query(
        ge=1,
        le=MAX_LIMIT,
        description=f"Items per page (1-{MAX_LIMIT}, default {DEFAULT_LIMIT}).",
    ),
]
Cursor = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR_CHARS,
        description="next_cursor of the previous page; omit for the first page.",
    ),
]


def encode_cursor(list_name: str, key: int) -> str:
    """The opaque cursor for "the page after id ``key`` of ``list_name``"."""
    if not _LIST_NAME.fullmatch(list_name) or not 0 <= key <= MAX_ID:
        raise ValueError(f"cannot encode a cursor for {list_name!r} at {key!r}")
    return base64.urlsafe_b64encode(f"{list_name}:{key}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, list_name: str) -> int | None:
    """The id a cursor of ``list_name`` points after; None for no cursor (the first page)."""
    if cursor is None or cursor == "":
        return None
    how = "pass back the next_cursor of the previous page, or omit cursor for the first page"
    if len(cursor) > MAX_CURSOR_CHARS or not _ALPHABET.fullmatch(cursor):
        raise UsageError(f"cursor is not valid; {how}")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise UsageError(f"cursor is not valid; {how}") from None
    found = _DECODED.fullmatch(text)
    if found is None or int(found.group(2)) > MAX_ID:
        raise UsageError(f"cursor is not valid; {how}")
    if found.group(1) != list_name:
        raise UsageError(f"cursor belongs to another list ({found.group(1)}); {how}")
    return int(found.group(2))


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, and the cursor of the next one (None on the last page)."""

    items: list[T]
    next_cursor: str | None

    def to_dict(self, show: Callable[[T], Any]) -> dict[str, Any]:
        return {"items": [show(item) for item in self.items], "next_cursor": self.next_cursor}


def page_of(rows: Sequence[T], limit: int, list_name: str, key: Callable[[T], int]) -> Page[T]:
    """A page from ``rows`` fetched with ``limit + 1``: the extra row only says "more"."""
    items = list(rows[:limit])
    more = len(rows) > limit and bool(items)
    return Page(items, encode_cursor(list_name, key(items[-1])) if more else None)
