"""The dashboard's Costs and Health pages over HTTP: what they draw, who may see them,
hostile form values, and that they name no asset outside the server.

The real app over a real SQLite store; runs, running jobs, leases and instances are
written through the store's own operations (``Tx``, ``Owner.register``,
``LeaseManager.acquire``). A viewer logs in with its token through the login form, as
a person does. The figures themselves are tested on both databases in
``test_cost_report.py``; the browser tests (``tests/e2e/test_dashboard_browser.py``)
load both pages in Chromium with the network blocked.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import pytest
from support import api_client
from test_cost_report import DEC_1, add_run, add_task, queue_job

from orchestrator.api.server import create_app
from orchestrator.auth import issue_token
from orchestrator.effects.leases import LeaseManager, Owner
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Store
from orchestrator.store.leases import LeaseStore

DAY: Final = 86_400.0
ORIGIN: Final = {"Origin": "http://localhost"}
PERIOD: Final = {"from": "2026-12-01", "to": "2026-12-02"}
PAGES: Final = ("/ui/costs", "/ui/health")


class _Page(HTMLParser):
    """Every URL a page names (href, src, action, and CSS url()), and its meters."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.meters: list[dict[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("href", "src", "action", "srcset", "poster", "data"):
            if found.get(name):
                self.urls.append(str(found[name]))
        if tag == "meter":
            self.meters.append(found)
        if found.get("style"):
            self.urls.append(f"inline-style:{found['style']}")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


class World:
    def __init__(self, root: Path) -> None:
        (root / "orch.toml").write_text('data_dir = ".orch"\ntask_budget_usd = 4.0\n')
        self.settings: Settings = load_settings(cwd=root)
        self.store = Store.open(self.settings.effective_database_url)
        self.viewer = issue_token(self.store, "viewer-1", "viewer", actor="t")
        self.shop = add_task(self.store, "/srv/shop")
        add_run(self.store, self.shop, at=DEC_1 + 3600, cost=1.5, tokens=1000)
        add_run(self.store, self.shop, at=DEC_1 + DAY + 60, cost=1.5, stage="analysis")
        queue_job(self.store, self.shop)  # running: its budget is shown
        self.web = add_task(self.store, "/srv/web")
        add_run(self.store, self.web, at=DEC_1 + 7200, cost=0.25, agent="codex", model="gpt-5")

    @contextmanager
    def client(self, *, logged_in: bool = True) -> Iterator[httpx.Client]:
        app = create_app(
            store=self.store, settings=self.settings, service=TaskService(self.store, self.settings)
        )
        with api_client(app) as client:
            if logged_in:
                login(client, self.viewer)
            yield client


def login(client: httpx.Client, token: str) -> None:
    form = client.get("/ui/login")
    csrf = re.search(r'name="csrf_token" value="([^"]*)"', form.text)
    assert csrf is not None
    answer = client.post(
        "/ui/login",
        data={"csrf_token": csrf.group(1), "token": token, "next": "/ui/costs"},
        headers=ORIGIN,
    )
    assert answer.status_code == 303, answer.text


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    yield made
    made.store.close()


def test_the_costs_page_draws_the_report_of_the_chosen_days(world: World) -> None:
    with world.client() as client:
        answer = client.get("/ui/costs", params=PERIOD)
    assert answer.status_code == 200, answer.text
    page = parse(answer.text)
    text = " ".join(" ".join(page.text).split())
    assert "2026-12-01 to 2026-12-02" in text
    assert "$3.25" in text  # the total of both days
    assert 'value="2026-12-01"' in answer.text  # the form keeps the period
    assert 'value="2026-12-02"' in answer.text
    # Per day: both days, each with its bar; the larger day's bar is full.
    days = page.meters[:2]  # the per-day table comes first
    assert [(m["aria-label"], m["value"], m["max"]) for m in days] == [
        ("$1.75", "1.75", "1.75"),
        ("$1.50", "1.5", "1.75"),
    ]
    for name in ("/srv/shop", "/srv/web", "codex", "gpt-5", "Development", "Analysis"):
        assert name in text
    # The top tasks link to their pages; the running task's budget is drawn.
    assert f"/ui/tasks/{world.shop}" in page.urls
    budget = next(m for m in page.meters if m.get("class") == "budget")
    assert budget["value"] == "0.75"  # $3.00 of $4.00
    assert "75%" in text


def test_the_last_day_is_included(world: World) -> None:
    with world.client() as client:
        first_only = client.get("/ui/costs", params={"from": "2026-12-01", "to": "2026-12-01"})
    text = " ".join(" ".join(parse(first_only.text).text).split())
    assert "$1.75" in text  # the runs of 2026-12-01, not the next day's
    assert "$3.25" not in text


def test_the_pages_need_a_login(world: World) -> None:
    with world.client(logged_in=False) as client:
        for path in PAGES:
            answer = client.get(path, params=PERIOD)
            assert answer.status_code == 303, (path, answer.text)
            assert answer.headers["location"].startswith("/ui/login?next=%2Fui%2F")


@pytest.mark.parametrize(
    "params",
    [
        {"from": "2026-13-01"},
        {"to": "yesterday"},
        {"from": "2026-12-03", "to": "2026-12-01"},
        {"from": "2020-01-01", "to": "2026-01-01"},
        {"from": "2026-12-01T00:00"},
        {"from": "1969-12-31"},
        {"to": "2026-12-01\x00"},
        {"from": "9" * 5000},
        {"from": "\u0662\u0660\u0662\u0666-12-01"},  # Arabic-Indic digits
    ],
    ids=",".join,
)
def test_hostile_periods_are_one_line_on_an_error_page(
    world: World, params: dict[str, str]
) -> None:
    with world.client() as client:
        answer = client.get("/ui/costs", params=params)
    assert answer.status_code == 422, answer.text
    message = re.search(r'<p class="error" role="alert">([^<]*)</p>', answer.text)
    assert message is not None, answer.text
    assert "\n" not in message.group(1)
    assert len(message.group(1)) <= 500
    assert "Traceback" not in answer.text


def test_the_health_page_says_what_needs_a_look(world: World) -> None:
    task = world.store.get_task(world.web)
    gone = Owner(instance="old", host="another-host", pid=1, boot_id="gone", pid_start=None)
    gone.register(world.store)
    LeaseStore(world.store).beat("gone", time.time() - 3600)
    assert LeaseManager(world.store, world.settings, gone).acquire(task, "t", "test") is not None

    with world.client() as client:
        answer = client.get("/ui/health")

    assert answer.status_code == 200, answer.text
    text = " ".join(" ".join(parse(answer.text).text).split())
    assert "Needs a look" in text
    assert "1 transition lease(s) held by a dead owner" in text
    assert "1 instance(s) not stopped but not alive" in text
    assert "no: stale" in text
    assert task.work_item in text
    assert "Running jobs 1" in text
    assert "No supervised loops" in text  # the app runs without orch serve here


def test_a_healthy_server_says_so(world: World) -> None:
    with world.client() as client:
        text = " ".join(" ".join(parse(client.get("/ui/health").text).text).split())
    assert "Every loop running" in text
    assert "Needs a look" not in text


@pytest.mark.parametrize("path", PAGES)
def test_the_pages_name_no_other_host_and_no_inline_style(world: World, path: str) -> None:
    with world.client() as client:
        answer = client.get(path, params=PERIOD if path == "/ui/costs" else None)
        page = parse(answer.text)
        for url in page.urls:
            assert not url.startswith("inline-style:"), url  # the CSP would drop it
            parts = urlsplit(url)
            assert not parts.scheme, url
            assert not parts.netloc, url
        css = client.get("/ui/static/dashboard.css").text
    assert "url(" not in css
    assert "@import" not in css
    assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_a_viewer_sees_only_the_period_form(world: World) -> None:
    with world.client() as client:
        html = client.get("/ui/costs", params=PERIOD).text + client.get("/ui/health").text
    forms: list[Any] = re.findall(r"<form[^>]*>", html)
    assert all('method="get"' in form or 'action="/ui/logout"' in form for form in forms), forms


# --- the board's pages (bench/api_lists.py: 500 cards at once were 23x /health) ----------
def card_ids(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'id="task-(\d+)"', html)]


def test_the_board_draws_a_page_of_tasks_and_links_the_older_ones(world: World) -> None:
    made = [add_task(world.store, "/srv/many") for _ in range(150)]
    newest_first = sorted([*made, world.shop, world.web], reverse=True)
    with world.client() as client:
        first = client.get("/ui/")
        assert first.status_code == 200, first.text
        assert sorted(card_ids(first.text), reverse=True) == newest_first[:100]
        older = re.search(r'<a href="([^"]+)" rel="next">Older tasks</a>', first.text)
        assert older is not None
        assert "data-older" not in first.text
        second = client.get(older.group(1).replace("&amp;", "&"))
    assert second.status_code == 200, second.text
    assert sorted(card_ids(second.text), reverse=True) == newest_first[100:]
    assert 'rel="next"' not in second.text  # the last page
    assert "Newest tasks" in second.text
    assert 'data-older="1"' in second.text  # its script takes no new cards


@pytest.mark.parametrize("before", ["abc", "-1", "1.5", "9" * 30, "\u0661\u0662"])
def test_a_hostile_board_page_is_one_line(world: World, before: str) -> None:
    with world.client() as client:
        answer = client.get("/ui/", params={"before": before})
    assert answer.status_code == 422, answer.text
    assert "before:" in answer.text
