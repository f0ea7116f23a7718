"""How the API and the CLI's ``--json`` show a time: ISO 8601 in UTC, milliseconds, ``Z``.

The store keeps UNIX seconds (floats: ages are a subtraction, the same on SQLite and
PostgreSQL); clients get ``2026-12-02T15:04:05.123Z``. The rule is by name, so it holds
for every record without a list to keep up to date: a field called ``*_at`` or
``not_before`` is a moment and is shown in ISO 8601 (``null`` stays ``null``); a field
called ``*_s`` is a duration in seconds and stays a number. Free-form ``data`` of an
event is shown as it was recorded. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["MOMENT_FIELDS", "format_age", "is_moment_field", "iso_utc", "with_iso_times"]

# Moments whose names do not end in _at.
MOMENT_FIELDS: Final = frozenset({"not_before"})
_MOMENT_SUFFIX: Final = "_at"


def iso_utc(seconds: float | None) -> str | None:
    """UNIX seconds as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC); None stays None."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(float(seconds), tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def is_moment_field(name: str) -> bool:
    """Whether a field of that name holds a moment (UNIX seconds in the store)."""
    return name.endswith(_MOMENT_SUFFIX) or name in MOMENT_FIELDS


def with_iso_times(record: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` whose moment fields (top level only) are ISO 8601 strings."""
    return {
        key: iso_utc(value)
        if is_moment_field(key) and isinstance(value, int | float) and not isinstance(value, bool)
        else value
        for key, value in record.items()
    }


def format_age(seconds: float) -> str:
    """12.3s, 4m05s, 2h03m: short and readable."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
