"""The web dashboard served by ``orch serve`` under ``/ui/`` (decision 0020).

Server-rendered Jinja2 pages with a little plain JavaScript (``EventSource`` on the
API's own live streams), every asset shipped in this package: no CDN, no build step.

* :mod:`~orchestrator.api.web.routes`: the pages (board, task, costs, health), the actions,
  login/logout;
* :mod:`~orchestrator.api.web.sessions`: logins with an API token, CSRF tokens;
* :mod:`~orchestrator.api.web.views`: what a page shows, built from store rows (pure);
* :mod:`~orchestrator.api.web.reports`: the Costs and Health pages' values (pure);
* :mod:`~orchestrator.api.web.markdown`: artifacts as HTML, no raw HTML passed through;
* :mod:`~orchestrator.api.web.gitview`: artifacts and the diff, read from the task's branch.

A new page extends ``templates/base.html`` (its ``nav`` lists Board, Costs, Health) and
is a route of :func:`~orchestrator.api.web.routes.web_router`; the guard treats it as a read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from orchestrator.api.web.routes import web_router
from orchestrator.api.web.sessions import SessionStore
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import Settings
from orchestrator.store import Store

__all__ = ["STATIC_DIR", "STATIC_PREFIX", "SessionStore", "install_dashboard"]

STATIC_PREFIX: Final = "/ui/static"
STATIC_DIR: Final = Path(__file__).resolve().parent / "static"


def install_dashboard(
    app: FastAPI, *, store: Store, settings: Settings, service: TaskService, sessions: SessionStore
) -> None:
    """Add the dashboard's routes and packaged assets to ``app``."""
    app.state.sessions = sessions
    app.include_router(web_router(store, settings, service, sessions))
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="dashboard-static")
