"""The dashboard's HTTP edge without a browser: sessions, CSRF, the guard's form-post
rules, and hostile input, through the real app on both databases.

Seen failing: with the session cookie accepted for JSON writes (the cookie-only
approve went through), without the CSRF dependency (a post with no token moved the
task), without the Origin/Referer check (a post naming another origin was served),
with the Markdown renderer's ``html`` option on (the artifact's script came through),
with autoescape off in the templates (the title's script came through), and with
``next`` taken as given at login (a redirect to another site).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import httpx
import pytest
from tests.integration.support import GIT_IDENTITY, api_client, make_repo

from orchestrator.api.server import create_app
from orchestrator.api.web.sessions import SessionStore
from orchestrator.auth import Principal, TokenKind, issue_token
from orchestrator.errors import NotAuthenticatedError
from orchestrator.lifecycle.service import TaskService
from orchestrator.lifecycle.transitions import advance_stage
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Store, Task

ORIGIN: Final = {"Origin": "http://localhost"}
FORM: Final = {"Content-Type": "application/x-www-form-urlencoded"}
HOSTILE_MARKDOWN: Final = """# BRD <script>alert('title')</script>

<script>alert('block')</script>
<img src=x onerror="alert('img')">
<iframe src="http://evil.example/"></iframe>

[click](javascript:alert('link')) [data](data:text/html;base64,PHNjcmlwdD4=)
![tracker](http://evil.example/pixel.png)
<a href="javascript:alert(1)">raw link</a>
"""


class _Tags(HTMLParser):
    """Every attribute of a page, and the sources of its scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: list[tuple[str, str | None]] = []
        self.scripts: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attrs.extend(attrs)
        if tag == "script":
            self.scripts.append(dict(attrs).get("src"))


@dataclass
class World:
    store: Store
    settings: Settings
    repo: Path
    task: Task
    tokens: dict[str, str]

    @contextmanager
    def client(self) -> Iterator[httpx.Client]:
        app = create_app(
            store=self.store, settings=self.settings, service=TaskService(self.store, self.settings)
        )
        with api_client(app) as client:
            yield client


def settings_for(tmp_path: Path, db_url: str, repo: Path) -> Settings:
    config = tmp_path / "orch.toml"
    config.write_text(
        f"database_url = {json.dumps(db_url)}\n"
        'data_dir = ".orch"\n'
        + "".join(
            f'[stages.{stage}]\nagent = "scripted"\n'
            for stage in ("analysis", "architecture", "development")
        )
        + f"[repos.shop]\npath = {json.dumps(str(repo))}\n"
    )
    return load_settings(config)


@pytest.fixture
def world(tmp_path: Path, db_url: str, store: Store) -> World:
    repo = make_repo(tmp_path / "shop")
    settings = settings_for(tmp_path, db_url, repo)
    task = TaskService(store, settings).create_task(
        repo_path=repo,
        title="Add a <script>alert('t')</script> cart",
        work_item="SHOP-1",
        actor="t",
    )
    with store.transaction() as tx:
        advance_stage(
            tx, settings, tx.get_task(task.id), "analysis", "brd-approval", actor="t", reason="t"
        )
    tokens = {
        role: issue_token(store, f"{role}-1", role, actor="t")
        for role in ("viewer", "operator", "admin")
    }
    return World(store, settings, repo, store.get_task(task.id), tokens)


def login(client: httpx.Client, token: str) -> str:
    """Log ``client`` in with ``token``; returns the page's CSRF token."""
    form = client.get("/ui/login")
    assert form.status_code == 200
    csrf = _field(form.text, "csrf_token")
    response = client.post(
        "/ui/login",
        data={"csrf_token": csrf, "token": token, "next": "/ui/"},
        headers=ORIGIN,
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/ui/"
    board = client.get("/ui/")
    assert board.status_code == 200, board.text
    return _field(board.text, "csrf_token")


def _field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} in the page"
    return found.group(1)


def _stage(world: World) -> str:
    return world.store.get_task(world.task.id).stage


def _one_line_error(response: httpx.Response) -> None:
    text = response.text
    assert "Traceback" not in text
    if response.headers.get("content-type", "").startswith("application/json"):
        assert "\n" not in response.json()["error"]
    else:
        found = re.search(r'<p class="error" role="alert">([^<]*)</p>', text)
        assert found, text[:300]
        assert "\n" not in found.group(1)


# --- no session ------------------------------------------------------------------------


def test_pages_without_a_session_go_to_the_login_form(world: World) -> None:
    with world.client() as client:
        for path in ("/ui/", f"/ui/tasks/{world.task.id}", f"/ui/board/cards/{world.task.id}"):
            response = client.get(path)
            assert response.status_code == 303, (path, response.text)
            assert response.headers["location"].startswith("/ui/login?next=%2Fui%2F")
        root = client.get("/")
        assert (root.status_code, root.headers["location"]) == (303, "/ui/")
        form = client.get("/ui/login")
        assert form.status_code == 200
        assert 'type="password"' in form.text
        assert client.get("/ui/static/dashboard.css").status_code == 200
        for escape in ("/ui/static/%2e%2e/routes.py", "/ui/static/%2e%2e/%2e%2e/settings.py"):
            outside = client.get(escape)
            assert outside.status_code in (401, 404), escape
            assert "def " not in outside.text


def test_posts_without_a_session_are_refused(world: World) -> None:
    with world.client() as client:
        anonymous = client.post(
            f"/ui/tasks/{world.task.id}/approve", data={"csrf_token": "x"}, headers=ORIGIN
        )
        assert anonymous.status_code == 401
        # A bearer token is no session: the form's CSRF check still applies.
        bearer = client.post(
            f"/ui/tasks/{world.task.id}/approve",
            data={"csrf_token": "x"},
            headers={**ORIGIN, "Authorization": f"Bearer {world.tokens['operator']}"},
        )
        assert bearer.status_code == 403
        # Logging out needs no session, but still a CSRF token of one.
        logout = client.post("/ui/logout", data={"csrf_token": "x"}, headers=ORIGIN)
        assert logout.status_code == 403
    assert _stage(world) == "brd-approval"


# --- login, logout, the cookie ---------------------------------------------------------


def test_login_sets_a_strict_httponly_cookie_and_logout_ends_it(world: World) -> None:
    with world.client() as client:
        form = client.get("/ui/login")
        csrf = _field(form.text, "csrf_token")
        response = client.post(
            "/ui/login",
            data={"csrf_token": csrf, "token": world.tokens["viewer"], "next": "/ui/"},
            headers=ORIGIN,
        )
        cookie = response.headers["set-cookie"]
        assert "orch_session=" in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie.replace("Strict", "strict")
        board = client.get("/ui/")
        assert board.status_code == 200
        assert "viewer-1" in board.text
        logout = client.post(
            "/ui/logout", data={"csrf_token": _field(board.text, "csrf_token")}, headers=ORIGIN
        )
        assert logout.status_code == 303
        assert client.get("/ui/").status_code == 303


def test_a_revoked_token_ends_its_session(world: World) -> None:
    with world.client() as client:
        login(client, world.tokens["operator"])
        world.store.revoke_api_token("operator-1", actor="t", event_kind=TokenKind.REVOKED)
        assert client.get("/ui/").status_code == 303


@pytest.mark.parametrize(
    "token", ["", "orch_forged", "x" * 5000, "orch_\x00nul", "bad\nline"], ids=repr
)
def test_a_bad_token_is_a_401_login_page(world: World, token: str) -> None:
    with world.client() as client:
        csrf = _field(client.get("/ui/login").text, "csrf_token")
        response = client.post(
            "/ui/login", data={"csrf_token": csrf, "token": token}, headers=ORIGIN
        )
        assert response.status_code == 401, response.text
        assert "orch_session" not in response.headers.get("set-cookie", "")
        _one_line_error(response)


def test_login_without_its_csrf_token_is_refused(world: World) -> None:
    with world.client() as client:
        client.get("/ui/login")
        response = client.post(
            "/ui/login",
            data={"csrf_token": "guess", "token": world.tokens["admin"]},
            headers=ORIGIN,
        )
        assert response.status_code == 403
        assert "orch_session" not in response.headers.get("set-cookie", "")


@pytest.mark.parametrize(
    "target",
    ["//evil.example/", "https://evil.example/", "/\\evil.example", "/tasks", "javascript:x"],
)
def test_login_never_redirects_off_the_dashboard(world: World, target: str) -> None:
    with world.client() as client:
        csrf = _field(client.get("/ui/login").text, "csrf_token")
        response = client.post(
            "/ui/login",
            data={"csrf_token": csrf, "token": world.tokens["viewer"], "next": target},
            headers=ORIGIN,
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/"


def test_the_session_cookie_never_authorises_a_json_write(world: World) -> None:
    with world.client() as client:
        login(client, world.tokens["operator"])
        assert client.get("/tasks").status_code == 200  # reads take the cookie
        write = client.post(f"/tasks/{world.task.work_item}/approve", json={}, headers=ORIGIN)
        assert write.status_code == 401, write.text
    assert _stage(world) == "brd-approval"


# --- CSRF and the form-post rules --------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "data", "status"),
    [
        (ORIGIN, {"feedback": "x"}, 403),  # no CSRF token
        (ORIGIN, {"csrf_token": "wrong"}, 403),
        (ORIGIN, {"csrf_token": ""}, 403),
        ({"Origin": "http://evil.example"}, "CSRF", 403),
        ({"Origin": "null"}, "CSRF", 403),
        ({"Referer": "http://evil.example/page"}, "CSRF", 403),
        ({}, "CSRF", 403),  # neither Origin nor Referer
        ({"Origin": "http://localhost:9"}, "CSRF", 403),  # another port, another origin
    ],
)
def test_a_forged_or_cross_site_post_is_refused(
    world: World, headers: dict[str, str], data: Any, status: int
) -> None:
    with world.client() as client:
        csrf = login(client, world.tokens["operator"])
        body = {"csrf_token": csrf} if data == "CSRF" else data
        response = client.post(f"/ui/tasks/{world.task.id}/approve", data=body, headers=headers)
        assert response.status_code == status, response.text
        _one_line_error(response)
    assert _stage(world) == "brd-approval"


def test_a_json_or_multipart_post_to_the_dashboard_is_a_415(world: World) -> None:
    with world.client() as client:
        csrf = login(client, world.tokens["operator"])
        as_json = client.post(
            f"/ui/tasks/{world.task.id}/approve", json={"csrf_token": csrf}, headers=ORIGIN
        )
        multipart = client.post(
            f"/ui/tasks/{world.task.id}/approve",
            files={"csrf_token": (None, csrf)},
            headers=ORIGIN,
        )
    assert as_json.status_code == 415
    assert multipart.status_code == 415
    assert _stage(world) == "brd-approval"


def test_an_operator_acts_with_the_right_token_and_is_the_actor(world: World) -> None:
    with world.client() as client:
        csrf = login(client, world.tokens["operator"])
        page = client.get(f"/ui/tasks/{world.task.id}")
        assert 'action="/ui/tasks/' in page.text
        referer_only = {"Referer": f"http://localhost/ui/tasks/{world.task.id}"}
        response = client.post(
            f"/ui/tasks/{world.task.id}/approve", data={"csrf_token": csrf}, headers=referer_only
        )
        assert response.status_code == 303, response.text
        assert response.headers["location"] == f"/ui/tasks/{world.task.id}?done=approve"
        again = client.post(
            f"/ui/tasks/{world.task.id}/approve", data={"csrf_token": csrf}, headers=ORIGIN
        )
        assert again.status_code == 409  # the service refuses, as for the API
        _one_line_error(again)
    assert _stage(world) == "architecture"
    approval = [e for e in world.store.task_events(world.task.id) if e.kind == "task.approved"]
    assert [e.actor for e in approval] == ["token:operator-1"]


def test_a_viewer_sees_no_actions_and_its_post_is_a_403(world: World) -> None:
    with world.client() as client:
        csrf = login(client, world.tokens["viewer"])
        page = client.get(f"/ui/tasks/{world.task.id}")
        assert page.status_code == 200
        assert 'action="/ui/tasks/' not in page.text
        assert ">Approve<" not in page.text
        response = client.post(
            f"/ui/tasks/{world.task.id}/approve", data={"csrf_token": csrf}, headers=ORIGIN
        )
        assert response.status_code == 403
    assert _stage(world) == "brd-approval"


# --- hostile input ---------------------------------------------------------------------------


def test_a_work_item_leads_to_its_tasks_page(world: World) -> None:
    with world.client() as client:
        login(client, world.tokens["viewer"])
        response = client.get("/ui/tasks/SHOP-1")
        assert response.status_code == 303, response.text
        assert response.headers["location"] == f"/ui/tasks/{world.task.id}"
        page = client.get(response.headers["location"])
        card = client.get("/ui/board/cards/SHOP-1")  # the board's own links are numbers
    assert page.status_code == 200
    assert "SHOP-1" in page.text
    assert card.status_code == 404


@pytest.mark.parametrize(
    "ref", ["-1", "0", "9" * 40, "1.5", "%00", "%EF%BC%91", "SHOP-2", "1%20OR%201=1", "a" * 65]
)
def test_bad_task_ids_are_a_404_page(world: World, ref: str) -> None:
    with world.client() as client:
        login(client, world.tokens["viewer"])
        response = client.get(f"/ui/tasks/{ref}")
        card = client.get(f"/ui/board/cards/{ref}")
    assert response.status_code == 404, response.text
    assert card.status_code == 404
    _one_line_error(response)


@pytest.mark.parametrize(
    "data",
    [
        {"feedback": "x" * 9000},
        {"feedback": "   "},
        {"feedback": "nul \x00 here"},
        {"feedback": "surrogate \ud800"},
        {"f1": "1", "f2": "2", "f3": "3", "f4": "4", "f5": "5", "f6": "6", "f7": "7", "f8": "8"},
    ],
    ids=["long", "blank", "nul", "surrogate", "too-many-fields"],
)
def test_odd_form_fields_are_refused_with_one_line(world: World, data: dict[str, str]) -> None:
    with world.client() as client:
        csrf = login(client, world.tokens["operator"])
        fields = {"csrf_token": csrf, **data}
        encoded = "&".join(f"{key}={_quote(value)}" for key, value in fields.items()).encode()
        response = client.post(
            f"/ui/tasks/{world.task.id}/reject", content=encoded, headers={**ORIGIN, **FORM}
        )
    assert response.status_code in (413, 422), response.text
    _one_line_error(response)
    assert _stage(world) == "brd-approval"


def _quote(value: str) -> str:
    return quote(value.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize(
    "body",
    [b"csrf_token=%ff%fe", b"\xff\xfe=1", b"a=1&a=2", b"x" * 300_000],
    ids=["bad-percent-utf8", "bad-utf8", "duplicate", "huge"],
)
def test_a_broken_form_body_is_refused(world: World, body: bytes) -> None:
    with world.client() as client:
        login(client, world.tokens["operator"])
        response = client.post(
            f"/ui/tasks/{world.task.id}/cancel", content=body, headers={**ORIGIN, **FORM}
        )
    assert response.status_code in (403, 413, 422), response.text
    assert "Traceback" not in response.text
    assert _stage(world) == "brd-approval"


def test_unknown_actions_and_filters_are_refused(world: World) -> None:
    with world.client() as client:
        csrf = login(client, world.tokens["operator"])
        unknown = client.post(
            f"/ui/tasks/{world.task.id}/merge", data={"csrf_token": csrf}, headers=ORIGIN
        )
        bad_state = client.get("/ui/", params={"state": "<script>"})
        huge_repo = client.get("/ui/", params={"repo": "r" * 5000})
    assert unknown.status_code == 404
    assert bad_state.status_code == 422
    assert "<script>" not in bad_state.text.split("<main", 1)[1].split("</main>")[0].replace(
        "&lt;script&gt;", ""
    )
    assert huge_repo.status_code == 422
    assert _stage(world) == "brd-approval"


def test_script_in_a_title_or_an_artifact_is_shown_as_text(world: World) -> None:
    worktree = Path(world.task.worktree)
    folder = worktree / "docs" / "work-items" / world.task.work_item
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "01-brd.md").write_text(HOSTILE_MARKDOWN)
    env = {**GIT_IDENTITY, "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "add", "-A"], cwd=worktree, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "brd"], cwd=worktree, check=True, env=env)
    with world.client() as client:
        login(client, world.tokens["viewer"])
        board = client.get("/ui/")
        page = client.get(f"/ui/tasks/{world.task.id}")
    assert page.status_code == 200
    for html in (board.text, page.text):
        assert "<script>alert" not in html
        assert "&lt;script&gt;alert(&#39;t&#39;)&lt;/script&gt;" in html
    # The artifact's markup is on the page, as text.
    assert "&lt;script&gt;alert('block')&lt;/script&gt;" in page.text
    assert "onerror=&quot;alert('img')&quot;" in page.text
    assert "<img" not in page.text
    assert "<iframe" not in page.text
    assert 'href="javascript:' not in page.text
    assert 'href="data:' not in page.text
    tags = _Tags()
    tags.feed(page.text)
    assert [name for name, _ in tags.attrs if name.startswith("on")] == []
    assert tags.scripts == ["/ui/static/live.js", "/ui/static/task.js"]
    assert "[image: tracker]" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"


# --- sessions (web/sessions.py) with a clock the test moves ------------------------------


def test_sessions_end_when_idle_when_too_old_and_when_crowded_out(world: World) -> None:
    now = [1_000.0]
    sessions = SessionStore(
        world.store,
        world.settings,
        clock=lambda: now[0],
        idle_s=10.0,
        max_age_s=100.0,
        max_sessions=2,
    )
    token = world.tokens["operator"]
    idle, _ = sessions.login(token)
    assert sessions.principal(idle) == Principal("operator-1", "operator")
    now[0] += 11.0
    assert sessions.principal(idle) is None  # idle too long

    old, session = sessions.login(token)
    assert session.csrf
    assert session.csrf != old
    while now[0] - session.created_at <= 100.0:
        assert sessions.principal(old) is not None  # kept alive by use...
        now[0] += 9.0
    assert sessions.principal(old) is None  # ...but not past its maximum age

    first, _ = sessions.login(token)
    second, _ = sessions.login(world.tokens["viewer"])
    third, _ = sessions.login(token)
    assert sessions.principal(first) is None  # the least recently used went
    assert sessions.principal(second) == Principal("viewer-1", "viewer")
    assert sessions.principal(third) is not None
    assert len(sessions) == 2
    with pytest.raises(NotAuthenticatedError):
        sessions.login("orch_not-a-token")
    assert sessions.principal("not-a-session") is None


def test_the_board_filters_by_state_and_repository(world: World) -> None:
    with world.client() as client:
        login(client, world.tokens["viewer"])
        card = f'id="task-{world.task.id}"'
        assert card in client.get("/ui/", params={"state": "waiting"}).text
        assert card not in client.get("/ui/", params={"state": "ended"}).text
        assert card not in client.get("/ui/", params={"repo": "/elsewhere"}).text
        assert card in client.get("/ui/", params={"repo": str(world.repo)}).text
        hidden = client.get(f"/ui/board/cards/{world.task.id}", params={"state": "failed"})
        assert hidden.status_code == 204
        TaskService(world.store, world.settings).cancel(world.task, actor="t", reason="done")
        ended = client.get("/ui/", params={"state": "ended"}).text
        assert card in ended.split('data-stage="cancelled"', 1)[1]
        assert card not in client.get("/ui/", params={"state": "waiting"}).text
        shown = client.get(f"/ui/board/cards/{world.task.id}")
        assert 'data-stage="cancelled"' in shown.text


class _Outline(HTMLParser):
    """What an accessibility check needs from a page: landmarks, headings, ids, labels,
    form controls (and whether each sits inside a <label>), buttons and their text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.ids: list[str] = []
        self.label_for: set[str] = set()
        self.controls: list[tuple[dict[str, str | None], bool]] = []
        self.buttons: list[str] = []
        self._labels = 0
        self._button: list[str] | None = None
        self.lang: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        if tag == "html":
            self.lang = found.get("lang")
        if found.get("id"):
            self.ids.append(str(found["id"]))
        if tag == "label":
            self._labels += 1
            if found.get("for"):
                self.label_for.add(str(found["for"]))
        if tag in ("input", "select", "textarea") and found.get("type") != "hidden":
            self.controls.append((found, self._labels > 0))
        if tag == "button":
            self._button = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._labels -= 1
        if tag == "button" and self._button is not None:
            self.buttons.append(" ".join("".join(self._button).split()))
            self._button = None

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button.append(data)


def _check_accessible(html: str, where: str) -> None:
    outline = _Outline()
    outline.feed(html)
    names = [tag for tag, _ in outline.tags]
    assert outline.lang == "en", where
    assert names.count("main") == 1, where
    assert names.count("h1") == 1, where
    assert names.count("nav") == 1, where
    assert any(attrs.get("aria-label") for tag, attrs in outline.tags if tag == "nav"), where
    assert "header" in names, where
    assert "footer" in names, where
    assert len(outline.ids) == len(set(outline.ids)), f"{where}: an id twice"
    for tag, attrs in outline.tags:
        labelled_by = attrs.get("aria-labelledby")
        if labelled_by:
            assert labelled_by in outline.ids, (where, tag, labelled_by)
        assert not any(name.startswith("on") for name in attrs), (where, tag)
        assert attrs.get("role") != "button", f"{where}: a {tag} pretending to be a button"
        if tag == "a":
            assert attrs.get("href") not in (None, "", "#"), f"{where}: a link going nowhere"
    for attrs, inside_label in outline.controls:
        assert inside_label or attrs.get("id") in outline.label_for, (where, attrs)
    assert all(outline.buttons), f"{where}: a button without text"


def test_the_pages_have_landmarks_labels_and_real_buttons(world: World) -> None:
    """Seen failing with the feedback field's label unbound (no ``for``) and with the
    board's Filter button made a link with role=button."""
    with world.client() as client:
        _check_accessible(client.get("/ui/login").text, "login")
        login(client, world.tokens["operator"])
        for path in ("/ui/", f"/ui/tasks/{world.task.id}", "/ui/tasks/999999"):
            _check_accessible(client.get(path).text, path)
        page = client.get(f"/ui/tasks/{world.task.id}").text
    outline = _Outline()
    outline.feed(page)
    assert {"Approve", "Reject with feedback", "Cancel task", "Log out"} <= set(outline.buttons)
