"""The HTTP API: read the pipeline's state, create tasks, and act on them.

A thin edge over :class:`~orchestrator.store.Store` (reads) and
:class:`~orchestrator.lifecycle.service.TaskService` (every write): the API validates nothing the
service already validates, so the CLI and the API accept and refuse the same input.

Errors are always one JSON line, ``{"error": "..."}``::

    OrchestratorError          its http_status (404 not found, 409 conflict,
                               422 usage/config, 400 repository/agent/other)
    RequestValidationError     422, naming the first field that is wrong
    HTTPException (routing)    its status (404 unknown path, 405 wrong method)
    body over the cap          413 (Content-Length before reading; chunked as it arrives)
    client hung up             no answer; one log line, no traceback
    anything else              500 "internal error", logged with its traceback

The web dashboard (:mod:`orchestrator.api.web`) is served from the same app under
``/ui/``; its pages answer in HTML.

Every request passes :class:`~orchestrator.api.guard.HttpGuard` first (Host check,
browser safety, the API token and its role; docs/security.md) and acts as the token's
actor (``token:<name>``) in the audit trail. The signed webhooks of Telegram, Gitea,
GitHub and Plane (``POST /webhooks/...``) need no token; they answer 4xx with one clear
line for anything a sender controls; see :mod:`orchestrator.webhooks.intake`.

Text in a body is checked at the edge (:mod:`orchestrator.text_input`): lone
surrogates, NUL and over-long path components are a 422 naming the field.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Final

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator import __version__
from orchestrator.api.docs import docs_router
from orchestrator.api.guard import PRINCIPAL_STATE_KEY, HttpGuard
from orchestrator.api.limits import BodyLimit, client_hung_up
from orchestrator.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from orchestrator.api.metrics import render_metrics
from orchestrator.api.reads import read_router, task_view
from orchestrator.api.status import status_report
from orchestrator.api.streams import StreamHub, streams_router
from orchestrator.api.web import SessionStore, install_dashboard
from orchestrator.auth import Principal, check_repo_allowed
from orchestrator.effects.leases import LeaseManager, Owner
from orchestrator.engine.core import Engine
from orchestrator.errors import (
    DatabaseUnavailableError,
    NotAuthenticatedError,
    OrchestratorError,
)
from orchestrator.integrations.telegram_webhook import telegram_webhook_router
from orchestrator.lifecycle.service import MAX_FEEDBACK_CHARS, TaskService
from orchestrator.settings import Settings
from orchestrator.store import Store, Task
from orchestrator.text_input import check_path, lone_surrogate_at
from orchestrator.webhooks.routes import webhook_router

__all__ = ["MAX_ERROR_CHARS", "MAX_REASON_CHARS", "create_app"]

log = logging.getLogger("orchestrator.api.server")

# An error message echoes user input (a path, an id); keep the response bounded.
MAX_ERROR_CHARS: Final = 500
# The service does not bound a cancel/rollback reason; the audit trail should stay readable.
MAX_REASON_CHARS: Final = 2_000


def _valid_text(value: str) -> str:
    """Text the database, git and the OS can take (checked again, by name, by the service)."""
    index = lone_surrogate_at(value)
    if index is not None:
        raise ValueError(
            f"contains a lone UTF-16 surrogate (\\u{ord(value[index]):04x}); send valid Unicode"
        )
    if "\x00" in value:
        raise ValueError("contains a NUL character; remove it")
    return value


# Every string field of a request body is one of these.
Text = Annotated[str, AfterValidator(_valid_text)]


class CreateTaskBody(BaseModel):
    """A new task. Lengths and formats are checked by the service, as for the CLI."""

    model_config = ConfigDict(extra="forbid")

    repo: Text = Field(description="Absolute path of the git repository on the server.")
    title: Text = Field(description="One line saying what the task is.")
    work_item: Text | None = Field(
        default=None, description="Id such as PROJ-42; TASK-<n> when omitted."
    )
    description: Text = Field(default="", description="What to build, in detail.")


class ReasonBody(BaseModel):
    """Why a task is cancelled or rolled back; goes into the audit trail."""

    model_config = ConfigDict(extra="forbid")

    reason: Text = Field(default="", max_length=MAX_REASON_CHARS)


class RejectBody(BaseModel):
    """Why a human gate is sent back: the agent that redoes the document reads it."""

    model_config = ConfigDict(extra="forbid")

    feedback: Text = Field(
        max_length=MAX_FEEDBACK_CHARS,
        description="What must change (not empty; goes into the next analysis prompt).",
    )


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else "error"
    if len(first) > MAX_ERROR_CHARS:
        first = first[: MAX_ERROR_CHARS - 1] + "…"
    return first


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": _one_line(message)}, status_code=status, headers=headers)


def _validation_message(errors: Sequence[Any]) -> str:
    """The first validation error as ``where: what`` (e.g. ``body.title: Field required``)."""
    if not errors:
        return "the request is not valid"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "request"
    message = f"{where}: {first.get('msg', 'not valid')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return message


def _request_of(scope: Scope) -> tuple[Any, Any]:
    """A request's method and path, for a log line."""
    return scope.get("method"), scope.get("path")


class _InternalErrors:
    """Turn an unexpected exception into a logged 500 with a one-line JSON body, and a
    database out of reach (:meth:`Store.is_outage`) into a 503 saying so.

    Starlette's own handler for ``Exception`` re-raises after responding, which logs the
    traceback twice and breaks test clients; this middleware answers and stops there.
    """

    def __init__(self, app: ASGIApp, store: Store | None = None) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            client_hung_up(scope)  # nobody is left to answer; not our error
        except asyncio.CancelledError:
            # uvicorn's graceful shutdown ran out (a client stalled mid-request): one line,
            # a 503 if still possible, and the task ends here as uvicorn asked.
            log.info(
                "%s %s cut off: the server is shutting down", scope.get("method"), scope.get("path")
            )
            if not response_started:
                await _error(503, "the server is shutting down; try again")(scope, receive, send)
        except Exception as exc:
            # Asked off the event loop: it may try a round trip to the database.
            outage = self.store is not None and await asyncio.to_thread(self.store.is_outage, exc)
            if outage:
                reason = _one_line(str(getattr(exc, "orig", None) or exc))
                log.warning("%s %s: the database is out of reach: %s", *_request_of(scope), reason)
            else:
                log.exception("unexpected error in %s %s", *_request_of(scope))
            if response_started:
                raise  # too late for a JSON answer; let the server close the connection
            if outage:
                await _error(503, "the database is out of reach; try again shortly")(
                    scope, receive, send
                )
                return
            await _error(500, "internal error")(scope, receive, send)


def _actor(request: Request) -> str:
    """The audit trail's name for whoever sent ``request`` (set by the guard)."""
    principal = getattr(request.state, PRINCIPAL_STATE_KEY, None)
    if not isinstance(principal, Principal):  # the guard lets no write through without one
        raise NotAuthenticatedError("this request carries no API token")
    return principal.actor


def _repo_path(text: str) -> Path:
    """A repository path from a request: absolute, and one the OS can take."""
    return check_path(text, "repo")


def create_app(
    *,
    store: Store,
    settings: Settings,
    service: TaskService,
    engine: Engine | None = None,
    on_intent: Callable[[], None] | None = None,
    loops: Callable[[], list[dict[str, Any]]] | None = None,
    leader: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """The API over ``store`` and ``service``; ``engine`` (if any) is only reported on.

    ``on_intent`` is called when a webhook recorded an intent in the inbox (``orch
    serve`` wakes its inbox loop); without it the intent waits for the next sweep.
    ``loops`` reports the background loops' states for ``/status`` (``orch serve``'s
    engine thread and supervisor), ``leader`` whether this instance leads the
    maintenance (``orch serve``'s :class:`~orchestrator.maintenance.leadership.Leadership`).
    """
    app = FastAPI(
        title="orchestrator",
        version=__version__,
        description="A self-hostable delivery pipeline for AI coding agents.",
        # Served by api_docs from the package's own assets (no CDN); no ReDoc.
        docs_url=None,
        redoc_url=None,
    )
    app.state.store = store
    app.state.settings = settings
    app.state.service = service
    app.state.engine = engine
    started_at = engine.started_at if engine is not None else time.time()

    # Added first = runs inside _InternalErrors: a database error while checking a token
    # is a logged 500, not a dropped connection.
    sessions = SessionStore(store, settings)
    app.add_middleware(HttpGuard, store=store, settings=settings, sessions=sessions)
    # Outside the guard: a body over the cap is refused before anything else.
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(_InternalErrors, store=store)

    @app.exception_handler(OrchestratorError)
    async def _orchestrator_error(_request: Request, exc: OrchestratorError) -> JSONResponse:
        return _error(exc.http_status, str(exc) or type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=exc.headers)

    def find(ref: str, repo: str | None) -> Task:
        repository = str(_repo_path(repo).resolve()) if repo is not None else None
        return store.find_task(ref, repository)

    # --- health and status -------------------------------------------------------------
    @app.get("/health", summary="Liveness, including a database round trip")
    def health() -> JSONResponse:
        try:
            store.ping()
        except DatabaseUnavailableError as exc:
            reason = _one_line(str(exc))
            log.warning("health check: database unreachable: %s", reason)
            return JSONResponse(
                {"status": "error", "error": f"database unreachable: {reason}"},
                status_code=503,
            )
        return JSONResponse({"status": "ok"})

    def leases() -> LeaseManager:
        if engine is not None:
            return engine.runtime.leases
        return LeaseManager(store, settings, Owner.current(settings.instance_name or None))

    def current_status() -> dict[str, Any]:
        return status_report(
            store,
            started_at=started_at,
            engine=engine,
            loops=loops() if loops is not None else [],
            leases=leases(),
            leader=leader() if leader is not None else None,
        )

    # The dashboard's Health page shows the same answer.
    app.state.status_report = current_status

    @app.get("/status", summary="Version, uptime, counts, loops, leases and instances")
    def status() -> dict[str, Any]:
        return current_status()

    @app.post(
        "/transition-lease/release",
        summary="Force-release a task's transition lease (admin; logged and alerted)",
    )
    def release_lease(request: Request, work_item: str, repo: str | None = None) -> dict[str, Any]:
        task = find(work_item, repo)
        released = leases().force_release(
            task, actor=_actor(request), reason="released through the API"
        )
        return {"work_item": task.work_item, "released": released}

    # --- tasks (the reads are in orchestrator.api.reads) ----------------------------------
    @app.post("/tasks", status_code=201, summary="Create a task; it starts at analysis")
    def create_task(request: Request, body: CreateTaskBody) -> dict[str, Any]:
        repo_path = _repo_path(body.repo)
        check_repo_allowed(settings, repo_path)
        task = service.create_task(
            repo_path=repo_path,
            title=body.title,
            work_item=body.work_item,
            description=body.description,
            actor=_actor(request),
        )
        return task_view(store, task)

    @app.post("/tasks/{ref}/approve", summary="Pass the human gate (BRD approval)")
    def approve_task(request: Request, ref: str, repo: str | None = None) -> dict[str, Any]:
        return task_view(store, service.approve(find(ref, repo), actor=_actor(request)))

    @app.post(
        "/tasks/{ref}/reject",
        summary="Send the BRD back to analysis with feedback (at brd-approval)",
    )
    def reject_task(
        request: Request, ref: str, body: RejectBody, repo: str | None = None
    ) -> dict[str, Any]:
        task = find(ref, repo)
        return task_view(store, service.reject(task, feedback=body.feedback, actor=_actor(request)))

    @app.post("/tasks/{ref}/cancel", summary="Cancel a task that is not finished")
    def cancel_task(
        request: Request,
        ref: str,
        body: Annotated[ReasonBody | None, Body()] = None,
        repo: str | None = None,
    ) -> dict[str, Any]:
        reason = body.reason if body is not None else ""
        task = find(ref, repo)
        return task_view(store, service.cancel(task, actor=_actor(request), reason=reason))

    @app.post("/tasks/{ref}/rollback", summary="Send a task back to development")
    def rollback_task(
        request: Request,
        ref: str,
        body: Annotated[ReasonBody | None, Body()] = None,
        repo: str | None = None,
    ) -> dict[str, Any]:
        reason = body.reason if body is not None else ""
        task = find(ref, repo)
        return task_view(store, service.rollback(task, actor=_actor(request), reason=reason))

    @app.post("/tasks/{ref}/retry", summary="Resume a failed task at its stage")
    def retry_task(request: Request, ref: str, repo: str | None = None) -> dict[str, Any]:
        return task_view(store, service.retry(find(ref, repo), actor=_actor(request)))

    @app.get("/metrics", summary="Prometheus metrics, read from the database at scrape time")
    def metrics() -> Response:
        return Response(render_metrics(store), media_type=METRICS_CONTENT_TYPE)

    app.include_router(read_router(store, settings, leases, find))
    app.include_router(docs_router(app.title, app.openapi_url or "/openapi.json"))

    # --- inbound webhooks ----------------------------------------------------------------
    app.include_router(telegram_webhook_router(store, settings, service))
    app.include_router(webhook_router(store, settings, service, on_intent))

    # --- live streams (SSE): orch serve ends them through app.state.streams at shutdown
    app.state.streams = StreamHub(settings.http_max_streams)
    app.include_router(streams_router(store, settings, app.state.streams))

    # --- the web dashboard (/ui/, decision 0020): pages over the same guard and service
    install_dashboard(app, store=store, settings=settings, service=service, sessions=sessions)

    return app
