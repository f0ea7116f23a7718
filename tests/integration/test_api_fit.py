"""The API as clients read it (issue 9, decision 0018): ISO 8601 times, the task list's
cost / current job / stage entry, keyset pages on every list with hostile ``limit`` and
``cursor`` values refused in one line, ``/docs`` with no external asset, and
``/metrics`` parsed by prometheus-client's own parser while a real task runs.

A real git repository, a real SQLite store, the real engine with a shell agent; no
patching. The paged reads themselves are tested on both databases in
``test_listing_store.py``.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import api_client, make_repo

from orchestrator.api.metrics import HISTOGRAM_NAMES, METRIC_NAMES
from orchestrator.api.pagination import MAX_LIMIT
from orchestrator.api.server import create_app
from orchestrator.auth import issue_token
from orchestrator.engine.core import Engine
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Store

ISO: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
SH_AGENT: Final = (
    "mkdir -p $ORCH_ARTIFACT_DIR"
    " && echo 'a long enough business requirements document for this'"
    " > $ORCH_ARTIFACT_DIR/01-brd.md"
)
ORCH_TOML: Final = f"""\
retry_backoff_s = 0

[agents.sh]
command = ["sh", "-c", "{SH_AGENT}"]

[stages.analysis]
agent = "sh"

[stages.architecture]
agent = "sh"

[stages.development]
agent = "sh"
"""
RUN_TIMEOUT_S: Final = 120
# Every list endpoint, with the path parameter a real task fills in.
LISTS: Final = (
    "/tasks",
    "/queue",
    "/tasks/API-1/events",
    "/tasks/API-1/runs",
    "/tasks/API-1/jobs",
    "/tokens",
)


class World:
    def __init__(self, tmp_path: Path, extra: str = "") -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.repo = make_repo(tmp_path / "repo")
        (tmp_path / "orch.toml").write_text(
            extra + ORCH_TOML + f'[repos.repo]\npath = "{self.repo}"\n'
        )
        self.settings: Settings = load_settings(cwd=tmp_path)
        self.store = Store.open(self.settings.effective_database_url)
        self.engine = Engine(self.store, self.settings)
        self.service = TaskService(self.store, self.settings)
        self.app = create_app(
            store=self.store, settings=self.settings, service=self.service, engine=self.engine
        )
        self.tokens = {
            role: issue_token(self.store, f"{role}-1", role, actor="test")
            for role in ("viewer", "operator", "admin")
        }

    def client(self, role: str | None = "admin") -> Any:
        return api_client(self.app, self.tokens[role] if role else None)

    def create(self, work_item: str) -> None:
        self.service.create_task(
            repo_path=self.repo, title=f"Task {work_item}", work_item=work_item, actor="test"
        )

    def close(self) -> None:
        self.engine.shutdown(kill=True)
        self.store.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    yield made
    made.close()


def assert_one_line_4xx(response: httpx.Response) -> str:
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]
    assert "\n" not in body["error"]
    assert "Traceback" not in body["error"]
    return str(body["error"])


def run_until(world: World, done: Any) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    world.engine.run(
        threading.Event(),
        until=lambda: (
            done() or time.monotonic() > deadline or bool(world.store.count_failed_tasks())
        ),
    )
    assert done(), (
        "the engine did not get there in time",
        [(t.stage, t.failed_reason) for t in world.store.list_tasks()],
    )


# --- ISO 8601 ------------------------------------------------------------------------


def moments(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, value) of a field named *_at or not_before, at any depth but data."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "data":
                continue
            if key.endswith("_at") or key == "not_before":
                yield f"{path}.{key}", inner
            yield from moments(inner, f"{path}.{key}")
    elif isinstance(value, list):
        for n, inner in enumerate(value):
            yield from moments(inner, f"{path}[{n}]")


def test_every_answer_shows_moments_in_iso_8601_utc(world: World) -> None:
    """Every JSON read the API documents (so a new one is covered by itself), and a write."""
    world.create("API-1")
    task = world.store.find_task("API-1")
    [job] = world.store.task_jobs(task.id)
    with world.store.transaction() as tx:  # a run, so /runs has a moment to show
        tx.insert_agent_run(
            job_id=job.id,
            task_id=task.id,
            agent="sh",
            model="",
            effort="",
            attempt=1,
            log_path="/tmp/log",
        )
    with world.client() as client:
        schema = client.get("/openapi.json").json()
        reads = sorted(
            path.replace("{ref}", "API-1")
            for path, operations in schema["paths"].items()
            # Not JSON: Prometheus text, the schema, a log (text) and the SSE stream
            # (test_streams.py checks its moments).
            if "get" in operations
            and path not in ("/metrics", "/openapi.json", "/events", "/tasks/{ref}/logs")
        )
        answers = {path: client.get(path).json() for path in reads}
        answers["cancel"] = client.post("/tasks/API-1/cancel", json={"reason": "done"}).json()

    assert set(LISTS) | {"/tasks/API-1", "/status"} <= set(answers)
    found = [
        (where, path, value) for where, answer in answers.items() for path, value in moments(answer)
    ]
    assert {where for where, _, _ in found} >= {*LISTS, "/tasks/API-1", "/status", "cancel"}
    for where, path, value in found:
        assert value is None or (isinstance(value, str) and ISO.fullmatch(value)), (
            where,
            path,
            value,
        )
    status = answers["/status"]
    assert ISO.fullmatch(status["started_at"])
    assert isinstance(status["uptime_s"], float | int)  # durations stay numbers


def test_the_task_list_carries_cost_current_job_and_stage_entry(world: World) -> None:
    with world.client("operator") as client:
        created = client.post(
            "/tasks", json={"repo": str(world.repo), "title": "Run", "work_item": "API-1"}
        )
        assert created.status_code == 201, created.text
        assert created.json()["current_job"]["stage"] == "analysis"
        run_until(world, lambda: world.store.find_task("API-1").stage == "brd-approval")
        [item] = client.get("/tasks").json()["items"]
        detail = client.get("/tasks/API-1").json()

    assert item["stage"] == "brd-approval"
    assert item["cost_usd"] == 0  # the shell agent reports no cost
    job = item["current_job"]
    assert set(job) == {"id", "stage", "agent", "status", "attempt"}
    assert (job["stage"], job["agent"], job["status"], job["attempt"]) == (
        "analysis",
        "sh",
        "done",
        1,
    )
    [entered] = [
        e
        for e in detail["events"]
        if e["to_stage"] == "brd-approval" and e["from_stage"] == "analysis"
    ]
    assert item["stage_entered_at"] == entered["created_at"]
    assert item["stage_entered_at"] > item["created_at"]  # ISO strings order as times
    assert {k: detail[k] for k in ("cost_usd", "current_job", "stage_entered_at")} == {
        k: item[k] for k in ("cost_usd", "current_job", "stage_entered_at")
    }


# --- pages ---------------------------------------------------------------------------


def all_pages(client: httpx.Client, path: str, limit: int, key: str = "items") -> list[Any]:
    seen: list[Any] = []
    cursor: str | None = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        answer = client.get(path, params=params)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        page = body[key] if key != "queue" else body["queued"] + body["running"]
        assert len(page) <= limit
        seen.extend(page)
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("the pages never ended")


def test_tasks_page_through_once_each_even_when_tasks_arrive_meanwhile(world: World) -> None:
    for n in range(1, 8):
        world.create(f"API-{n}")
    with world.client() as client:
        first = client.get("/tasks", params={"limit": 3}).json()
        world.create("API-8")  # newer than the cursor: not on a later page
        rest = all_pages_from(client, "/tasks", 3, first["next_cursor"])
        everything = all_pages(client, "/tasks", 1000)

    seen = [t["work_item"] for t in first["items"] + rest]
    assert seen == [f"API-{n}" for n in range(7, 0, -1)]
    assert [t["work_item"] for t in everything] == [f"API-{n}" for n in range(8, 0, -1)]


def all_pages_from(client: httpx.Client, path: str, limit: int, cursor: str) -> list[Any]:
    seen: list[Any] = []
    while cursor is not None:
        body = client.get(path, params={"limit": limit, "cursor": cursor}).json()
        seen.extend(body["items"])
        cursor = body["next_cursor"]
    return seen


def test_the_queue_pages_by_job_and_counts_the_whole_queue(world: World) -> None:
    for n in range(1, 6):
        world.create(f"API-{n}")
    with world.client() as client:
        one = client.get("/queue", params={"limit": 2}).json()
        jobs = all_pages(client, "/queue", 2, key="queue")

    assert len(one["queued"]) == 2
    assert one["totals"]["queued"] == 5
    assert [job["work_item"] for job in jobs] == [f"API-{n}" for n in range(1, 6)]
    assert len({job["id"] for job in jobs}) == 5


def test_a_task_s_events_runs_and_jobs_page(world: World) -> None:
    world.create("API-1")
    with world.client() as client:
        events = all_pages(client, "/tasks/API-1/events", 1)
        jobs = all_pages(client, "/tasks/API-1/jobs", 1)
        runs = all_pages(client, "/tasks/API-1/runs", 1)
        detail = client.get("/tasks/API-1").json()

    assert [e["id"] for e in events] == [e["id"] for e in detail["events"]]
    assert len(events) >= 2
    assert [j["id"] for j in jobs] == [j["id"] for j in detail["jobs"]]
    assert runs == []


def test_tokens_list_for_admins_only_and_never_shows_a_hash(world: World) -> None:
    with world.client("admin") as admin:
        tokens = all_pages(admin, "/tokens", 2)
    assert [t["name"] for t in tokens] == ["viewer-1", "operator-1", "admin-1"]
    assert all("token_hash" not in t and ISO.fullmatch(t["created_at"]) for t in tokens)
    for role in ("viewer", "operator", None):
        with world.client(role) as client:
            refused = client.get("/tokens")
        assert refused.status_code == (401 if role is None else 403)
        assert_one_line_4xx(refused)


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


BAD_LIMITS: Final = (
    "0",
    "-1",
    "-99999",
    str(MAX_LIMIT + 1),
    "10" * 30,
    "abc",
    "1.5",
    "",
    "1e3",
    "NaN",
)
BAD_CURSORS: Final = (
    "!!!",
    "not-a-cursor",
    "a" * 101,
    cursor_of("tasks"),
    cursor_of("tasks:abc"),
    cursor_of("tasks:-1"),
    cursor_of("tasks:01"),
    cursor_of("tasks:" + "9" * 30),
    cursor_of("nosuchlist:1"),
    cursor_of("tasks:1\n"),
    "dGFza3M6MQ==",  # padding is not ours
    "%00",
    "\u00e9",
)


@pytest.mark.parametrize("path", LISTS)
def test_hostile_limits_and_cursors_are_one_line_4xx(world: World, path: str) -> None:
    world.create("API-1")
    with world.client() as client:
        for limit in BAD_LIMITS:
            assert_one_line_4xx(client.get(path, params={"limit": limit}))
        for cursor in BAD_CURSORS:
            error = assert_one_line_4xx(client.get(path, params={"cursor": cursor}))
            assert "cursor" in error
        # A well-formed cursor of another list is refused; one of this list far beyond
        # the end is an empty last page, not an error.
        other = "runs" if path != "/tasks/API-1/runs" else "events"
        assert "another list" in assert_one_line_4xx(
            client.get(path, params={"cursor": cursor_of(f"{other}:1")})
        )
        name = {"/tasks": "tasks", "/queue": "queue", "/tokens": "tokens"}.get(
            path, path.rsplit("/", 1)[-1]
        )
        far = client.get(path, params={"cursor": cursor_of(f"{name}:{2**62}"), "limit": MAX_LIMIT})
        assert far.status_code == 200, far.text
        assert far.json()["next_cursor"] is None


# --- /docs ---------------------------------------------------------------------------


def test_docs_name_no_external_url_and_their_assets_are_served(world: World) -> None:
    with world.client(None) as anonymous:  # /docs and its assets need no token
        page = anonymous.get("/docs")
        assert page.status_code == 200
        html = page.text
        assert "SwaggerUIBundle" in html
        assert not re.search(r"(https?:)?//[A-Za-z0-9]", html), "the page names another host"
        linked = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert len(linked) >= 3
        for url in linked:
            assert url.startswith("/docs/assets/"), url
            asset = anonymous.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 100
        assert (
            anonymous.get("/docs/assets/swagger-ui-bundle.js")
            .headers["content-type"]
            .startswith("text/javascript")
        )
        for name in ("index.html", "..%2F..%2F__init__.py", "swagger-ui.js.map", "x" * 300):
            missing = anonymous.get(f"/docs/assets/{name}")
            assert missing.status_code == 404
            assert_one_line_4xx(missing)
        assert anonymous.get("/docs/oauth2-redirect").status_code == 200
    with world.client("viewer") as viewer:
        assert viewer.get("/redoc").status_code == 404  # no packaged ReDoc: not served


# --- /metrics ------------------------------------------------------------------------


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {}
    names = set()
    for family in text_string_to_metric_families(answer.text):
        names.add(family.name)
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    # prometheus-client's parser names a counter family without _total
    assert {
        n if not n.endswith("_total") else n.removesuffix("_total") for n in METRIC_NAMES
    } <= names
    return values


def test_metrics_parse_and_move_when_a_task_runs(world: World) -> None:
    with world.client("viewer") as client:
        before = scrape(client)
        world.create("API-1")
        run_until(world, lambda: world.store.find_task("API-1").stage == "brd-approval")
        after = scrape(client)

    waiting = ("orch_tasks", (("stage", "brd-approval"), ("state", "waiting_for_human")))
    assert before[waiting] == 0
    assert after[waiting] == 1
    run_count = ("orch_job_run_seconds_count", (("agent", "sh"), ("stage", "analysis")))
    assert run_count not in before
    assert after[run_count] == 1
    assert (
        after[
            (
                "orch_job_run_seconds_bucket",
                (("agent", "sh"), ("le", "+Inf"), ("stage", "analysis")),
            )
        ]
        == 1
    )
    assert after[("orch_agent_runs_total", (("agent", "sh"), ("model", "")))] == 1
    assert after[("orch_stage_duration_seconds_count", (("stage", "analysis"),))] == 1
    assert after[("orch_dispatch_latency_seconds_count", (("stage", "analysis"),))] == 1
    assert after[("orch_events_total", (("kind", "task.created"),))] == 1
    verdicts = [v for (name, _), v in after.items() if name == "orch_gate_verdicts_total"]
    assert sum(verdicts) >= 1
    assert after[("orch_transition_leases_held", ())] == 0
    # The server's store counts what it sends: at least the first scrape's own queries.
    assert after[("orch_db_statements_total", ())] > before[("orch_db_statements_total", ())]


def test_metrics_need_a_token_unless_reads_are_public(tmp_path: Path, world: World) -> None:
    with world.client(None) as anonymous:
        refused = anonymous.get("/metrics")
        assert refused.status_code == 401
        assert_one_line_4xx(refused)
        assert "orch token create" in refused.json()["error"]
        forged = anonymous.get("/metrics", headers={"Authorization": "Bearer orch_forged"})
        assert forged.status_code == 401
        foreign = anonymous.get("/metrics", headers={"Host": "evil.example"})
        assert foreign.status_code == 400
        for method in ("POST", "PUT", "DELETE"):
            written = anonymous.request(method, "/metrics", json={})
            assert written.status_code in (401, 405)
            assert_one_line_4xx(written)
    public = World(tmp_path / "public", extra="public_read = true\n")
    try:
        with public.client(None) as anonymous:
            assert anonymous.get("/metrics").status_code == 200
            assert anonymous.get("/metrics", params={"limit": "x" * 1000}).status_code == 200
            assert anonymous.get("/tokens").status_code == 401  # admin-only, public or not
    finally:
        public.close()


def test_the_grafana_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text()
    )
    expressions = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(expressions) >= 8
    used = {name for expr in expressions for name in re.findall(r"\borch_[a-z_]+", expr)}
    histograms = set(HISTOGRAM_NAMES)
    exported = set(METRIC_NAMES) | {
        f"{name}{suffix}" for name in histograms for suffix in ("_bucket", "_sum", "_count")
    }
    assert used, "the dashboard queries no orch metric"
    assert used <= exported, sorted(used - exported)
    # Every family the collector exports is on the dashboard.
    assert {n for n in METRIC_NAMES if n != "orch_build_info"} <= {
        re.sub(r"_(bucket|sum|count)$", "", n)
        if re.sub(r"_(bucket|sum|count)$", "", n) in histograms
        else n
        for n in used
    }
