"""Where a task's work item came from, as one comparable key. Pure; no I/O.

A task created from a tracker's issue keeps its **origin** (``tasks.origin``: the
tracker, the project, the issue) and the origin's **key** (``tasks.origin_key``), so an
inbound change of that issue (cancelled, reopened) finds its task with one indexed
lookup instead of scanning every ``task.created`` event (decision 0023):

* Plane: ``plane:<issue id>`` (the work item's id; ids are exact);
* GitHub: ``github:<owner/name, lower-cased>#<number>`` (GitHub's names are
  case-insensitive).

An origin that names no issue (no id, no repository or number, a number that is not an
integer) has no key and is never found by one. A key longer than
:data:`MAX_ORIGIN_KEY_CHARS` is stored as the SHA-256 of itself, so a hostile payload's
id still fits the column and still matches only itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["MAX_ORIGIN_KEY_CHARS", "issue_key", "origin_key"]

MAX_ORIGIN_KEY_CHARS: Final = 200


def _bounded(tracker: str, ident: str) -> str:
    key = f"{tracker}:{ident}"
    if len(key) <= MAX_ORIGIN_KEY_CHARS:
        return key
    return f"{tracker}:sha256:{hashlib.sha256(ident.encode('utf-8', 'surrogatepass')).hexdigest()}"


def issue_key(
    tracker: str, *, project: str = "", number: int = 0, issue_id: str = ""
) -> str | None:
    """The key of an issue as an inbound webhook names it; None when it names none."""
    if tracker == "plane":
        return _bounded("plane", issue_id) if issue_id else None
    if tracker == "github":
        if not project or isinstance(number, bool) or not isinstance(number, int):
            return None
        return _bounded("github", f"{project.lower()}#{number}")
    return None


def origin_key(origin: Mapping[str, Any] | None) -> str | None:
    """The key of a recorded origin (what intake stored); None when it names no issue."""
    if not origin:
        return None
    tracker = origin.get("tracker")
    if tracker == "plane":
        issue_id = origin.get("issue_id")
        return issue_key("plane", issue_id=issue_id) if isinstance(issue_id, str) else None
    if tracker == "github":
        repo, number = origin.get("repo"), origin.get("number")
        if not isinstance(repo, str) or isinstance(number, bool) or not isinstance(number, int):
            return None
        return issue_key("github", project=repo, number=number)
    return None
