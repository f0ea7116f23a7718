"""The composition root of the integrations: which forge and tracker adapters to build.

Only this module imports the concrete adapters (``orchestrator.forges.local|gitea|
github``, ``orchestrator.trackers.local|plane|github``); everything else knows the
interfaces. It reads the settings (docs/integrations.md lists them) and gives each
adapter an ``httpx.Client`` with its base URL, auth headers and timeout.

* :func:`open_forge` — the forge of a task's repository, for one use (the merge effect
  of ``deploy -> done``, a webhook), its client closed afterwards;
* :class:`Integrations` — the long-lived part of one process: the configured tracker,
  the trackers written back to (the outbox's ``tracker`` channel), Plane lookups for
  intake.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from orchestrator.apiclient import HTTP_TIMEOUT_S
from orchestrator.errors import ConfigError
from orchestrator.forges.base import Forge, MergeMethod
from orchestrator.forges.gitea import GiteaForge
from orchestrator.forges.github import GITHUB_HEADERS, GitHubForge
from orchestrator.forges.local import LocalForge
from orchestrator.settings import Settings
from orchestrator.store import Store, Task
from orchestrator.trackers.base import Tracker, state_for
from orchestrator.trackers.github import GITHUB_DEFAULT_STATES, GitHubIssuesTracker
from orchestrator.trackers.local import LocalTracker
from orchestrator.trackers.plane import PLANE_DEFAULT_STATES, PlaneTracker
from orchestrator.workspace.git import git
from orchestrator.workspace.remote import open_repo

__all__ = [
    "GITHUB_API_URL",
    "ForgeChoice",
    "Integrations",
    "forge_choice",
    "open_forge",
    "repository_for_forge_repo",
    "tracker_state",
]

GITHUB_API_URL: Final = "https://api.github.com"


@dataclass(frozen=True)
class ForgeChoice:
    """A repository's forge: which one, its "owner/name" there, how it merges."""

    kind: str
    repo: str
    merge_method: MergeMethod


def forge_choice(settings: Settings, repo_path: Path) -> ForgeChoice:
    """The forge of the repository at ``repo_path``: its own settings over the global."""
    config = settings.repo_config(repo_path)
    return ForgeChoice(
        kind=config.forge or settings.forge,
        repo=config.forge_repo or settings.forge_repo,
        merge_method=MergeMethod(config.merge_method or settings.merge_method),
    )


def repository_for_forge_repo(settings: Settings, full_name: str) -> Path | None:
    """The repository on disk (``[repos.<name>] path``) whose forge repository is
    ``full_name`` ("owner/name"), if one is configured."""
    wanted = full_name.lower()
    for config in settings.repos.values():
        forge_repo = config.forge_repo or settings.forge_repo
        if config.path and forge_repo and forge_repo.lower() == wanted:
            return Path(config.path).expanduser()
    return None


def tracker_state(settings: Settings, tracker: str, stage: str) -> str | None:
    """The state write-back gives a ``tracker`` work item at ``stage`` (None: unmapped)."""
    defaults = {"plane": PLANE_DEFAULT_STATES, "github": GITHUB_DEFAULT_STATES}.get(tracker, {})
    return state_for(stage, settings.tracker_states, defaults)


def _client(
    base_url: str, headers: dict[str, str], transport: httpx.BaseTransport | None
) -> httpx.Client:
    return httpx.Client(
        base_url=base_url, headers=headers, timeout=HTTP_TIMEOUT_S, transport=transport
    )


@contextmanager
def open_forge(
    settings: Settings, task: Task, *, transport: httpx.BaseTransport | None = None
) -> Iterator[Forge]:
    """The forge of ``task``'s repository, ready for use; its HTTP client is closed after."""
    choice = forge_choice(settings, Path(task.repository))
    if choice.kind == "local":
        yield LocalForge(open_repo(settings, task.repository), choice.merge_method)
        return
    if not choice.repo:
        raise ConfigError(
            f"forge {choice.kind} needs forge_repo ('owner/name') for {task.repository}"
        )
    remote = settings.forge_remote

    def push(pushed: Task) -> None:
        git(Path(pushed.repository), "push", "--quiet", remote, f"{pushed.branch}:{pushed.branch}")

    pusher = push if remote else None
    if choice.kind == "gitea":
        if not settings.forge_base_url:
            raise ConfigError("forge = 'gitea' needs forge_base_url (https://HOST/api/v1)")
        headers = {"Accept": "application/json"}
        if settings.forge_token:
            headers["Authorization"] = f"token {settings.forge_token}"
        with _client(settings.forge_base_url, headers, transport) as client:
            yield GiteaForge(client, choice.repo, choice.merge_method, push=pusher)
        return
    headers = dict(GITHUB_HEADERS)
    if settings.forge_token:
        headers["Authorization"] = f"Bearer {settings.forge_token}"
    with _client(settings.forge_base_url or GITHUB_API_URL, headers, transport) as client:
        yield GitHubForge(client, choice.repo, choice.merge_method, push=pusher)


class Integrations:
    """The trackers of one process and the notifier that writes back to them."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.transport = transport
        self._clients: list[httpx.Client] = []
        self._plane: PlaneTracker | None = None
        self._github: GitHubIssuesTracker | None = None
        self._lock = threading.Lock()

    def plane(self) -> PlaneTracker:
        with self._lock:
            if self._plane is None:
                headers = {"Accept": "application/json"}
                if self.settings.plane_api_key:
                    headers["X-API-Key"] = self.settings.plane_api_key
                client = _client(self.settings.plane_base_url, headers, self.transport)
                self._clients.append(client)
                self._plane = PlaneTracker(
                    client, self.settings.plane_workspace, self.settings.tracker_states
                )
            return self._plane

    def github(self) -> GitHubIssuesTracker:
        with self._lock:
            if self._github is None:
                headers = dict(GITHUB_HEADERS)
                token = self.settings.github_token or self.settings.forge_token
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                client = _client(self.settings.github_api_url, headers, self.transport)
                self._clients.append(client)
                self._github = GitHubIssuesTracker(client, self.settings.tracker_states)
            return self._github

    def tracker(self) -> Tracker:
        """The configured tracker (``tracker`` in the settings)."""
        if self.settings.tracker == "plane":
            return self.plane()
        if self.settings.tracker == "github":
            return self.github()
        return LocalTracker()

    def writeback_enabled(self) -> bool:
        """Whether tasks may come from a tracker that is written back to."""
        settings = self.settings
        return (
            settings.tracker in ("plane", "github")
            or bool(settings.plane_projects)
            or bool(settings.github_token)
        )

    def writeback_trackers(self) -> dict[str, Tracker]:
        """The trackers tasks are written back to, by name: the configured one, Plane
        when projects feed tasks (``plane_projects``), GitHub when a token is set."""
        chosen: dict[str, Tracker] = {}
        if self.settings.tracker == "plane" or self.settings.plane_projects:
            chosen["plane"] = self.plane()
        if self.settings.tracker == "github" or self.settings.github_token:
            chosen["github"] = self.github()
        return chosen

    def close(self) -> None:
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()
            self._plane = self._github = None
