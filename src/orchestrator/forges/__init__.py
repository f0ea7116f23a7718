"""Forges: where task branches become pull requests and are merged.

The interface and its values live in :mod:`orchestrator.forges.base`; the adapters
(``local``, ``gitea``, ``github``) beside it are imported only by the wiring
(:mod:`orchestrator.wiring`), the composition root.
"""

from orchestrator.forges.base import (
    CommitState,
    Forge,
    MergeMethod,
    MergeOutcome,
    PullRequest,
)

__all__ = ["CommitState", "Forge", "MergeMethod", "MergeOutcome", "PullRequest"]
