"""The Telegram live card against a local server speaking the Bot API (the fake).

Contract tests drive :class:`TelegramClient` through the documented shapes (send, edit,
delete, callback queries, "message is not modified", 429 with ``retry_after``). Card
tests run the real path: a stage move writes the card's outbox row in its transaction,
:class:`OutboxDelivery` claims it and :class:`TelegramChannel` edits or bumps the card in
the fake chat. Webhook tests post Updates to ``POST /webhooks/telegram``.

Seen failing: with the repoint moved before the send in ``_bump`` (the bump-send-fails
test: task_cards pointed at a message that was never sent), with the delete's error
propagated (the delete-fails test: no card at all), and without the ``taken_over_at``
check (the takeover test: two cards).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.integration.support import api_client, make_repo

from orchestrator.api.server import create_app
from orchestrator.integrations import build_delivery
from orchestrator.integrations.card import load_card_view
from orchestrator.integrations.telegram import (
    TelegramApiError,
    TelegramClient,
    TelegramUnavailableError,
)
from orchestrator.lifecycle.service import TaskService
from orchestrator.lifecycle.transitions import EventKind, advance_stage
from orchestrator.outbox.delivery import OutboxDelivery, OutboxNotifier, Status
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Store, Task
from orchestrator.store.schema import outbox, task_cards, webhook_deliveries
from orchestrator.testing.fake_telegram import NOT_MODIFIED, FakeTelegram

CHAT = "-100777"
SECRET = "s3cret-Token_1"
SCRIPTED = "".join(
    f'\n[stages.{stage}]\nagent = "scripted"\n'
    for stage in ("analysis", "architecture", "development")
)


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    with FakeTelegram() as server:
        yield server


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def client_for(fake: FakeTelegram, http: httpx.Client, token: str | None = None) -> TelegramClient:
    return TelegramClient(token or fake.token, http=http, base_url=fake.url)


# --- contract: the Bot API's shapes ------------------------------------------------------------
def test_send_edit_delete(fake: FakeTelegram, http: httpx.Client) -> None:
    bot = client_for(fake, http)
    markup = {"inline_keyboard": [[{"text": "Approve", "callback_data": "approve:1"}]]}
    first = bot.send_message(CHAT, "card v1", reply_markup=markup)
    second = bot.send_message(CHAT, "alert", disable_notification=True)
    assert (first, second) == (1, 2)
    assert bot.edit_message_text(CHAT, first, "card v2", reply_markup=markup) is True
    [card, alert] = fake.visible(CHAT)
    assert (card.text, card.reply_markup, card.edits) == ("card v2", markup, 1)
    assert alert.disable_notification
    assert not card.disable_notification
    assert bot.delete_message(CHAT, second) is True
    assert [m.message_id for m in fake.visible(CHAT)] == [first]
    with pytest.raises(TelegramApiError) as gone:
        bot.delete_message(CHAT, second)
    assert gone.value.message_missing
    assert gone.value.error_code == 400
    with pytest.raises(TelegramApiError) as missing:
        bot.edit_message_text(CHAT, 99, "x")
    assert missing.value.message_missing


def test_raw_shapes_of_success_and_errors(fake: FakeTelegram, http: httpx.Client) -> None:
    base = f"{fake.url}/bot{fake.token}"
    sent = http.post(f"{base}/sendMessage", json={"chat_id": CHAT, "text": "hi"}).json()
    assert sent["ok"] is True
    assert sent["result"]["message_id"] == 1
    assert sent["result"]["chat"]["id"] == int(CHAT)
    assert sent["result"]["text"] == "hi"
    same = http.post(
        f"{base}/editMessageText", json={"chat_id": CHAT, "message_id": 1, "text": "hi"}
    )
    assert same.status_code == 400
    assert same.json() == {"ok": False, "error_code": 400, "description": NOT_MODIFIED}
    fake.fail_next("sendMessage", retry_after=5)
    limited = http.post(f"{base}/sendMessage", json={"chat_id": CHAT, "text": "x"})
    assert limited.status_code == 429
    assert limited.json() == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 5",
        "parameters": {"retry_after": 5},
    }
    # Form-encoded bodies work too, as with the real API.
    form = http.post(f"{base}/sendMessage", data={"chat_id": CHAT, "text": "form"}).json()
    assert form["result"]["text"] == "form"
    unknown = http.post(f"{base}/sendDice", json={})
    assert unknown.json() == {"ok": False, "error_code": 404, "description": "Not Found"}


def test_identical_edit_is_not_modified_not_an_error(
    fake: FakeTelegram, http: httpx.Client
) -> None:
    bot = client_for(fake, http)
    message_id = bot.send_message(CHAT, "same")
    assert bot.edit_message_text(CHAT, message_id, "same") is False
    with pytest.raises(TelegramApiError) as raw:
        bot.call("editMessageText", {"chat_id": CHAT, "message_id": message_id, "text": "same"})
    assert raw.value.not_modified


def test_429_carries_retry_after(fake: FakeTelegram, http: httpx.Client) -> None:
    bot = client_for(fake, http)
    fake.fail_next("editMessageText", retry_after=17)
    message_id = bot.send_message(CHAT, "a")  # not the failing method
    with pytest.raises(TelegramApiError) as limited:
        bot.edit_message_text(CHAT, message_id, "b")
    assert (limited.value.error_code, limited.value.retry_after_s) == (429, 17.0)
    assert bot.edit_message_text(CHAT, message_id, "b") is True


def test_callback_query_answer(fake: FakeTelegram, http: httpx.Client) -> None:
    bot = client_for(fake, http)
    assert bot.answer_callback_query("cq1", "approved") is True
    [call] = fake.calls_of("answerCallbackQuery")
    assert call.params == {"callback_query_id": "cq1", "text": "approved"}
    with pytest.raises(TelegramApiError):
        bot.answer_callback_query("")


def test_wrong_token_and_an_outage_never_leak_the_token(
    fake: FakeTelegram, http: httpx.Client
) -> None:
    wrong = client_for(fake, http, token="1:wrong")  # noqa: S106 - wrong on purpose
    with pytest.raises(TelegramApiError) as unauthorized:
        wrong.send_message(CHAT, "x")
    assert unauthorized.value.error_code == 401
    fake.outage = 502
    with pytest.raises(TelegramUnavailableError) as down:
        client_for(fake, http).send_message(CHAT, "x")
    assert "502" in str(down.value)
    assert fake.token not in str(down.value)
    fake.outage = None
    closed = TelegramClient(fake.token, http=http, base_url="http://127.0.0.1:9")
    with pytest.raises(TelegramUnavailableError) as refused:
        closed.send_message(CHAT, "x")
    assert fake.token not in str(refused.value)


# --- the card, end to end through the outbox --------------------------------------------------
@dataclass
class World:
    store: Store
    settings: Settings
    fake: FakeTelegram
    delivery: OutboxDelivery
    tmp_path: Path

    def create(self, work_item: str = "SVC-1") -> Task:
        with self.store.transaction() as tx:
            task_id = tx.insert_task(
                work_item=work_item,
                repository=str(self.tmp_path / "svc"),
                title="Add rate limiting",
                description="",
                stage="created",
                branch=f"orch/{work_item}",
                base_branch="main",
                base_sha="0" * 40,
                worktree=str(self.tmp_path / "wt"),
            )
            task = tx.get_task(task_id)
            advance_stage(tx, self.settings, task, "created", "analysis", actor="t", reason="new")
        return self.store.get_task(task_id)

    def move(self, task: Task, to: str, **kwargs: Any) -> Task:
        current = self.store.get_task(task.id)
        with self.store.transaction() as tx:
            assert advance_stage(
                tx, self.settings, current, current.stage, to, actor="t", reason="move", **kwargs
            )
        return self.store.get_task(task.id)

    def run(self, task: Task, stage: str, agent: str, cost: float, attempt: int = 1) -> None:
        with self.store.transaction() as tx:
            job_id = tx.enqueue_job(
                task_id=task.id, stage=stage, kind="agent", agent=agent, attempt=attempt
            )
            run_id = tx.insert_agent_run(
                job_id=job_id,
                task_id=task.id,
                agent=agent,
                model="sonnet",
                effort="",
                attempt=attempt,
                log_path="/dev/null",
            )
            tx.record_exit(run_id, exit_code=0, cost_usd=cost)

    def card_row(self, task: Task) -> Any:
        with self.store.engine.connect() as conn:
            return conn.execute(
                sa.select(task_cards).where(task_cards.c.task_id == task.id)
            ).one_or_none()

    def rows(self, status: str | None = None) -> list[Any]:
        return self.delivery.messages(status=status)

    def sends(self) -> int:
        return len(self.fake.calls_of("sendMessage", ok=True))


def make_world(
    tmp_path: Path, db_url: str, store: Store, fake: FakeTelegram, extra: str = ""
) -> Iterator[World]:
    config = tmp_path / "orch.toml"
    config.write_text(
        f"database_url = {json.dumps(db_url)}\n"
        'data_dir = ".orch"\n'
        f"telegram_bot_token = {json.dumps(fake.token)}\n"
        f"telegram_chat_id = {json.dumps(CHAT)}\n"
        f"telegram_api_base_url = {json.dumps(fake.url)}\n"
        f"telegram_webhook_secret = {json.dumps(SECRET)}\n"
        "outbox_backoff_s = 0\n"
        'telegram_allowed_users = ["@alice", "@bob"]\n' + extra + SCRIPTED
    )
    settings = load_settings(config)
    delivery = build_delivery(settings, store, owner="boot-test")
    assert delivery is not None
    try:
        yield World(store, settings, fake, delivery, tmp_path)
    finally:
        delivery.close()


@pytest.fixture
def world(tmp_path: Path, db_url: str, store: Store, fake: FakeTelegram) -> Iterator[World]:
    yield from make_world(tmp_path, db_url, store, fake)


@pytest.fixture
def bump(tmp_path: Path, db_url: str, store: Store, fake: FakeTelegram) -> Iterator[World]:
    yield from make_world(tmp_path, db_url, store, fake, 'tracker_mode = "bump"\n')


def test_edit_mode_edits_one_message(world: World) -> None:
    task = world.create()
    assert world.delivery.deliver_due() == 1
    world.move(task, "brd-approval")
    world.delivery.deliver_due()
    world.move(task, "architecture", event_kind=EventKind.APPROVED)
    world.delivery.deliver_due()

    assert world.sends() == 1
    assert len(world.fake.calls_of("editMessageText", ok=True)) == 2
    assert not world.fake.calls_of("deleteMessage")
    [card] = world.fake.visible(CHAT)
    assert card.text.splitlines()[0] == "📋 SVC-1 · Add rate limiting"
    assert "🔄 Architecture" in card.text
    assert "✅ BRD approval" in card.text
    assert world.card_row(task).message_id == card.message_id
    assert {row.status for row in world.rows()} == {Status.SENT}


def test_changes_before_a_delivery_are_coalesced(world: World) -> None:
    task = world.create()
    world.move(task, "brd-approval")
    world.move(task, "architecture")
    OutboxNotifier(world.store, world.settings).on_task_changed(task, "after the commit")
    assert len(world.rows(Status.PENDING)) == 1  # one pending card row per task and chat
    world.delivery.deliver_due()
    assert world.sends() == 1
    assert not world.fake.calls_of("editMessageText")
    assert "🔄 Architecture" in world.fake.visible(CHAT)[0].text


def test_an_unchanged_card_costs_no_call(world: World) -> None:
    world.create()
    world.delivery.deliver_due()
    calls = len(world.fake.calls)
    task = world.store.list_tasks()[0]
    OutboxNotifier(world.store, world.settings).on_task_changed(task, "job started")
    assert world.delivery.deliver_due() == 1
    assert len(world.fake.calls) == calls


def test_not_modified_from_telegram_is_success(world: World) -> None:
    task = world.create()
    world.delivery.deliver_due()
    # Our record says the chat shows something else; Telegram knows it is the same text.
    with world.store.transaction() as tx:
        tx.conn.execute(task_cards.update().values(text_hash="stale"))
    OutboxNotifier(world.store, world.settings).on_task_changed(task, "again")
    assert world.delivery.deliver_due() == 1
    [edit] = world.fake.calls_of("editMessageText")
    assert edit.status == 400
    assert {(row.status, row.last_error) for row in world.rows()} == {(Status.SENT, None)}


def test_an_edit_of_a_deleted_card_sends_a_new_one(world: World, http: httpx.Client) -> None:
    task = world.create()
    world.delivery.deliver_due()
    client_for(world.fake, http).delete_message(CHAT, 1)  # a person deleted it
    world.move(task, "brd-approval")
    world.delivery.deliver_due()
    assert [m.message_id for m in world.fake.visible(CHAT)] == [2]
    assert world.card_row(task).message_id == 2


def test_costs_on_the_card_sum_every_run(world: World) -> None:
    task = world.create()
    world.run(task, "analysis", "claude", 0.30)
    task = world.move(task, "brd-approval")
    task = world.move(task, "architecture")
    task = world.move(task, "development")
    for attempt, cost in enumerate((1.00, 1.50, 1.48), start=1):
        world.run(task, "development", "claude", cost, attempt=attempt)
    world.move(task, "testing")
    world.delivery.deliver_due()
    text = world.fake.visible(CHAT)[0].text
    assert "✅ Development — claude (sonnet) · attempt 3 · runs: 3 · $3.98" in text
    total = sum(run.cost_usd for run in world.store.task_runs(task.id))
    assert f"💰 Total: ${total:.2f}" in text
    assert "$4.28" in text


def test_after_a_rollback_later_stages_lose_their_tick(world: World) -> None:
    task = world.create()
    for stage in ("brd-approval", "architecture", "development", "testing", "deploy-staging"):
        task = world.move(task, stage)
    world.delivery.deliver_due()
    assert "✅ Testing" in world.fake.visible(CHAT)[0].text
    world.move(task, "development", rollback_count=1, event_kind=EventKind.ROLLBACK)
    world.delivery.deliver_due()
    text = world.fake.visible(CHAT)[0].text
    assert "🔄 Development" in text
    for later in ("Testing", "Deploying (staging)", "Deploy"):
        assert f"✅ {later}" not in text
        assert f"▫️ {later}" in text


def test_an_alert_is_its_own_message(world: World) -> None:
    task = world.create()
    world.delivery.deliver_due()
    OutboxNotifier(world.store, world.settings).alert(task, "rolled back from testing")
    OutboxNotifier(world.store, world.settings).alert(None, "lease force-released")
    assert world.delivery.deliver_due() == 2
    card, alert, general = world.fake.visible(CHAT)
    assert alert.text == "⚠️ SVC-1 · Add rate limiting\nrolled back from testing"
    assert general.text == "⚠️ orchestrator\nlease force-released"
    assert world.card_row(task).message_id == card.message_id


def test_429_retry_after_is_honoured_and_pauses_the_channel(world: World) -> None:
    task = world.create()
    OutboxNotifier(world.store, world.settings).alert(task, "second message")
    world.fake.fail_next("sendMessage", retry_after=3)
    start = time.time()
    assert world.delivery.deliver_due() == 0
    assert len(world.fake.calls) == 1  # the alert waited too: the chat is rate-limited
    [card, _alert] = world.rows()
    assert card.status == Status.PENDING
    assert card.next_attempt_at >= start + 3
    assert "429" in (card.last_error or "")
    assert world.delivery.deliver_due(now=start + 2) == 1  # only the alert was due
    assert world.delivery.deliver_due(now=start + 3.5) == 1
    assert world.sends() == 2


def test_a_transient_error_is_retried_and_permanent_one_fails(world: World) -> None:
    task = world.create()
    world.fake.fail_next("sendMessage", error_code=500)
    assert world.delivery.deliver_due() == 0
    assert world.delivery.deliver_due() == 1  # zero backoff in tests
    OutboxNotifier(world.store, world.settings).alert(task, "x")
    world.fake.fail_next("sendMessage", error_code=403, description="Forbidden: bot was kicked")
    assert world.delivery.deliver_due() == 0
    [failed] = world.rows(Status.FAILED)
    assert "bot was kicked" in (failed.last_error or "")
    assert world.delivery.deliver_due() == 0  # failed for good: not retried


# --- bump mode (ORCH-042) -----------------------------------------------------------------------
def test_bump_recreates_the_card_at_the_bottom_silently(bump: World) -> None:
    task = bump.create()
    bump.delivery.deliver_due()
    OutboxNotifier(bump.store, bump.settings).alert(task, "something happened")
    bump.delivery.deliver_due()
    bump.move(task, "brd-approval")
    bump.delivery.deliver_due()

    [_alert, card] = bump.fake.visible(CHAT)  # the card is below the alert now
    assert "⏸️ BRD approval" in card.text
    assert card.disable_notification
    assert bump.card_row(task).message_id == card.message_id == 3
    assert [c.params["message_id"] for c in bump.fake.calls_of("deleteMessage", ok=True)] == [1]


def test_bump_repoints_only_after_a_successful_send(bump: World) -> None:
    task = bump.create()
    bump.delivery.deliver_due()
    bump.fake.fail_next("sendMessage", error_code=500)
    bump.move(task, "brd-approval")
    assert bump.delivery.deliver_due() == 0
    # The old card is deleted, the new one failed: the record still names the old one.
    assert bump.card_row(task).message_id == 1
    assert bump.fake.visible(CHAT) == []
    assert bump.delivery.deliver_due() == 1
    assert bump.card_row(task).message_id == 2
    assert [m.message_id for m in bump.fake.visible(CHAT)] == [2]
    assert bump.sends() == 2  # the first card, and exactly one for this update


def test_bump_sends_one_message_per_update_even_when_delete_fails(bump: World) -> None:
    task = bump.create()
    bump.delivery.deliver_due()
    bump.fake.fail_deletes = True
    for stage in ("brd-approval", "architecture", "development"):
        before = bump.sends()
        task = bump.move(task, stage)
        bump.delivery.deliver_due()
        assert bump.sends() == before + 1
        assert bump.card_row(task).message_id == bump.sends()
    # A 429 on the delete does not gate the send either.
    bump.fake.fail_deletes = False
    bump.fake.fail_next("deleteMessage", retry_after=30)
    bump.move(task, "testing")
    assert bump.delivery.deliver_due() == 1
    assert bump.card_row(task).message_id == 5
    assert len(bump.fake.calls_of("deleteMessage")) == 4


def test_a_taken_over_send_is_not_repeated(bump: World, http: httpx.Client) -> None:
    """A deliverer died after its bump was recorded but before it marked the row sent:
    the next one checks task_cards and only edits; a claim with nothing recorded since
    is delivered in full."""
    task = bump.create()
    bump.delivery.deliver_due()
    bump.move(task, "brd-approval")
    dead_claim = time.time()
    with bump.store.transaction() as tx:  # the dead owner's claim ...
        tx.conn.execute(
            outbox.update()
            .where(outbox.c.status == Status.PENDING)
            .values(status=Status.SENDING, claimed_by="dead-boot", claimed_at=dead_claim)
        )
    bump.delivery.deliver_due()
    assert bump.delivery.messages(status=Status.SENDING)  # its owner lives: left alone

    # ... which it did: the bump's send and its record (the fake shows it as message 2).
    client_for(bump.fake, http).delete_message(CHAT, 1)
    client_for(bump.fake, http).send_message(CHAT, "card as the dead owner sent it")
    with bump.store.transaction() as tx:
        tx.conn.execute(
            task_cards.update().values(message_id=2, text_hash="x", updated_at=dead_claim + 0.01)
        )
    sends = bump.sends()
    taker = build_delivery(
        bump.settings, bump.store, owner="boot-2", is_alive=lambda boot: boot != "dead-boot"
    )
    assert taker is not None
    assert taker.deliver_due() == 1
    assert bump.sends() == sends  # no second card
    assert [m.message_id for m in bump.fake.visible(CHAT)] == [2]
    assert "⏸️ BRD approval" in bump.fake.visible(CHAT)[0].text  # brought up to date

    # A dead claim with no send recorded since: delivered (bumped) once.
    bump.move(task, "architecture")
    with bump.store.transaction() as tx:
        tx.conn.execute(
            outbox.update()
            .where(outbox.c.status == Status.PENDING)
            .values(status=Status.SENDING, claimed_by="dead-boot", claimed_at=time.time())
        )
    assert taker.deliver_due() == 1
    assert bump.sends() == sends + 1
    assert [m.message_id for m in bump.fake.visible(CHAT)] == [3]
    taker.close()


# --- the webhook: the card's buttons --------------------------------------------------------
@pytest.fixture
def webhook(world: World) -> Iterator[tuple[World, httpx.Client]]:
    service = TaskService(world.store, world.settings, OutboxNotifier(world.store, world.settings))
    app = create_app(store=world.store, settings=world.settings, service=service)
    with api_client(app) as client:
        yield world, client


def post(client: httpx.Client, update: Any, secret: str | bytes | None = SECRET) -> httpx.Response:
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
    body = update if isinstance(update, bytes) else json.dumps(update).encode()
    return client.post("/webhooks/telegram", content=body, headers=headers)


def test_a_button_press_approves_through_the_service(
    webhook: tuple[World, httpx.Client],
) -> None:
    world, client = webhook
    task = world.move(world.create(), "brd-approval")
    world.delivery.deliver_due()
    [card] = world.fake.visible(CHAT)
    assert "approve:" in json.dumps(card.reply_markup)

    update = world.fake.callback_update(CHAT, card.message_id, f"approve:{task.id}")
    response = post(client, update)
    assert response.status_code == 200
    assert response.json() == {
        "method": "answerCallbackQuery",
        "callback_query_id": update["callback_query"]["id"],
        "text": "SVC-1: approved",
    }
    approved = world.store.get_task(task.id)
    assert approved.stage == "architecture"
    [event] = [e for e in world.store.task_events(task.id) if e.kind == EventKind.APPROVED]
    assert event.actor == "telegram:@alice(4242)"

    # Telegram redelivers the same update: ignored, nothing moves twice.
    replay = post(client, update)
    assert replay.json() == {"ok": True, "ignored": "replayed update"}
    assert world.store.get_task(task.id).version == approved.version

    world.delivery.deliver_due()  # the card followed, and lost its approve button
    assert "🔄 Architecture" in world.fake.visible(CHAT)[0].text
    assert "approve:" not in json.dumps(world.fake.visible(CHAT)[0].reply_markup)


def test_cancel_and_refusals_answer_the_query(webhook: tuple[World, httpx.Client]) -> None:
    world, client = webhook
    task = world.create()
    world.delivery.deliver_due()
    [card] = world.fake.visible(CHAT)
    refused = post(client, world.fake.callback_update(CHAT, card.message_id, f"approve:{task.id}"))
    assert refused.status_code == 200
    assert "approve applies at brd-approval" in refused.json()["text"]
    assert world.store.get_task(task.id).stage == "analysis"

    other_chat = world.fake.callback_update("-100999", 1, f"cancel:{task.id}")
    assert post(client, other_chat).json()["text"] == "This chat does not steer tasks."
    unknown = world.fake.callback_update(CHAT, 1, "explode:1")
    assert post(client, unknown).json()["text"] == "Unknown action."

    cancelled = post(client, world.fake.callback_update(CHAT, card.message_id, f"cancel:{task.id}"))
    assert cancelled.json()["text"] == "SVC-1: cancelled"
    assert world.store.get_task(task.id).stage == "cancelled"
    with world.store.engine.connect() as conn:
        outcomes = [row.outcome for row in conn.execute(sa.select(webhook_deliveries))]
    assert len(outcomes) == 4
    assert outcomes[-1] == "cancel by telegram:@alice(4242)"


def test_retry_from_the_card(webhook: tuple[World, httpx.Client]) -> None:
    world, client = webhook
    task = world.create()
    # A retry brings a removed worktree back from the task's branch: give it a real one.
    repo = make_repo(Path(task.repository))
    subprocess.run(["git", "branch", task.branch], cwd=repo, check=True)
    with world.store.transaction() as tx:
        tx.update_task_counters(task.id, expected_stage="analysis", failed_reason="agent died")
    world.delivery.deliver_due()
    [card] = world.fake.visible(CHAT)
    response = post(client, world.fake.callback_update(CHAT, card.message_id, f"retry:{task.id}"))
    assert response.json()["text"] == "SVC-1: retrying analysis"
    assert not world.store.get_task(task.id).failed


def steering_app(world: World, **settings: Any) -> Any:
    """The API over ``world`` with ``settings`` changed (e.g. telegram_allowed_users)."""
    changed = world.settings.model_copy(update=settings)
    service = TaskService(world.store, changed, OutboxNotifier(world.store, changed))
    return api_client(create_app(store=world.store, settings=changed, service=service))


def refused_events(world: World, task: Task) -> list[Any]:
    return [e for e in world.store.task_events(task.id) if e.kind == "access.refused"]


def test_an_unauthorised_telegram_user_cannot_approve(world: World) -> None:
    """Seen failing before telegram_allowed_users: alice's press approved the task."""
    task = world.move(world.create(), "brd-approval")
    world.delivery.deliver_due()
    [card] = world.fake.visible(CHAT)
    data = f"approve:{task.id}"
    with steering_app(world, telegram_allowed_users=["@Bob", "1234"]) as client:
        alice = post(client, world.fake.callback_update(CHAT, card.message_id, data))
        assert alice.json()["method"] == "answerCallbackQuery"
        assert alice.json()["text"] == "Not allowed: you are not in telegram_allowed_users."
        assert world.store.get_task(task.id).stage == "brd-approval"
        [event] = refused_events(world, task)
        assert event.actor == "telegram:@alice(4242)"
        assert "approve" in event.reason

        # Listed by id (whatever the username) and by @username (any case): both act.
        carol = world.fake.callback_update(CHAT, card.message_id, data, username="carol")
        carol["callback_query"]["from"]["id"] = 1234
        assert post(client, carol).json()["text"] == "SVC-1: approved"
    [approved] = [e for e in world.store.task_events(task.id) if e.kind == EventKind.APPROVED]
    assert approved.actor == "telegram:@carol(1234)"

    other = world.move(world.create("SVC-2"), "brd-approval")
    world.delivery.deliver_due()
    [other_card] = [m for m in world.fake.visible(CHAT) if "SVC-2" in m.text]
    with steering_app(world, telegram_allowed_users=["@Bob"]) as client:
        bob = world.fake.callback_update(
            CHAT, other_card.message_id, f"approve:{other.id}", username="bob", user_id=77
        )
        assert post(client, bob).json()["text"] == "SVC-2: approved"


@pytest.mark.parametrize("chat", [CHAT, "@orchnews"], ids=["private-group", "public-channel"])
def test_without_an_allow_list_no_one_may_press(world: World, chat: str) -> None:
    """Seen failing before: with no telegram_allowed_users any chat member approved."""
    task = world.move(world.create(), "brd-approval")
    world.delivery.deliver_due()
    [card] = world.fake.visible(CHAT)
    unlisted = world.settings.model_copy(
        update={"telegram_chat_id": chat, "telegram_allowed_users": []}
    )
    assert load_card_view(world.store, unlisted, task.id).actions == ()
    listed = unlisted.model_copy(update={"telegram_allowed_users": ["@alice"]})
    assert load_card_view(world.store, listed, task.id).actions == ("approve", "reject", "cancel")

    update = world.fake.callback_update(CHAT, card.message_id, f"approve:{task.id}")
    if chat.startswith("@"):
        update["callback_query"]["message"]["chat"] = {
            "id": -1001,
            "type": "channel",
            "username": chat[1:],
        }
    with steering_app(world, telegram_chat_id=chat, telegram_allowed_users=[]) as client:
        answer = post(client, update).json()
    assert answer["text"] == (
        "Not allowed: no one may press until telegram_allowed_users lists who may."
    )
    assert world.store.get_task(task.id).stage == "brd-approval"
    if not chat.startswith("@"):  # the press came from the card's own chat: on its trail
        [event] = refused_events(world, task)
        assert event.actor == "telegram:@alice(4242)"


def test_a_press_acts_only_on_the_task_whose_card_was_pressed(
    webhook: tuple[World, httpx.Client],
) -> None:
    world, client = webhook
    first = world.move(world.create("SVC-1"), "brd-approval")
    second = world.move(world.create("SVC-2"), "brd-approval")
    world.delivery.deliver_due()
    first_card = next(m for m in world.fake.visible(CHAT) if "SVC-1" in m.text)

    # SVC-1's card, with a callback naming SVC-2 (a forged or stale button).
    forged = world.fake.callback_update(CHAT, first_card.message_id, f"approve:{second.id}")
    answer = post(client, forged).json()
    assert answer["text"] == "Not allowed: this button is not on that task's card."
    # A message that is no card at all.
    stray = world.fake.callback_update(CHAT, 999_999, f"approve:{second.id}")
    assert post(client, stray).json()["text"].startswith("Not allowed")
    assert world.store.get_task(second.id).stage == "brd-approval"
    assert world.store.get_task(first.id).stage == "brd-approval"
    assert [e.task_id for e in refused_events(world, first)] == [first.id]


def test_webhook_rejects_before_reading(webhook: tuple[World, httpx.Client]) -> None:
    world, client = webhook
    task = world.move(world.create(), "brd-approval")
    update = world.fake.callback_update(CHAT, 1, f"approve:{task.id}")
    for secret in (None, "", "wrong", SECRET + "x", "é".encode() * 5, SECRET.encode() + b"\xff"):
        response = post(client, update, secret=secret)
        assert response.status_code == 401, secret
        assert "X-Telegram-Bot-Api-Secret-Token" in response.json()["error"]
    assert post(client, b"{not json").status_code == 400
    assert post(client, [1, 2]).status_code == 400
    assert post(client, {"update_id": "1"}).status_code == 400
    assert post(client, b"x" * 1_000_001).status_code == 413
    assert post(client, {"update_id": 5, "message": {"text": "hi"}}).json() == {
        "ok": True,
        "ignored": "another chat",
    }
    assert post(client, {"update_id": 6, "edited_message": {"text": "hi"}}).json() == {
        "ok": True,
        "ignored": "not a callback query or a message",
    }
    assert world.store.get_task(task.id).stage == "brd-approval"


def test_webhook_without_a_configured_secret_is_closed(
    tmp_path: Path, db_url: str, store: Store
) -> None:
    (tmp_path / "orch.toml").write_text(f"database_url = {json.dumps(db_url)}\n")
    settings = load_settings(tmp_path / "orch.toml")
    app = create_app(store=store, settings=settings, service=TaskService(store, settings))
    with api_client(app) as client:
        response = post(client, {"update_id": 1}, secret="anything")  # noqa: S106 - not configured
    assert response.status_code == 403
    assert "telegram_webhook_secret" in response.json()["error"]


# --- the Reject button: a force-reply question, and the reply as the feedback ---------------
FEEDBACK = "Requirement 2 is vague: which endpoints are rate limited, and how hard?"


def test_reject_asks_why_and_the_reply_sends_the_brd_back_with_the_feedback(
    webhook: tuple[World, httpx.Client],
) -> None:
    world, client = webhook
    task = world.move(world.create(), "brd-approval")
    world.delivery.deliver_due()
    [card] = world.fake.visible(CHAT)
    buttons = [b["callback_data"] for b in card.reply_markup["inline_keyboard"][0]]
    assert buttons == [f"approve:{task.id}", f"reject:{task.id}", f"cancel:{task.id}"]

    press = world.fake.callback_update(CHAT, card.message_id, f"reject:{task.id}")
    answer = post(client, press).json()
    assert answer["method"] == "answerCallbackQuery"
    assert answer["text"] == "SVC-1: reply to my question with what must change"
    assert world.store.get_task(task.id).stage == "brd-approval"  # nothing moves yet

    # The question goes out through the outbox: it quotes the card and opens the reply field.
    assert world.delivery.deliver_due() == 1
    [_, question] = world.fake.visible(CHAT)
    assert question.reply_to == card.message_id
    assert question.reply_markup == {
        "force_reply": True,
        "input_field_placeholder": "What must change?",
        "selective": True,
    }
    assert question.text.startswith("↩️ @alice, why is the 01-brd.md of SVC-1 · Add rate")

    def ignored(update: dict[str, Any], why: str) -> None:
        assert post(client, update).json() == {"ok": True, "ignored": why}

    # Not ours: a reply to another message (the card), a message replying to nothing, a
    # reply to the question from another chat. Nothing moves, nobody is answered.
    ignored(
        world.fake.message_update(CHAT, FEEDBACK, reply_to=card.message_id),
        "not a reply to a reject question",
    )
    ignored(world.fake.message_update(CHAT, FEEDBACK), "not a reply to a reject question")
    ignored(
        world.fake.message_update("-100999", FEEDBACK, reply_to=question.message_id),
        "another chat",
    )
    empty = post(client, world.fake.message_update(CHAT, "  ", reply_to=question.message_id))
    assert empty.json()["text"].startswith("Not rejected: the feedback is empty")
    assert world.store.get_task(task.id).stage == "brd-approval"
    assert not [e for e in world.store.task_events(task.id) if e.kind == EventKind.REJECTED]

    reply = world.fake.message_update(CHAT, FEEDBACK, reply_to=question.message_id, username="bob")
    answered = post(client, reply).json()
    assert answered == {
        "method": "sendMessage",
        "chat_id": int(CHAT),
        "text": "SVC-1: rejected by telegram:@bob(4242), back to analysis with your feedback.",
        "reply_parameters": {
            "message_id": reply["message"]["message_id"],
            "allow_sending_without_reply": True,
        },
    }
    rejected = world.store.get_task(task.id)
    assert rejected.stage == "analysis"
    [event] = [e for e in world.store.task_events(task.id) if e.kind == EventKind.REJECTED]
    assert (event.actor, event.from_stage, event.to_stage) == (
        "telegram:@bob(4242)",
        "brd-approval",
        "analysis",
    )
    assert event.data == {"feedback": FEEDBACK}
    job = world.store.task_jobs(task.id)[-1]
    assert (job.stage, job.status) == ("analysis", "queued")
    assert job.feedback is not None
    assert FEEDBACK in job.feedback

    # Telegram redelivers it: ignored. A second reply: refused, naming the stage.
    assert post(client, reply).json() == {"ok": True, "ignored": "replayed update"}
    again = post(client, world.fake.message_update(CHAT, "and", reply_to=question.message_id))
    assert again.json()["text"] == (
        "Not rejected: task SVC-1 is in analysis; reject applies at brd-approval"
    )
    world.delivery.deliver_due()  # the card followed and offers no reject any more
    [card_now, *_] = world.fake.visible(CHAT)
    assert "🔄 Analysis" in card_now.text
    assert "reject:" not in json.dumps(card_now.reply_markup)

    # Back at the gate with a new BRD, the old question no longer counts.
    world.move(task, "brd-approval")
    stale = post(client, world.fake.message_update(CHAT, FEEDBACK, reply_to=question.message_id))
    assert "earlier visit of SVC-1 to brd-approval" in stale.json()["text"]
    assert world.store.get_task(task.id).stage == "brd-approval"


def test_reject_is_refused_on_the_button_where_the_stage_does_not_allow_it(
    webhook: tuple[World, httpx.Client],
) -> None:
    world, client = webhook
    task = world.create()
    world.delivery.deliver_due()
    [card] = world.fake.visible(CHAT)
    answer = post(client, world.fake.callback_update(CHAT, card.message_id, f"reject:{task.id}"))
    answer = answer.json()
    assert answer["text"] == "task SVC-1 is in analysis; reject applies at brd-approval"
    assert [row.kind for row in world.rows()] == ["card"]  # no question was queued


junk = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.lists(st.none()))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_only_a_text_reply_to_the_question_in_the_chat_rejects(
    webhook: tuple[World, httpx.Client], data: st.DataObject
) -> None:
    """Messages of any shape: never a 500; the task moves exactly when the message is in
    the configured chat, replies to the open question, has text to say and comes from
    someone in ``telegram_allowed_users`` (a junk sender could be drawn with everything
    else right: it was refused, and the check expected the task to move)."""
    world, client = webhook
    open_questions = [t for t in world.store.list_tasks() if t.stage == "brd-approval"]
    if open_questions:
        [task] = open_questions
        [*_, question] = world.fake.visible(CHAT)
    else:
        task = world.move(world.create(f"SVC-{len(world.store.list_tasks()) + 1}"), "brd-approval")
        world.delivery.deliver_due()
        card = next(
            m for m in world.fake.visible(CHAT) if f"reject:{task.id}" in json.dumps(m.reply_markup)
        )
        post(client, world.fake.callback_update(CHAT, card.message_id, f"reject:{task.id}"))
        world.delivery.deliver_due()
        [*_, question] = world.fake.visible(CHAT)
    good_chat = {"id": int(CHAT), "type": "group"}
    chat = data.draw(st.one_of(st.just(good_chat), st.just({"id": -100999}), junk), "chat")
    replied = data.draw(
        st.one_of(
            st.just({"message_id": question.message_id}),
            st.builds(dict, message_id=st.integers(min_value=-5, max_value=10_000)),
            junk,
        ),
        "reply_to_message",
    )
    text = data.draw(st.one_of(st.just(FEEDBACK), st.text(max_size=10), junk), "text")
    message: dict[str, Any] = {"message_id": 10_000, "chat": chat, "text": text}
    if replied is not None:
        message["reply_to_message"] = replied
    bob = {"id": 1, "username": "bob"}  # in telegram_allowed_users; junk is no one allowed
    sender = data.draw(st.one_of(st.just(bob), junk), "from")
    message["from"] = sender
    update = {"update_id": data.draw(st.integers(min_value=1, max_value=2**40)), "message": message}

    response = post(client, update)

    assert response.status_code == 200, response.text
    moved = world.store.get_task(task.id).stage == "analysis"
    replayed = response.json() == {"ok": True, "ignored": "replayed update"}
    expected = (
        chat == good_chat
        and replied == {"message_id": question.message_id}
        and isinstance(text, str)
        and bool(text.strip())
        and sender == bob
        and not replayed
    )
    assert moved == expected, response.json()
