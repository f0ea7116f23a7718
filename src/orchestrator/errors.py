"""The one error tree of the product.

Every error a user can meet is an :class:`OrchestratorError` whose message says what
was wrong and what to do. The CLI prints it as one line; the HTTP API maps it to a 4xx.

::

    OrchestratorError                 exit 1, HTTP 400
    ├── UsageError                    exit 2, HTTP 422  (bad input: ids, titles, options)
    │   └── ConfigError               exit 2            (orch.toml or ORCH_* variables)
    ├── NotAuthenticatedError         exit 1, HTTP 401  (no, unknown or revoked API token)
    ├── ForbiddenError                exit 1, HTTP 403  (wrong role, repository not listed,
    │                                                    steering from inside an agent job)
    ├── NotFoundError                 exit 1, HTTP 404  (unknown task, job, repository)
    ├── ConflictError                 exit 1, HTTP 409  (illegal transition, lost race)
    │   └── IllegalTransitionError
    ├── RepositoryError               exit 1, HTTP 400  (not a git repository, git failed)
    ├── AgentError                    exit 1, HTTP 400  (agent binary missing, bad template)
    └── IntegrationError              exit 1, HTTP 502  (a forge or tracker API refused or failed)
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "ConfigError",
    "ConflictError",
    "ForbiddenError",
    "IllegalTransitionError",
    "IntegrationError",
    "NotAuthenticatedError",
    "NotFoundError",
    "OrchestratorError",
    "RepositoryError",
    "UsageError",
    "first_line",
]


class OrchestratorError(Exception):
    """Base of every error the product raises on purpose."""

    exit_code = 1
    http_status = 400


class UsageError(OrchestratorError):
    """The caller gave input we cannot accept."""

    exit_code = 2
    http_status = 422


class ConfigError(UsageError):
    """The settings (orch.toml or ORCH_* variables) are malformed."""


class NotAuthenticatedError(OrchestratorError):
    """The request carries no API token, or one that is unknown or revoked."""

    http_status = 401


class ForbiddenError(OrchestratorError):
    """The caller is known but may not do this (its role, the repository, an agent job)."""

    http_status = 403


class NotFoundError(OrchestratorError):
    """A task, job or repository that does not exist."""

    http_status = 404


class ConflictError(OrchestratorError):
    """The request is valid but the current state does not allow it."""

    http_status = 409


class SideEffectsUnderWayError(ConflictError):
    """A merge or deploy of the task is under way (a live transition lease): wait."""


class IllegalTransitionError(ConflictError):
    """A stage move that ``STAGE_TRANSITIONS`` does not allow."""

    def __init__(self, current: str, target: str, allowed: tuple[str, ...]) -> None:
        self.current = current
        self.target = target
        self.allowed = allowed
        allowed_text = ", ".join(allowed) if allowed else "none (terminal stage)"
        super().__init__(
            f"cannot move a task from '{current}' to '{target}'; allowed from '{current}': "
            f"{allowed_text}"
        )


class RepositoryError(OrchestratorError):
    """The repository is not usable: not a git repository, or a git command failed."""


class AgentError(OrchestratorError):
    """An agent cannot be started: unknown agent, missing binary, bad template."""


class TooManyRequestsError(OrchestratorError):
    """A limit on open streams or requests is reached: try again later."""

    http_status = 429


class DatabaseUnavailableError(OrchestratorError):
    """The database does not answer; the message is its own first line of complaint."""

    http_status = 503


class IntegrationError(OrchestratorError):
    """A forge (Gitea, GitHub) or tracker (Plane, GitHub issues) call failed.

    The message names the service, the call and the service's own complaint.
    """

    http_status = 502


def first_line(exc: BaseException) -> str:
    """The first line of what ``exc`` says, in the driver's own words where it wraps
    one (``exc.orig``; a driver's message can run to many lines)."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
