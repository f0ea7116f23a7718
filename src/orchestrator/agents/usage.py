"""Cost, tokens and model from an agent's output (Claude Code's JSON result)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["Usage", "parse_usage", "priced_usd", "usage_from_result"]

TOKENS_PER_MTOK: Final = 1_000_000


@dataclass(frozen=True)
class Usage:
    """What one run consumed, as its agent reported it."""

    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    model: str | None = None
    num_turns: int | None = None
    is_error: bool = False


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_from_result(obj: dict[str, Any]) -> Usage:
    """Usage from one Claude Code result object (``type: result``)."""
    raw_usage = obj.get("usage")
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    input_tokens = sum(
        _int(usage.get(key))
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    model = None
    model_usage = obj.get("modelUsage")
    if isinstance(model_usage, dict) and model_usage:
        # The model that cost the most did the work; helpers (haiku) cost less.
        def cost(item: tuple[str, Any]) -> float:
            value = item[1].get("costUSD", 0) if isinstance(item[1], dict) else 0
            return float(value) if isinstance(value, int | float) else 0.0

        model = max(model_usage.items(), key=cost)[0]
    raw_cost = obj.get("total_cost_usd", 0)
    turns = obj.get("num_turns")
    return Usage(
        cost_usd=float(raw_cost) if isinstance(raw_cost, int | float) else 0.0,
        input_tokens=input_tokens,
        output_tokens=_int(usage.get("output_tokens")),
        model=model,
        num_turns=turns if isinstance(turns, int) else None,
        is_error=bool(obj.get("is_error", False)),
    )


def parse_usage(output: str) -> Usage | None:
    """Find the last Claude Code result object in ``output``; None if there is none.

    Works for ``--output-format json`` (one object, maybe pretty-printed) and
    ``stream-json`` (one object per line, the ``result`` event last).
    """
    stripped = output.strip()
    candidates = [stripped, *(line.strip() for line in reversed(stripped.splitlines()))]
    for text in candidates:
        if not text.startswith("{") or "total_cost_usd" not in text:
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            continue
        if isinstance(obj, dict) and "total_cost_usd" in obj:
            return usage_from_result(obj)
    return None


def priced_usd(
    input_tokens: int,
    output_tokens: int,
    usd_in: float,
    usd_out: float,
    *,
    cached_tokens: int = 0,
    usd_cached: float | None = None,
) -> float:
    """Cost of tokens at prices in dollars per million tokens.

    ``cached_tokens`` are the part of ``input_tokens`` read from the provider's prompt
    cache (as OpenAI counts them), priced at ``usd_cached``; None prices them as input.
    """
    cached = min(max(cached_tokens, 0), input_tokens)
    rate = usd_in if usd_cached is None else usd_cached
    spent = (input_tokens - cached) * usd_in + cached * rate + output_tokens * usd_out
    return round(spent / TOKENS_PER_MTOK, 6)
