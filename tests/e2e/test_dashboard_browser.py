"""The web dashboard in a real headless Chromium (Debian's /usr/bin/chromium driven by
Playwright) against a real `orch serve` with its engine running scripted agents.

The analysis agent prints a line, then waits for a file the test creates (named after
its work item), so the test decides when a task crosses a stage: no sleeps decide
anything; every wait is Playwright waiting for a condition, with a generous timeout
that is never the pass criterion.

Seen failing with each piece taken out in turn: the board's EventSource handler (the
card stayed in Analysis), the log stream (no line appeared), the viewer check in the
task template (the buttons were there), the Origin check and the CSRF token together
(the cross-site post was accepted: 303; either one alone refuses it), a CDN stylesheet
added to base.html (the route caught the request), and the stylesheet's narrow-screen
rules (the board was wider than the phone).

``ORCH_SCREENSHOTS=1`` writes docs/img/dashboard-board.png and dashboard-task.png.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import pytest

from orchestrator.cli.demo_project import create_demo_repository

pytestmark = pytest.mark.e2e

CHROMIUM: Final = Path("/usr/bin/chromium")
ORCH: Final = [sys.executable, "-m", "orchestrator"]
DEADLINE_S: Final = 120.0
WAIT_MS: Final = 60_000
LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
IMG_DIR: Final = Path(__file__).resolve().parents[2] / "docs" / "img"
VIEWPORT: Final = {"width": 1360, "height": 860}
SCREENSHOT_VIEWPORT: Final = {"width": 1440, "height": 900}
AGENT: Final = """\
import os, pathlib, sys, time
print("step one: reading the code", flush=True)
go = pathlib.Path({go_dir!r}) / ("go-" + os.environ["ORCH_WORK_ITEM"])
while not go.exists():
    time.sleep(0.05)
print("step two: writing the BRD", flush=True)
os.execv(sys.executable, [sys.executable, "-m", "orchestrator.agents.scripted", *sys.argv[1:]])
"""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no")


def _need_browser() -> Any:
    """Playwright's sync API, or a skip (a failure under CI) saying what is missing."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (make test installs Debian's chromium)"
    try:
        from playwright import sync_api
    except ImportError:
        missing = missing or "playwright is not installed (pip install -e '.[dev]')"
        sync_api = None
    if missing is not None:
        if _truthy(os.environ.get("CI")):
            pytest.fail(f"the browser tests cannot run under CI: {missing}")
        pytest.skip(missing)
    return sync_api


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _environment() -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return {**base, "PYTHONDONTWRITEBYTECODE": "1"}


@dataclass
class Served:
    base: str
    work: Path
    repo: Path
    go_dir: Path
    tokens: dict[str, str]
    playwright: Any
    browser: Any
    expect: Any
    created: list[str]
    server: subprocess.Popen[bytes]
    log_path: Path

    def restart(self) -> None:
        """Stop `orch serve` and start it again on the same port (sessions are lost)."""
        _stop(self.server)
        port = int(self.base.rsplit(":", 1)[1])
        self.server, base = _start_serve(self.work, self.log_path, port)
        assert base == self.base

    def api(self, role: str = "operator") -> httpx.Client:
        return httpx.Client(
            base_url=self.base,
            headers={"Authorization": f"Bearer {self.tokens[role]}"},
            timeout=DEADLINE_S,
        )

    def create(self, work_item: str, title: str) -> dict[str, Any]:
        with self.api() as api:
            response = api.post(
                "/tasks", json={"repo": str(self.repo), "title": title, "work_item": work_item}
            )
        assert response.status_code == 201, response.text
        self.created.append(work_item)
        task: dict[str, Any] = response.json()
        return task

    def go(self, work_item: str) -> None:
        (self.go_dir / f"go-{work_item}").touch()

    def task(self, work_item: str) -> dict[str, Any]:
        with self.api("viewer") as api:
            response = api.get(f"/tasks/{work_item}")
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        return task

    def wait_for_stage(self, work_item: str, stage: str) -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            task = self.task(work_item)
            if task["stage"] == stage:
                return task
            assert not task["failed"], task["failed_reason"]
            assert time.monotonic() < deadline, f"{work_item} stayed in {task['stage']}"
            time.sleep(0.1)  # polling the API for a condition, not waiting a time

    def context(self, role: str | None = None) -> Any:
        """A fresh browser context, logged in with ``role``'s token if given."""
        context = self.browser.new_context(viewport=VIEWPORT, base_url=self.base)
        context.set_default_timeout(WAIT_MS)
        if role is not None:
            page = context.new_page()
            page.goto("/ui/login")
            page.get_by_label("API token").fill(self.tokens[role])
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url("**/ui/")
            page.close()
        return context


def _start_serve(
    work: Path, log_path: Path, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`orch serve` on a free port (or ``port``); ready once it says it listens there.
    Another process may take a free port between the probe and the bind (tests run side
    by side): then this one exits, and another port is tried."""
    for _attempt in range(5 if port is None else 1):
        chosen = port or _free_port()
        with log_path.open("ab") as log:
            server = subprocess.Popen(
                [*ORCH, "serve", "--host", "127.0.0.1", "--port", str(chosen)],
                cwd=work,
                env=_environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{chosen}"
        deadline = time.monotonic() + DEADLINE_S
        while log_path.read_text(errors="replace").count(f"listening on {base}") < (
            1 if port is None else 2
        ):
            if server.poll() is not None:
                break
            assert time.monotonic() < deadline, "orch serve did not start"
            time.sleep(0.05)
        else:
            return server, base
    pytest.fail(f"orch serve did not start:\n{log_path.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    sync_api = _need_browser()
    root = tmp_path_factory.mktemp("dashboard")
    work = root / "orch-home"
    work.mkdir()
    go_dir = root / "go"
    go_dir.mkdir()
    agent = root / "slow_agent.py"
    agent.write_text(AGENT.format(go_dir=str(go_dir)))
    repo = create_demo_repository(root / "lib")
    (work / "orch.toml").write_text(
        'data_dir = ".orch"\nretry_backoff_s = 0\n'
        "max_running_jobs = 16\nmax_running_jobs_per_repo = 16\n"
        f'[agents.slow]\ncommand = ["{{python}}", {json.dumps(str(agent))}, "--stage", '
        '"{stage}"]\n'
        '[stages.analysis]\nagent = "slow"\n'
        '[stages.architecture]\nagent = "scripted"\n[stages.development]\nagent = "scripted"\n'
        f"[repos.lib]\npath = {json.dumps(str(repo))}\n"
    )
    tokens = {}
    for name, role in (("op", "operator"), ("view", "viewer")):
        created = subprocess.run(
            [*ORCH, "token", "create", name, "--role", role, "--json"],
            cwd=work,
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            check=True,
        )
        tokens[role] = json.loads(created.stdout)["token"]
    log_path = root / "serve.log"
    server, base = _start_serve(work, log_path)
    created: list[str] = []
    served: Served | None = None
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            try:
                sync_api.expect.set_options(timeout=WAIT_MS)
                served = Served(
                    base,
                    work,
                    repo,
                    go_dir,
                    tokens,
                    playwright,
                    browser,
                    sync_api.expect,
                    created,
                    server,
                    log_path,
                )
                yield served
            finally:
                browser.close()
    finally:
        for work_item in created:  # no agent is left waiting when the test is over
            (go_dir / f"go-{work_item}").touch()
        _stop(served.server if served is not None else server)


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=DEADLINE_S)


def _screenshot(page: Any, name: str) -> None:
    """With ORCH_SCREENSHOTS=1, the page as the README shows it (a fixed viewport)."""
    if not _truthy(os.environ.get("ORCH_SCREENSHOTS")):
        return
    IMG_DIR.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size(SCREENSHOT_VIEWPORT)
    page.screenshot(path=str(IMG_DIR / name))
    page.set_viewport_size(VIEWPORT)


def _column(stage: str, task_id: int) -> str:
    return f'.column[data-stage="{stage}"] #task-{task_id}'


def test_the_board_shows_an_api_task_and_moves_its_card_live(served: Served) -> None:
    context = served.context("operator")
    page = context.new_page()
    page.goto("/ui/")
    page.wait_for_selector('#board[data-live="connected"]')
    served.expect(page.locator("#live-status")).to_contain_text("Live")
    page.evaluate("window.__not_reloaded = true")

    task = served.create("BOARD-1", "Add a <script>alert('x')</script> slug helper")
    card = page.wait_for_selector(_column("analysis", task["id"]))
    assert card.inner_text().count("<script>") == 1  # shown as text, not run
    assert "BOARD-1" in card.inner_text()
    assert page.locator(f"#task-{task['id']} .marker-waiting").count() == 0

    served.go("BOARD-1")
    moved = page.wait_for_selector(_column("brd-approval", task["id"]))
    assert "Waiting for a person" in moved.inner_text()
    assert page.locator(f".column[data-stage='analysis'] #task-{task['id']}").count() == 0
    assert page.evaluate("window.__not_reloaded") is True, "the page was reloaded"
    context.close()


def test_the_task_page_streams_the_running_jobs_log(served: Served) -> None:
    task = served.create("LOG-1", "Stream my log")
    context = served.context("viewer")
    page = context.new_page()
    page.goto(f"/ui/tasks/{task['id']}")
    # The job may not have started when the page was drawn: the page picks it up live.
    log = page.locator("#log-output")
    served.expect(log).to_contain_text("step one: reading the code")
    assert "step two" not in page.locator("#log-output").inner_text()
    page.evaluate("window.__not_reloaded = true")
    served.go("LOG-1")
    served.expect(log).to_contain_text("step two: writing the BRD")
    # The page follows the task across the stage, too, without a reload.
    page.wait_for_selector('#task-stage[data-stage="brd-approval"]')
    assert page.evaluate("window.__not_reloaded") is True
    context.close()


def _at_the_gate(served: Served, work_item: str, title: str) -> dict[str, Any]:
    served.create(work_item, title)
    served.go(work_item)
    return served.wait_for_stage(work_item, "brd-approval")


def test_an_operator_approves_and_rejects_from_the_page(served: Served) -> None:
    approved = _at_the_gate(served, "GATE-1", "Approve me")
    rejected = _at_the_gate(served, "GATE-2", "Reject me")
    context = served.context("operator")
    page = context.new_page()

    page.goto(f"/ui/tasks/{approved['id']}")
    _screenshot(page, "dashboard-task.png")
    page.get_by_role("button", name="Approve").click()
    page.wait_for_selector("#actions .notice")
    assert served.task("GATE-1")["stage"] != "brd-approval"
    events = served.task("GATE-1")["events"]
    approval = next(e for e in events if e["kind"] == "task.approved")
    assert approval["actor"] == "token:op"

    page.goto(f"/ui/tasks/{rejected['id']}")
    page.get_by_label("Feedback for the analyst").fill("Name the <b>edge cases</b>.")
    page.get_by_role("button", name="Reject with feedback").click()
    page.wait_for_selector("#actions .notice")
    rejection = next(e for e in served.task("GATE-2")["events"] if e["kind"] == "task.rejected")
    assert rejection["actor"] == "token:op"
    assert rejection["data"]["feedback"] == "Name the <b>edge cases</b>."
    context.close()


def test_a_viewer_sees_no_actions_and_a_forged_post_is_refused(served: Served) -> None:
    task = _at_the_gate(served, "VIEW-1", "Look, do not touch")
    context = served.context("viewer")
    page = context.new_page()
    page.goto(f"/ui/tasks/{task['id']}")
    page.wait_for_selector("#actions")
    assert page.locator("#actions form").count() == 0
    assert page.get_by_role("button", name="Approve").count() == 0
    assert page.get_by_role("button", name="Reject with feedback").count() == 0
    assert "can read only" in page.locator("#actions").inner_text()
    # A viewer forging the post with its own session and CSRF token: still 403.
    csrf = page.locator("form[action='/ui/logout'] input[name=csrf_token]").get_attribute("value")
    forged = page.request.post(
        f"/ui/tasks/{task['id']}/approve",
        form={"csrf_token": csrf or ""},
        headers={"Origin": served.base},
        max_redirects=0,
    )
    assert forged.status == 403, forged.text()
    assert served.task("VIEW-1")["stage"] == "brd-approval"
    context.close()


class _EvilSite(BaseHTTPRequestHandler):
    """Another origin on the same host: its page posts a form to the dashboard."""

    target = ""

    def do_GET(self) -> None:
        body = (
            "<!doctype html><html><body>"
            f'<form id="f" method="post" action="{self.target}">'
            '<input name="csrf_token" value="guessed"></form>'
            "<script>document.getElementById('f').submit()</script></body></html>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        return


def test_a_cross_site_form_post_is_refused(served: Served) -> None:
    task = _at_the_gate(served, "EVIL-1", "Do not approve me from elsewhere")
    target = f"{served.base}/ui/tasks/{task['id']}/approve"
    handler = type("Evil", (_EvilSite,), {"target": target})
    evil = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=evil.serve_forever, daemon=True)
    thread.start()
    context = served.context("operator")
    page = context.new_page()
    try:
        with page.expect_response(lambda response: response.url == target) as answer:
            page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        assert answer.value.status == 403
    finally:
        evil.shutdown()
        thread.join()
        evil.server_close()
        context.close()
    assert served.task("EVIL-1")["stage"] == "brd-approval"


def test_the_pages_load_with_the_network_blocked_except_loopback(served: Served) -> None:
    task = _at_the_gate(served, "NET-1", "Offline please")
    context = served.context("operator")
    attempted: list[str] = []

    def only_loopback(route: Any) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if host in LOOPBACK:
            route.continue_()
        else:
            attempted.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    failed: list[str] = []
    # A request the next navigation cancels (the favicon, an open stream) is aborted,
    # not failed; anything else that fails to load is a missing asset.
    page.on(
        "requestfailed",
        lambda request: (
            failed.append(request.url) if "ERR_ABORTED" not in (request.failure or "") else None
        ),
    )
    for path in ("/ui/", f"/ui/tasks/{task['id']}", "/ui/login"):
        response = page.goto(path)
        assert response is not None
        assert response.ok, (path, response.status)
        page.wait_for_load_state("load")
        # The packaged stylesheet applied, and the page's script ran.
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(246, 247, 249)", path
    page.goto("/ui/")
    page.wait_for_selector('#board[data-live="connected"]')
    served.expect(page.locator("#live-status")).to_contain_text("Live")
    _screenshot(page, "dashboard-board.png")
    assert attempted == [], f"requests left loopback: {attempted}"
    assert failed == []
    context.close()


def test_the_pages_fit_a_phone_width(served: Served) -> None:
    """At 390 px the page does not scroll sideways: the board's columns stack, wide
    content (the diff, the runs table) scrolls inside its own box. Seen failing without
    the stylesheet's narrow-screen rules (the board was 2,000 px wide)."""
    task = _at_the_gate(served, "PHONE-1", "A long title that has to wrap on a small screen")
    context = served.browser.new_context(
        viewport={"width": 390, "height": 844}, base_url=served.base, is_mobile=True
    )
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.goto("/ui/login")
    page.get_by_label("API token").fill(served.tokens["operator"])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/ui/")
    for path in ("/ui/", f"/ui/tasks/{task['id']}"):
        page.goto(path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (path, width)
    page.goto("/ui/")
    first = page.locator(".column").nth(0).bounding_box()
    second = page.locator(".column").nth(1).bounding_box()
    assert first is not None
    assert second is not None
    assert second["y"] >= first["y"] + first["height"]  # stacked, not side by side
    page.goto(f"/ui/tasks/{task['id']}")
    approve = page.get_by_role("button", name="Approve").bounding_box()
    assert approve is not None
    assert approve["x"] + approve["width"] <= 390
    context.close()


def _block_all_but_loopback(context: Any) -> list[str]:
    """Abort every request that leaves loopback; returns the list it records them in."""
    attempted: list[str] = []

    def only_loopback(route: Any) -> None:
        if (urlsplit(route.request.url).hostname or "") in LOOPBACK:
            route.continue_()
        else:
            attempted.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    return attempted


def test_the_costs_page_loads_offline_and_shows_the_chosen_days(served: Served) -> None:
    context = served.context("viewer")
    attempted = _block_all_but_loopback(context)
    page = context.new_page()
    response = page.goto("/ui/costs")
    assert response is not None
    assert response.ok, response.status
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(246, 247, 249)"
    # The default period: 30 days, one bar each in the per-day table.
    served.expect(page.locator("#day-h ~ .table-wrap meter")).to_have_count(30)
    page.get_by_label("From").fill("2026-11-01")
    page.get_by_label("To (included)").fill("2026-11-07")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**/ui/costs?from=2026-11-01&to=2026-11-07")
    served.expect(page.locator("#total-h")).to_have_text("2026-11-01 to 2026-11-07")
    served.expect(page.locator("#day-h ~ .table-wrap meter")).to_have_count(7)
    assert attempted == [], f"requests left loopback: {attempted}"
    context.close()


def test_the_health_page_shows_orch_serves_loops_offline(served: Served) -> None:
    context = served.context("viewer")
    attempted = _block_all_but_loopback(context)
    page = context.new_page()
    response = page.goto("/ui/health")
    assert response is not None
    assert response.ok, response.status
    loops = page.locator("#proc-h ~ table")
    for name in ("engine", "inbox", "heartbeat"):
        served.expect(loops.get_by_role("row", name=f"{name} running")).to_have_count(1)
    instances = page.locator("#inst-h ~ .table-wrap")
    served.expect(instances).to_contain_text("alive")
    served.expect(page.locator("main")).not_to_contain_text("Needs a look")
    assert attempted == [], f"requests left loopback: {attempted}"
    context.close()


def test_a_page_of_older_tasks_updates_its_cards_but_takes_no_new_ones(served: Served) -> None:
    shown = served.create("PAGE-1", "On the older page")
    boundary = served.create("PAGE-2", "The newest when the page was drawn")
    context = served.context("viewer")
    page = context.new_page()
    page.goto(f"/ui/?before={boundary['id']}")
    page.wait_for_selector('#board[data-live="connected"]')
    page.wait_for_selector(_column("analysis", shown["id"]))
    assert page.locator(f"#task-{boundary['id']}").count() == 0

    fresh = served.create("PAGE-3", "Belongs on the newest page")
    served.go("PAGE-1")  # after PAGE-3's creation: once this card moved, that event was seen
    page.wait_for_selector(_column("brd-approval", shown["id"]))
    assert page.locator(f"#task-{fresh['id']}").count() == 0
    context.close()


def test_an_open_board_says_when_a_restart_ended_its_session(served: Served) -> None:
    """Sessions live in `orch serve`'s memory: after a restart the browser's stream is
    refused (401) and EventSource gives up. The board says so and links to the login
    form, which brings the person back to a live board. Seen failing before: the status
    line said "reconnecting…" for ever and nothing moved again.

    Last in this module: it restarts the server the other tests share."""
    context = served.context("viewer")
    page = context.new_page()
    page.goto("/ui/")
    status = page.locator("#live-status")
    served.expect(status).to_contain_text("Live")
    served.restart()
    served.expect(status).to_contain_text("your session ended")
    status.get_by_role("link", name="Log in again").click()
    page.wait_for_url("**/ui/login?next=*")
    page.get_by_label("API token").fill(served.tokens["viewer"])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/ui/")
    served.expect(page.locator("#live-status")).to_contain_text("Live")
    context.close()
