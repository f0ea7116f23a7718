"""Trackers: where work items come from and where stage outcomes are written back.

The interface lives in :mod:`orchestrator.trackers.base`; the adapters (``local``,
``plane``, ``github``) beside it are imported only by :mod:`orchestrator.wiring`.
"""

from orchestrator.trackers.base import Origin, Tracker, state_for, task_origin

__all__ = ["Origin", "Tracker", "state_for", "task_origin"]
