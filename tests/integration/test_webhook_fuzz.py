"""Fuzz over every webhook endpoint (Telegram, Gitea, GitHub, Plane) with hypothesis.

Bodies range from random bytes to JSON shaped like the real deliveries (the keys each
parser reads, with values of any type); headers from the right event names to noise;
about half the requests are signed correctly. Whatever arrives: never a 500, and an
unsigned request changes no task and records no delivery.

Seen failing: with ``verify_signature`` answering True, hypothesis found an unsigned
Gitea delivery that got past the signature (a 400 for its delivery header, not 401)
within a few examples.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.integration.support import api_client, make_repo

from orchestrator.api.server import create_app
from orchestrator.lifecycle.service import TaskService
from orchestrator.lifecycle.transitions import advance_stage
from orchestrator.settings import load_settings
from orchestrator.store import Store
from orchestrator.store.schema import tasks, webhook_deliveries
from orchestrator.testing.fake_http import hmac_sha256

SECRETS = {"gitea": "g-secret", "github": "h-secret", "plane": "p-secret", "telegram": "t-secret"}
ENDPOINTS = tuple(SECRETS)
BRANCH = "orch/SHOP-1"

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["closed", "opened", "labeled", "created", "updated", "deleted", BRANCH]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
KEYS = (
    "action",
    "number",
    "pull_request",
    "repository",
    "ref",
    "after",
    "review",
    "issue",
    "label",
    "event",
    "data",
    "update_id",
    "callback_query",
    "merged",
    "head",
    "full_name",
    "state",
    "id",
    "project",
    "sequence_id",
    "name",
    "message",
    "chat",
)
shaped = st.recursive(
    st.dictionaries(st.sampled_from(KEYS), scalars, max_size=5),
    lambda inner: st.dictionaries(
        st.sampled_from(KEYS), st.one_of(scalars, inner, st.lists(inner, max_size=2)), max_size=6
    ),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    shaped.map(lambda v: json.dumps(v).encode()),
)
header_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=0, max_size=30
)
events = st.one_of(
    st.sampled_from(["pull_request", "push", "issues", "pull_request_review", "ping", "x"]),
    header_text,
)


def _headers(endpoint: str, body: bytes, signed: bool, event: str, delivery: str) -> dict[str, str]:
    secret = SECRETS[endpoint]
    if endpoint == "telegram":
        return {"X-Telegram-Bot-Api-Secret-Token": secret if signed else delivery}
    signature = hmac_sha256(secret if signed else secret + "x", body)
    if endpoint == "github":
        return {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": f"sha256={signature}",
        }
    if endpoint == "gitea":
        return {
            "X-Gitea-Event": event,
            "X-Gitea-Delivery": delivery,
            "X-Gitea-Signature": signature,
        }
    return {"X-Plane-Event": event, "X-Plane-Delivery": delivery, "X-Plane-Signature": signature}


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[tuple[httpx.Client, Store]]:
    repo = make_repo(tmp_path / "shop")
    (tmp_path / "orch.toml").write_text(
        f'database_url = "sqlite:///{tmp_path}/orch.db"\n'
        'data_dir = ".orch"\n'
        f'gitea_webhook_secret = "{SECRETS["gitea"]}"\n'
        f'github_webhook_secret = "{SECRETS["github"]}"\n'
        f'plane_webhook_secret = "{SECRETS["plane"]}"\n'
        f'telegram_webhook_secret = "{SECRETS["telegram"]}"\n'
        'telegram_chat_id = "-100"\n'
        'telegram_allowed_users = ["@alice"]\n'
        "webhook_max_body_bytes = 4096\n"
        + "".join(
            f'[stages.{stage}]\nagent = "scripted"\n'
            for stage in ("analysis", "architecture", "development")
        )
        + f'[repos.shop]\npath = "{repo}"\nforge_repo = "acme/shop"\n'
    )
    config = load_settings(tmp_path / "orch.toml")
    store = Store.open(config.database_url)
    service = TaskService(store, config)
    task = service.create_task(repo_path=repo, title="Add a cart", work_item="SHOP-1", actor="t")
    for step in ("brd-approval", "architecture", "development", "testing"):
        current = store.get_task(task.id)
        with store.transaction() as tx:
            advance_stage(tx, config, current, current.stage, step, actor="t", reason="walk")
    app = create_app(store=store, settings=config, service=service)
    with api_client(app) as client:
        yield client, store
    store.close()


def _snapshot(store: Store) -> tuple[list[Any], int]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(tasks.c.id, tasks.c.version).order_by(tasks.c.id)).all()
        seen = conn.execute(sa.select(sa.func.count()).select_from(webhook_deliveries)).scalar()
    return [tuple(row) for row in rows], int(seen or 0)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    body=bodies,
    signed=st.booleans(),
    event=events,
    delivery=header_text,
)
def test_no_500_and_no_unsigned_change(
    app_client: tuple[httpx.Client, Store],
    endpoint: str,
    body: bytes,
    signed: bool,
    event: str,
    delivery: str,
) -> None:
    client, store = app_client
    before = _snapshot(store)
    headers = _headers(endpoint, body, signed, event, delivery)
    response = client.post(f"/webhooks/{endpoint}", content=body, headers=headers)
    assert response.status_code < 500, response.text
    assert isinstance(response.json(), dict)  # always a JSON answer, never a stack trace
    if not signed:
        assert response.status_code == 401, response.text
        assert _snapshot(store) == before
