"""Access control at the HTTP edge, over every route the API documents.

The table of routes is the app's own OpenAPI schema, so an endpoint added later is
checked without anyone remembering to: a write refused without a token (401) and with
a role too low (403), a read refused without a token, and nothing changed in the
database by a refused request. Then the browser rules (a foreign Origin, a form post,
a foreign Host), the repository allow-list, and the actor each event records.

Seen failing with the guard taken out (main had none): the table test's first
tokenless write created a task, the cross-site approves moved the task, and a foreign
Host was served; without the allow-list check POST /tasks plants ``orch/<ID>`` in any
repository (issue 10).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import sqlalchemy as sa
from tests.integration.support import api_client, make_repo

from orchestrator.api.server import create_app
from orchestrator.auth import issue_token, required_role
from orchestrator.lifecycle.service import TaskService
from orchestrator.lifecycle.transitions import advance_stage
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Store, Task
from orchestrator.store.schema import metadata

# Routes that need no token, each for a stated reason; anything else needs one.
OPEN_ROUTES: Final = {
    ("GET", "/health"),  # liveness for load balancers and the staging runner
    # Signed by their senders (HMAC / secret header): refused unsigned, checked below.
    ("POST", "/webhooks/telegram"),
    ("POST", "/webhooks/gitea"),
    ("POST", "/webhooks/github"),
    ("POST", "/webhooks/plane"),
}
ADMIN_ROUTES: Final = {("POST", "/transition-lease/release"), ("GET", "/tokens")}


@dataclass
class World:
    store: Store
    settings: Settings
    repo: Path
    unlisted: Path
    task: Task
    tokens: dict[str, str]

    def client(self, role: str | None = None) -> Any:
        app = create_app(
            store=self.store, settings=self.settings, service=TaskService(self.store, self.settings)
        )
        return api_client(app, self.tokens[role] if role else None)

    def snapshot(self) -> dict[str, list[Any]]:
        """Every row of every table: a refused request must leave all of them as they were."""
        with self.store.engine.connect() as conn:
            return {
                name: sorted(map(repr, conn.execute(sa.select(table)).all()))
                for name, table in metadata.tables.items()
            }


def settings_for(tmp_path: Path, db_url: str, repo: Path, extra: str = "") -> Settings:
    config = tmp_path / "orch.toml"
    config.write_text(
        f"database_url = {json.dumps(db_url)}\n"
        'data_dir = ".orch"\n'
        'telegram_webhook_secret = "tg"\ngithub_webhook_secret = "gh"\n'
        'gitea_webhook_secret = "gt"\nplane_webhook_secret = "pl"\n'
        + extra
        + "".join(
            f'[stages.{stage}]\nagent = "scripted"\n'
            for stage in ("analysis", "architecture", "development")
        )
        + f"[repos.shop]\npath = {json.dumps(str(repo))}\n"
    )
    return load_settings(config)


def at_the_gate(store: Store, settings: Settings, repo: Path) -> Task:
    task = TaskService(store, settings).create_task(
        repo_path=repo, title="Add a cart", work_item="SHOP-1", actor="t"
    )
    for step in ("brd-approval",):
        current = store.get_task(task.id)
        with store.transaction() as tx:
            assert advance_stage(tx, settings, current, current.stage, step, actor="t", reason="")
    return store.get_task(task.id)


@pytest.fixture
def world(tmp_path: Path, db_url: str, store: Store) -> World:
    repo = make_repo(tmp_path / "shop")
    unlisted = make_repo(tmp_path / "elsewhere")
    settings = settings_for(tmp_path, db_url, repo)
    task = at_the_gate(store, settings, repo)
    tokens = {
        role: issue_token(store, f"{role}-1", role, actor="t")
        for role in ("viewer", "operator", "admin")
    }
    return World(store, settings, repo, unlisted, task, tokens)


def routes(world: World) -> list[tuple[str, str]]:
    """(method, path template) of every operation the API documents."""
    with world.client("viewer") as client:
        schema = client.get("/openapi.json").json()
    return sorted(
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
    )


def request_for(world: World, method: str, template: str) -> dict[str, Any]:
    """A request that only access control could refuse: a real task, a valid body."""
    path = template.replace("{ref}", world.task.work_item)
    params = {"work_item": world.task.work_item} if "transition-lease" in path else {}
    body: Any = {}
    if (method, template) == ("POST", "/tasks"):
        body = {"repo": str(world.repo), "title": "Another", "work_item": "SHOP-2"}
    return {"method": method, "url": path, "params": params, "json": body}


def assert_refused(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str)
    assert "\n" not in error


def test_every_route_refuses_requests_without_the_right_role(world: World) -> None:
    before = world.snapshot()
    documented = routes(world)
    assert ("POST", "/tasks/{ref}/approve") in documented  # the table is the real one
    writes = [(m, p) for m, p in documented if m != "GET" and (m, p) not in OPEN_ROUTES]
    reads = [(m, p) for m, p in documented if m == "GET" and (m, p) not in OPEN_ROUTES]
    assert len(writes) >= 6

    for method, template in writes + reads:
        request = request_for(world, method, template)
        with world.client() as anonymous:
            assert_refused(anonymous.request(**request), 401)
        with world.client() as anonymous:
            forged = anonymous.request(**request, headers={"Authorization": "Bearer orch_forged"})
            assert_refused(forged, 401)
        if method == "GET" and (method, template) not in ADMIN_ROUTES:
            continue
        with world.client("viewer") as viewer:
            assert_refused(viewer.request(**request), 403)
        if (method, template) in ADMIN_ROUTES:
            with world.client("operator") as operator:
                assert_refused(operator.request(**request), 403)
    assert world.snapshot() == before
    assert world.store.get_task(world.task.id).stage == "brd-approval"
    # What was refused is allowed with the right role: the refusals were access control.
    with world.client("operator") as operator:
        approved = operator.post(f"/tasks/{world.task.work_item}/approve", json={})
    assert approved.status_code == 200, approved.text
    assert approved.json()["stage"] == "architecture"


def test_every_open_route_is_still_guarded_by_something(world: World) -> None:
    """The routes without a token: /health reads nothing of a task; webhooks need their
    signatures. A new open route fails here until it is added, with a reason, above."""
    documented = set(routes(world))
    open_routes = {
        (method, template)
        for method, template in documented
        if required_role(method, request_for(world, method, template)["url"], public_read=False)
        is None
    }
    assert open_routes == OPEN_ROUTES & documented
    before = world.snapshot()
    for _method, template in OPEN_ROUTES - {("GET", "/health")}:
        with world.client() as anonymous:
            unsigned = anonymous.post(template, json={"update_id": 1})
        assert unsigned.status_code == 401, (template, unsigned.text)
    assert world.snapshot() == before


def test_a_default_install_says_how_to_create_a_token(
    tmp_path: Path, db_url: str, store: Store
) -> None:
    repo = make_repo(tmp_path / "shop")
    settings = settings_for(tmp_path, db_url, repo)
    task = at_the_gate(store, settings, repo)
    app = create_app(store=store, settings=settings, service=TaskService(store, settings))
    with api_client(app) as client:
        response = client.post(f"/tasks/{task.work_item}/approve", json={})
        health = client.get("/health")

    assert_refused(response, 401)
    assert response.json()["error"].startswith("no API token exists yet: create one with")
    assert "orch token create NAME --role operator" in response.json()["error"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert health.status_code == 200
    assert store.get_task(task.id).stage == "brd-approval"


def test_health_and_the_api_description_are_open_to_reads_only(world: World) -> None:
    with world.client() as anonymous:
        for path in ("/health", "/docs", "/openapi.json"):
            assert anonymous.get(path).status_code == 200, path
        assert_refused(anonymous.post("/health", json={}), 401)
        assert_refused(anonymous.get("/status"), 401)


def test_a_revoked_token_is_refused(world: World) -> None:
    assert world.store.revoke_api_token("operator-1", actor="t", event_kind="token.revoked")
    with world.client("operator") as client:
        response = client.post(f"/tasks/{world.task.work_item}/approve", json={})
    assert_refused(response, 401)
    assert "unknown or revoked" in response.json()["error"]
    assert world.store.get_task(world.task.id).stage == "brd-approval"


@pytest.mark.parametrize(
    "header", ["Bearer café", "Bearer \u00ff\u00fe", "Basic dXNlcjpwYXNz", "Bearer"]
)
def test_an_odd_authorization_header_is_a_401_not_a_500(world: World, header: str) -> None:
    with world.client() as client:
        response = client.get("/tasks", headers={"Authorization": header.encode("utf-8")})
    assert_refused(response, 401)


def test_public_read_opens_reads_but_not_writes(tmp_path: Path, world: World) -> None:
    world.settings = settings_for(
        tmp_path,
        str(world.store.engine.url.render_as_string(False)),
        world.repo,
        "public_read = true\n",
    )
    with world.client() as anonymous:
        assert anonymous.get("/tasks").status_code == 200
        assert anonymous.get(f"/tasks/{world.task.work_item}").status_code == 200
        refused = anonymous.post(f"/tasks/{world.task.work_item}/approve", json={})
    assert_refused(refused, 401)
    assert world.store.get_task(world.task.id).stage == "brd-approval"


def test_each_event_names_the_token_that_acted(world: World) -> None:
    with world.client("operator") as client:
        assert client.post(f"/tasks/{world.task.work_item}/approve", json={}).status_code == 200
        created = client.post(
            "/tasks", json={"repo": str(world.repo), "title": "Two", "work_item": "SHOP-2"}
        )
    assert created.status_code == 201, created.text
    [approved] = [e for e in world.store.task_events(world.task.id) if e.kind == "task.approved"]
    assert approved.actor == "token:operator-1"
    assert approved.reason == "approved by token:operator-1"
    new = world.store.find_task("SHOP-2")
    assert {e.actor for e in world.store.task_events(new.id)} == {"token:operator-1"}


# --- browser safety --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "fragment"),
    [
        ({"Origin": "https://evil.example"}, 403, "cross-origin request refused"),
        ({"Origin": "null"}, 403, "cross-origin request refused"),
        ({"Origin": "http://localhost:9999"}, 403, "cross-origin request refused"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        ({"Content-Type": "text/plain"}, 415, "application/json"),
    ],
)
def test_a_cross_site_write_is_refused(
    world: World, headers: dict[str, str], status: int, fragment: str
) -> None:
    before = world.snapshot()
    with world.client("operator") as client:
        if "Content-Type" in headers:
            response = client.post(
                f"/tasks/{world.task.work_item}/approve", content=b"a=1", headers=headers
            )
        else:
            response = client.post(
                f"/tasks/{world.task.work_item}/approve", json={}, headers=headers
            )
    assert_refused(response, status)
    assert fragment in response.json()["error"]
    assert world.snapshot() == before


def test_a_bodyless_write_is_refused_as_a_browser_could_send_it(world: World) -> None:
    # fetch(url, {method: "POST", mode: "no-cors"}) sends no Content-Type, and no preflight.
    with world.client("operator") as client:
        response = client.post(f"/tasks/{world.task.work_item}/approve")
    assert_refused(response, 415)
    assert world.store.get_task(world.task.id).stage == "brd-approval"


def test_a_same_origin_write_is_accepted(world: World) -> None:
    with world.client("operator") as client:
        response = client.post(
            f"/tasks/{world.task.work_item}/approve",
            json={},
            headers={"Origin": "http://localhost"},
        )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/tasks"), ("GET", "/health"), ("POST", "/webhooks/github"), ("GET", "/status")],
)
@pytest.mark.parametrize(
    "host", ["orch.attacker.example", "orch.attacker.example:8765", "10.0.0.5"]
)
def test_a_foreign_host_is_refused(world: World, method: str, path: str, host: str) -> None:
    before = world.snapshot()
    with world.client("admin") as client:
        response = client.request(method, path, headers={"Host": host}, json={})
    assert_refused(response, 400)
    assert "is not in allowed_hosts" in response.json()["error"]
    assert world.snapshot() == before


def test_a_host_added_to_allowed_hosts_is_served(tmp_path: Path, world: World) -> None:
    world.settings = settings_for(
        tmp_path,
        str(world.store.engine.url.render_as_string(False)),
        world.repo,
        'allowed_hosts = ["orch.example.com"]\n',
    )
    with world.client("viewer") as client:
        served = client.get("/tasks", headers={"Host": "orch.example.com"})
        loopback = client.get("/tasks")
    assert served.status_code == 200
    assert_refused(loopback, 400)  # the list replaces the default


# --- the repository allow-list ------------------------------------------------------------


def test_post_tasks_outside_the_allow_list_is_refused(world: World) -> None:
    before = world.snapshot()
    with world.client("admin") as client:
        response = client.post(
            "/tasks", json={"repo": str(world.unlisted), "title": "Plant a branch"}
        )
    assert_refused(response, 403)
    assert "is not listed in orch.toml" in response.json()["error"]
    assert world.snapshot() == before
    branches = subprocess.run(
        ["git", "branch", "--list", "orch/*"],
        cwd=world.unlisted,
        capture_output=True,
        text=True,
        check=True,
    )
    assert branches.stdout.strip() == ""


def test_allow_any_repo_lifts_the_allow_list(tmp_path: Path, world: World) -> None:
    world.settings = settings_for(
        tmp_path,
        str(world.store.engine.url.render_as_string(False)),
        world.repo,
        "allow_any_repo = true\n",
    )
    with world.client("operator") as client:
        response = client.post(
            "/tasks", json={"repo": str(world.unlisted), "title": "Anywhere", "work_item": "E-1"}
        )
    assert response.status_code == 201, response.text
