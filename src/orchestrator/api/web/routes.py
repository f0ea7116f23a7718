"""The dashboard's pages and form posts (decision 0020).

Pages live under ``/ui/`` (``/`` redirects there), so no dashboard path shadows a JSON
route; none is in the OpenAPI description. The guard in front of every route
(:mod:`orchestrator.api.guard`) has already decided who the request is (a bearer
token, or the session cookie this module sets at login) and whether its role suffices:
pages are reads (viewer), form posts need an operator, exactly as the API's writes.

Every form post also passes :func:`_checked_form`, a dependency of the whole router: the
body is read (capped by the body limit before), parsed as a URL-encoded form, and its
``csrf_token`` compared with the session's (the login form's with its own cookie). An
action then calls the same :class:`~orchestrator.lifecycle.service.TaskService` method as the
API, acting as the token's actor. Errors are an HTML page with one line and the status
the API would give.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined

from orchestrator import __version__
from orchestrator.api.costs import DEFAULT_TOP, cost_report, format_usd
from orchestrator.api.guard import (
    LOGIN_PATH,
    PRINCIPAL_STATE_KEY,
    SESSION_COOKIE,
    SESSION_STATE_KEY,
)
from orchestrator.api.web.gitview import read_artifacts, read_diff
from orchestrator.api.web.markdown import render_markdown
from orchestrator.api.web.reports import costs_view, health_view, period_from_form
from orchestrator.api.web.sessions import SESSION_MAX_AGE_S, SessionStore, csrf_matches
from orchestrator.api.web.views import (
    BOARD_STAGES,
    STATE_FILTERS,
    card_for,
    matches_state,
    run_rows,
    timeline,
)
from orchestrator.auth import ROLES, Principal, authorize
from orchestrator.errors import (
    ForbiddenError,
    NotAuthenticatedError,
    NotFoundError,
    OrchestratorError,
    UsageError,
)
from orchestrator.kernel.actions import (
    APPROVE,
    CANCEL,
    HUMAN_ACTIONS,
    REJECT,
    RETRY,
    ROLLBACK,
    allowed_actions,
)
from orchestrator.kernel.stages import stage_label
from orchestrator.lifecycle.service import MAX_FEEDBACK_CHARS, WORK_ITEM_PATTERN, TaskService
from orchestrator.settings import Settings
from orchestrator.store import Store, Task
from orchestrator.store.listing import ListingStore
from orchestrator.text_input import check_text

__all__ = ["CSRF_FIELD", "LOGIN_CSRF_COOKIE", "SECURITY_HEADERS", "safe_next", "web_router"]

UI_HOME: Final = "/ui/"
CSRF_FIELD: Final = "csrf_token"
LOGIN_CSRF_COOKIE: Final = "orch_login_csrf"
# How many tasks the board draws at once (after the repository filter), newest first;
# older ones are a page away (``?before=ID``). 500 cards took 23x /health to draw (bench/
# api_lists.py, docs/benchmarks.md); a page of 100 keeps the board under 10x at any size.
BOARD_LIMIT: Final = 100
MAX_FORM_FIELDS: Final = 8
MAX_TOKEN_CHARS: Final = 200
MAX_QUERY_CHARS: Final = 4096
MAX_REASON_CHARS: Final = 2_000
MAX_ID_DIGITS: Final = 18
ACTION_LABELS: Final[Mapping[str, str]] = {
    APPROVE: "Approve",
    REJECT: "Reject with feedback",
    RETRY: "Retry",
    ROLLBACK: "Roll back to development",
    CANCEL: "Cancel task",
}
# No inline script or style, nothing from another origin: an artifact that slipped
# past the Markdown renderer could still not run or load anything.
SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("orchestrator.api.web", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        # The templates ship in the package: no stat of each file on every render.
        auto_reload=False,
    )
    env.filters["stage_label"] = stage_label
    env.filters["usd"] = lambda value: format_usd(float(value))
    return env


def _principal(request: Request) -> Principal | None:
    principal = getattr(request.state, PRINCIPAL_STATE_KEY, None)
    return principal if isinstance(principal, Principal) else None


def _can_act(principal: Principal | None) -> bool:
    return principal is not None and ROLES.index(principal.role) >= ROLES.index("operator")


def safe_next(target: str | None) -> str:
    """Where to go after login: only a dashboard path of this server (no open redirect)."""
    if (
        not target
        or not target.startswith(UI_HOME)
        or target.startswith("//")
        or "\\" in target
        or any(ord(ch) < 0x20 for ch in target)
        or len(target) > MAX_QUERY_CHARS
    ):
        return UI_HOME
    return target


def _task_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > MAX_ID_DIGITS:
        raise NotFoundError(f"no task {text[:40]!r}; tasks are shown by their number")
    return int(text)


def _before_id(text: str) -> int | None:
    """The board's ``before`` (a task number: the page shows older tasks); None if empty."""
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > MAX_ID_DIGITS:
        raise UsageError(f"before: {text[:40]!r} is not a task number")
    return int(text)


def _query(request: Request, name: str) -> str:
    value = request.query_params.get(name, "")
    if len(value) > MAX_QUERY_CHARS:
        raise UsageError(f"the {name} filter is {len(value)} characters; that is no filter")
    check_text(value, f"the {name} filter", one_line=True)
    return value


async def _read_form(request: Request) -> dict[str, str]:
    """The URL-encoded body as a dict: UTF-8, few fields, no field twice."""
    body = await request.body()
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FORM_FIELDS,
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError):
        raise UsageError("the form is not valid (UTF-8, at most 8 fields)") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise UsageError(f"the form sends {key[:40]!r} twice")
        form[key] = value
    return form


async def _checked_form(request: Request) -> None:
    """Every POST of the dashboard: parse the form and check its CSRF token."""
    if request.method != "POST":
        return
    form = await _read_form(request)
    sent = form.get(CSRF_FIELD)
    if request.url.path == LOGIN_PATH:
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    else:
        session_id = getattr(request.state, SESSION_STATE_KEY, None)
        session = request.app.state.sessions.get(session_id) if session_id else None
        expected = session.csrf if session is not None else ""
    if not csrf_matches(expected, sent):
        raise ForbiddenError(
            "the form's CSRF token is missing or stale; reload the page and try again"
        )
    request.state.form = form


def web_router(
    store: Store, settings: Settings, service: TaskService, sessions: SessionStore
) -> APIRouter:
    """The dashboard's routes over ``store`` and ``service``; ``sessions`` hold logins."""
    router = APIRouter(include_in_schema=False, dependencies=[Depends(_checked_form)])
    templates = _environment()
    listing = ListingStore(store)

    def page(
        request: Request,
        name: str,
        context: Mapping[str, Any],
        *,
        status: int = 200,
    ) -> HTMLResponse:
        principal = _principal(request)
        session_id = getattr(request.state, SESSION_STATE_KEY, None)
        session = sessions.get(session_id) if session_id else None
        html = templates.get_template(name).render(
            principal=principal,
            can_act=_can_act(principal),
            csrf=session.csrf if session is not None else "",
            logged_in=session is not None,
            version=__version__,
            path=request.url.path,
            **context,
        )
        return HTMLResponse(html, status_code=status, headers=dict(SECURITY_HEADERS))

    def error_page(request: Request, exc: OrchestratorError) -> HTMLResponse:
        message = " ".join((str(exc) or type(exc).__name__).split())[:500]
        return page(
            request,
            "error.html",
            {"status": exc.http_status, "message": message},
            status=exc.http_status,
        )

    def board_filters(request: Request) -> tuple[str, str]:
        repository = _query(request, "repo")
        state = _query(request, "state")
        if state not in STATE_FILTERS:
            raise UsageError(f"state {state[:40]!r} is not one of {', '.join(STATE_FILTERS)}")
        return repository, state

    # --- pages ---------------------------------------------------------------------
    @router.get("/")
    def root() -> RedirectResponse:
        return RedirectResponse(UI_HOME, status_code=303)

    @router.get("/ui")
    def ui_root() -> RedirectResponse:
        return RedirectResponse(UI_HOME, status_code=303)

    @router.get("/ui/", response_class=HTMLResponse)
    def board(request: Request) -> HTMLResponse:
        try:
            repository, state = board_filters(request)
            before = _before_id(_query(request, "before"))
            newest = store.newest_event_id()
            tasks = listing.tasks_page(
                stage=None, before_id=before, limit=BOARD_LIMIT, repository=repository or None
            )
            more = len(tasks) > BOARD_LIMIT
            tasks = tasks[:BOARD_LIMIT]
            older = (
                "/ui/?" + urlencode({"repo": repository, "state": state, "before": tasks[-1].id})
                if more
                else ""
            )
            tasks = [task for task in tasks if matches_state(task, state)]
            facts = listing.task_facts(tasks)
            now = time.time()
            cards = [card_for(task, facts.get(task.id), now) for task in tasks]
            columns = [
                (stage, stage_label(stage), [card for card in cards if card.stage == stage])
                for stage in BOARD_STAGES
            ]
        except OrchestratorError as exc:
            return error_page(request, exc)
        return page(
            request,
            "board.html",
            {
                "columns": columns,
                "repositories": listing.repositories(),
                "repository": repository,
                "state": state,
                "states": STATE_FILTERS,
                "limit": BOARD_LIMIT,
                "before": before,
                "older_url": older,
                "newest_url": "/ui/?" + urlencode({"repo": repository, "state": state}),
                "card_query": urlencode({"repo": repository, "state": state}),
                # From the newest event when the page was read: nothing falls between.
                "events_url": "/events?" + urlencode({"after": newest}),
            },
        )

    @router.get("/ui/board/cards/{task_ref}", response_class=HTMLResponse)
    def board_card(request: Request, task_ref: str) -> Response:
        """One card, for the board's live updates; 204 when the filters hide it."""
        try:
            repository, state = board_filters(request)
            task = store.get_task(_task_id(task_ref))
        except OrchestratorError as exc:
            return error_page(request, exc)
        if (repository and task.repository != repository) or not matches_state(task, state):
            return Response(status_code=204, headers=dict(SECURITY_HEADERS))
        facts = listing.task_facts([task])
        card = card_for(task, facts.get(task.id), time.time())
        html = templates.get_template("_card.html").render(card=card)
        return HTMLResponse(html, headers=dict(SECURITY_HEADERS))

    @router.get("/ui/tasks/{task_ref}", response_class=HTMLResponse)
    def task_page(request: Request, task_ref: str) -> Response:
        """A task by its number; a work item (``/ui/tasks/SVC-42``, as people type it)
        redirects to its number's page, or names its repositories when it is in several."""
        try:
            if not task_ref.isdigit() and WORK_ITEM_PATTERN.match(task_ref):
                found = store.find_task(task_ref)
                return RedirectResponse(
                    f"{UI_HOME}tasks/{found.id}", status_code=303, headers=dict(SECURITY_HEADERS)
                )
            task = store.get_task(_task_id(task_ref))
            return page(request, "task.html", task_context(request, task))
        except OrchestratorError as exc:
            return error_page(request, exc)

    def task_context(request: Request, task: Task) -> dict[str, Any]:
        now = time.time()
        newest = store.newest_event_id()
        facts = listing.task_facts([task]).get(task.id)
        jobs = store.task_jobs(task.id)
        runs = run_rows(store.task_runs(task.id), {job.id: job.status for job in jobs}, now)
        running = next((run for run in runs if run.running), None)
        pipeline = settings.pipeline_for(Path(task.repository))
        actions = allowed_actions(task.stage, failed=task.failed, pipeline=pipeline)
        ref = {"repo": task.repository}
        logs_base = f"/tasks/{task.id}/logs"
        return {
            "task": task,
            "card": card_for(task, facts, now),
            "events": timeline(store.task_events(task.id)),
            "runs": runs,
            "running": running,
            "log_url": (
                f"/tasks/{task.work_item}/logs?"
                + urlencode({**ref, "follow": 1, "run": running.id})
                if running is not None
                else ""
            ),
            "run_log_url": lambda run_id: (
                f"/tasks/{task.work_item}/logs?" + urlencode({**ref, "run": run_id})
            ),
            "events_url": "/events?" + urlencode({"task": task.work_item, **ref, "after": newest}),
            "artifacts": [
                (artifact, render_markdown(artifact.text) if artifact.text is not None else None)
                for artifact in read_artifacts(task)
            ],
            "diff": read_diff(task),
            "actions": [(action, ACTION_LABELS[action]) for action in actions],
            "all_actions": HUMAN_ACTIONS,
            "max_feedback": MAX_FEEDBACK_CHARS,
            "max_reason": MAX_REASON_CHARS,
            "logs_base": logs_base,
            "notice": _query(request, "done"),
        }

    @router.get("/ui/costs", response_class=HTMLResponse)
    def costs_page(request: Request) -> HTMLResponse:
        """Spend over a period (the cost report), the top tasks, and the budgets."""
        try:
            period = period_from_form(_query(request, "from"), _query(request, "to"), time.time())
            report = cost_report(store, settings, period, DEFAULT_TOP)
        except OrchestratorError as exc:
            return error_page(request, exc)
        return page(request, "costs.html", costs_view(report))

    @router.get("/ui/health", response_class=HTMLResponse)
    def health_page(request: Request) -> HTMLResponse:
        """The GET /status facts on one page."""
        return page(
            request, "health.html", health_view(request.app.state.status_report(), time.time())
        )

    # --- actions ---------------------------------------------------------------------
    @router.post("/ui/tasks/{task_ref}/{action}", response_class=HTMLResponse)
    def act(request: Request, task_ref: str, action: str) -> Response:
        form: dict[str, str] = request.state.form
        try:
            principal = _principal(request)
            if principal is None:  # the guard lets no post through without one
                raise NotAuthenticatedError("log in first")
            authorize(principal, "operator")
            task = store.get_task(_task_id(task_ref))
            actor = principal.actor
            if action == APPROVE:
                service.approve(task, actor=actor)
            elif action == REJECT:
                feedback = form.get("feedback", "")
                if len(feedback) > MAX_FEEDBACK_CHARS * 2:
                    raise UsageError(
                        f"the feedback is {len(feedback)} characters; the limit is "
                        f"{MAX_FEEDBACK_CHARS}"
                    )
                service.reject(task, feedback=feedback, actor=actor)
            elif action in (CANCEL, ROLLBACK):
                reason = form.get("reason", "").strip()
                if len(reason) > MAX_REASON_CHARS:
                    raise UsageError(
                        f"the reason is {len(reason)} characters; the limit is {MAX_REASON_CHARS}"
                    )
                check_text(reason, "the reason")
                if action == CANCEL:
                    service.cancel(task, actor=actor, reason=reason)
                else:
                    service.rollback(task, actor=actor, reason=reason)
            elif action == RETRY:
                service.retry(task, actor=actor)
            else:
                raise NotFoundError(
                    f"no action {action[:40]!r}; actions: {', '.join(HUMAN_ACTIONS)}"
                )
        except OrchestratorError as exc:
            return error_page(request, exc)
        return RedirectResponse(
            f"/ui/tasks/{task.id}?" + urlencode({"done": action}), status_code=303
        )

    # --- login and logout --------------------------------------------------------------
    def login_page(request: Request, *, error: str = "", status: int = 200) -> HTMLResponse:
        token = secrets.token_urlsafe(32)
        response = page(
            request,
            "login.html",
            {
                "login_csrf": token,
                "next": safe_next(request.query_params.get("next")),
                "error": error,
            },
            status=status,
        )
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=LOGIN_PATH,
        )
        return response

    @router.get(LOGIN_PATH, response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        return login_page(request)

    @router.post(LOGIN_PATH, response_class=HTMLResponse)
    def login(request: Request) -> Response:
        form: dict[str, str] = request.state.form
        token = form.get("token", "").strip()
        if not token or len(token) > MAX_TOKEN_CHARS or not token.isprintable():
            return login_page(
                request, error="paste an API token (orch token create NAME)", status=401
            )
        try:
            session_id, _session = sessions.login(token)
        except NotAuthenticatedError as exc:
            return login_page(request, error=str(exc), status=exc.http_status)
        target = safe_next(form.get("next"))
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=int(SESSION_MAX_AGE_S),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE, path=LOGIN_PATH)
        return response

    @router.post("/ui/logout")
    def logout(request: Request) -> Response:
        session_id = getattr(request.state, SESSION_STATE_KEY, None)
        if session_id:
            sessions.logout(session_id)
        response = RedirectResponse(LOGIN_PATH, status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return router
