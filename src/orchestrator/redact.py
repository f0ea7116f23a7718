"""What counts as a secret, and how one is hidden.

One rule for the whole product: a value is secret when its key (a setting's name, an
environment variable's name) contains ``KEY``, ``TOKEN``, ``SECRET`` or ``PASSWORD``,
whatever the case, and the password part of a URL (``scheme://user:PASSWORD@host``) is
secret wherever it appears. ``orch config show`` masks by this rule
(:func:`redact_value`), and the job environment (:mod:`orchestrator.job_env`) keeps the
values of orch's own secret settings (:func:`secret_values`) away from agents.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

__all__ = [
    "MASK",
    "MIN_MASKED_SECRET",
    "looks_secret",
    "mask_text",
    "mask_url_password",
    "redact_value",
    "secret_values",
]

MASK: Final = "***"
# A secret value shorter than this is not looked for inside free text (a run log): a
# two-character "secret" would mask every word that holds it.
MIN_MASKED_SECRET: Final = 6
SECRET_WORDS: Final = ("KEY", "TOKEN", "SECRET", "PASSWORD")
# scheme://user:password@host — the password is the part between ':' and the last '@'
# of the authority (passwords may contain '@' when they are not percent-encoded).
_URL_PASSWORD: Final = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)(?P<pw>[^/?#\s]*)@"
)


def looks_secret(name: str) -> bool:
    """Whether ``name`` (a setting, a variable, a table key) names a secret."""
    upper = name.upper()
    return any(word in upper for word in SECRET_WORDS)


def mask_url_password(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` replaced."""
    return _URL_PASSWORD.sub(
        lambda match: f"{match.group('head')}{MASK}@" if match.group("pw") else match.group(0),
        text,
    )


def mask_text(text: str, secrets: frozenset[str]) -> str:
    """``text`` (a run log) with every one of ``secrets`` (at least
    :data:`MIN_MASKED_SECRET` characters) and every URL password replaced by the mask.

    Longer secrets first, so a secret that contains another is masked whole."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_MASKED_SECRET:
            text = text.replace(secret, MASK)
    return mask_url_password(text)


def redact_value(value: Any, key: str = "") -> Any:
    """``value`` fit to show: secrets under secret-looking keys masked, at any depth,
    and passwords in URLs masked wherever they are. Empty values stay as they are (that
    a secret is unset is worth seeing)."""
    if key and looks_secret(key) and value not in (None, "", [], {}):
        if isinstance(value, dict):
            return {k: MASK for k in value}
        if isinstance(value, list):
            return [MASK for _ in value]
        return MASK
    if isinstance(value, dict):
        return {k: redact_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(item) for item in value]
    if isinstance(value, str):
        return mask_url_password(value)
    return value


def _url_passwords(text: str) -> Iterable[str]:
    for match in _URL_PASSWORD.finditer(text):
        if match.group("pw"):
            yield match.group("pw")


def secret_values(settings: dict[str, Any]) -> frozenset[str]:
    """Every secret value among ``settings`` (a plain dump: name -> value): the values
    of secret-looking names at any depth, and passwords inside URLs."""
    found: set[str] = set()

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, key)
        elif isinstance(value, str) and value:
            if key and looks_secret(key):
                found.add(value)
            found.update(_url_passwords(value))

    walk(settings, "")
    return frozenset(found)
