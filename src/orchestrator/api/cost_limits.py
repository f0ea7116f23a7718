"""The bounds of a cost report query (``GET /costs``, ``orch costs``, the Costs page).

Apart from :mod:`orchestrator.api.costs` because ``orch costs`` declares ``--top`` with
them when the command line is built, and the report itself needs the store (SQLAlchemy):
``orch --help`` must not load it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_PERIOD_DAYS", "DEFAULT_TOP", "MAX_PERIOD_DAYS", "MAX_TOP"]

DEFAULT_PERIOD_DAYS: Final = 30
# A longer period is refused: the per-day list would be long and nobody reads it.
MAX_PERIOD_DAYS: Final = 731
DEFAULT_TOP: Final = 10
MAX_TOP: Final = 100
