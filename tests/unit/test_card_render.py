"""The live card, pure: labels, markers by position, costs summed per agent, buttons.

Each test here was seen failing against the defect it names (ORCH-091 D1-D3): with a
label map that misses a stage, with ✅ drawn for any stage that has runs, and with only
the last run's cost shown.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.integrations.card import (
    Mark,
    build_card_view,
    parse_callback_data,
    render_alert,
    render_card,
)
from orchestrator.kernel.stages import STAGE_LABELS, STAGE_ORDER, STAGE_TRANSITIONS, stage_label
from orchestrator.outbox.delivery import DeliveryError, GiveUp, RetryAt, retry_decision
from orchestrator.store import AgentRun, Task

LANGUAGES = ("en", "ru")
ALL_STAGES = tuple(stage for stage in STAGE_ORDER)


def task(stage: str, **changes: object) -> Task:
    base = Task(
        id=7,
        work_item="SVC-42",
        repository="/repos/svc",
        title="Add rate limiting",
        description="",
        stage=stage,
        version=1,
        attempt=1,
        rollback_count=0,
        failed_reason=None,
        branch="orch/SVC-42",
        base_branch="main",
        base_sha="0" * 40,
        worktree="/nowhere",
        created_at=0.0,
        updated_at=0.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def run(
    run_id: int, job_id: int, agent: str, cost: float, *, model: str = "m", attempt: int = 1
) -> AgentRun:
    return AgentRun(
        id=run_id,
        job_id=job_id,
        task_id=7,
        agent=agent,
        model=model,
        effort="high",
        attempt=attempt,
        exit_code=0,
        exit_recorded_at=1.0,
        input_tokens=1,
        output_tokens=1,
        cost_usd=cost,
        num_turns=1,
        log_path="/dev/null",
        started_at=1.0,
    )


def marks(text: str, language: str = "en") -> dict[str, str]:
    """stage -> the marker its row shows."""
    found = {}
    for line in text.splitlines():
        for stage in ALL_STAGES:
            label = stage_label(stage, language)
            for mark in (
                Mark.DONE,
                Mark.CURRENT,
                Mark.WAITING,
                Mark.FAILED,
                Mark.CANCELLED,
                Mark.LATER,
            ):
                if line.startswith(f"{mark} {label}"):
                    found[stage] = mark
    return found


# --- labels (D1) --------------------------------------------------------------------------
@pytest.mark.parametrize("language", LANGUAGES)
def test_every_stage_of_stage_transitions_has_its_own_label(language: str) -> None:
    # Derived from STAGE_TRANSITIONS itself, not from a copy of its keys.
    for stage in STAGE_TRANSITIONS:
        assert stage in STAGE_LABELS[language], f"{stage} has no {language} label"
        assert stage_label(stage, language).strip()
    labels = [stage_label(stage, language) for stage in STAGE_TRANSITIONS]
    assert len(set(labels)) == len(labels), "two stages share a label"


@pytest.mark.parametrize("language", LANGUAGES)
def test_an_unknown_stage_gets_a_neutral_capitalised_label(language: str) -> None:
    assert stage_label("security-review", language) == "Security review"
    view = build_card_view(task("security-review"), ALL_STAGES, [], {})
    text = render_card(view, language).text
    assert "Security review" in text
    # Not misleading: no stage claims to be done when the position is unknown.
    assert Mark.DONE not in text
    assert stage_label("created", language) not in text.splitlines()[1]


def test_russian_labels_on_the_card() -> None:
    view = build_card_view(task("brd-approval"), ALL_STAGES, [], {})
    text = render_card(view, "ru").text
    assert "⏸️ Подтверждение BRD" in text
    assert f"{Mark.DONE} Анализ" in text
    assert "Итого: $0.00" in text
    done = render_card(build_card_view(task("done"), ALL_STAGES, [], {}), "ru").text
    assert "📦 Внедрено" in done


# --- markers by position (D2) --------------------------------------------------------------
def test_stages_before_the_position_are_done_the_current_one_in_progress() -> None:
    view = build_card_view(task("testing"), ALL_STAGES, [], {})
    shown = marks(render_card(view).text)
    assert shown == {
        "analysis": Mark.DONE,
        "brd-approval": Mark.DONE,
        "architecture": Mark.DONE,
        "development": Mark.DONE,
        "testing": Mark.CURRENT,
        "deploy-staging": Mark.LATER,
        "deploy": Mark.LATER,
    }


def test_after_a_rollback_no_later_stage_shows_done() -> None:
    # The task went up to deploy (runs in testing, staging, deploy), then was rolled back.
    runs = [
        run(1, 1, "claude", 0.5),
        run(2, 2, "runner:tests", 0.0),
        run(3, 3, "runner:staging", 0.0),
        run(4, 4, "runner:deploy", 0.0),
    ]
    stages = {1: "development", 2: "testing", 3: "deploy-staging", 4: "deploy"}
    rolled_back = task("development", rollback_count=1, attempt=2)
    shown = marks(render_card(build_card_view(rolled_back, ALL_STAGES, runs, stages)).text)
    later = STAGE_ORDER[STAGE_ORDER.index("development") + 1 : STAGE_ORDER.index("done")]
    assert later == ("testing", "deploy-staging", "deploy")
    for stage in later:
        assert shown[stage] == Mark.LATER, f"{stage} still shows {shown[stage]}"
    assert shown["development"] == Mark.CURRENT
    assert shown["architecture"] == Mark.DONE


def test_failed_cancelled_and_done() -> None:
    failed = render_card(
        build_card_view(task("testing", failed_reason="tests failed"), ALL_STAGES, [], {})
    ).text
    assert marks(failed)["testing"] == Mark.FAILED
    assert "❌ Failed at Testing: tests failed" in failed

    cancelled = build_card_view(task("cancelled"), ALL_STAGES, [], {}, cancelled_from="development")
    shown = marks(render_card(cancelled).text)
    assert shown["architecture"] == Mark.DONE
    assert shown["development"] == Mark.CANCELLED
    assert shown["testing"] == Mark.LATER

    done = marks(render_card(build_card_view(task("done"), ALL_STAGES, [], {})).text)
    assert set(done.values()) == {Mark.DONE}


def test_skipped_stages_are_omitted() -> None:
    stages = tuple(s for s in ALL_STAGES if s not in ("deploy-staging", "architecture"))
    text = render_card(build_card_view(task("development"), stages, [], {})).text
    assert "Deploying (staging)" not in text
    assert "Architecture" not in text
    assert "Development" in text


# --- costs (D3) ----------------------------------------------------------------------------
def test_an_agent_with_three_runs_shows_their_summed_cost() -> None:
    runs = [
        run(1, 1, "claude", 0.25, model="haiku"),  # analysis
        run(2, 2, "claude", 1.00, model="sonnet", attempt=1),
        run(3, 3, "claude", 1.50, model="sonnet", attempt=2),
        run(4, 4, "claude", 1.48, model="opus", attempt=3),
    ]
    stages = {1: "analysis", 2: "development", 3: "development", 4: "development"}
    view = build_card_view(task("testing"), ALL_STAGES, runs, stages)
    [development] = [row for row in view.rows if row.stage == "development"]
    [line] = development.agents
    assert (line.runs, line.model, line.attempt) == (3, "opus", 3)  # the last run's details
    assert line.cost_usd == pytest.approx(3.98)
    text = render_card(view).text
    assert "Development — claude (opus, high) · attempt 3 · runs: 3 · $3.98" in text
    # The total is the sum over every run of the task.
    assert view.total_cost_usd == pytest.approx(sum(r.cost_usd for r in runs))
    assert "💰 Total: $4.23" in text


# --- buttons --------------------------------------------------------------------------------
def _buttons(stage: str, **changes: object) -> list[str]:
    markup = render_card(build_card_view(task(stage, **changes), ALL_STAGES, [], {})).reply_markup
    return [button["callback_data"] for row in markup["inline_keyboard"] for button in row]


def test_buttons_follow_the_state() -> None:
    assert _buttons("brd-approval") == ["approve:7", "reject:7", "cancel:7"]
    assert _buttons("testing", failed_reason="x") == ["retry:7", "cancel:7"]
    assert _buttons("development") == ["cancel:7"]
    # A finished task's card loses its buttons (an empty keyboard removes them on edit).
    assert _buttons("done") == []
    assert _buttons("cancelled") == []


def test_callback_data_round_trip_and_rejects() -> None:
    assert parse_callback_data("approve:12") == ("approve", 12)
    for bad in ("approve", "approve:", "drop:1", "retry:-1", "cancel:1e3", "cancel:" + "9" * 13):
        assert parse_callback_data(bad) is None


def test_text_stays_within_telegrams_limit() -> None:
    long = task("testing", failed_reason="boom " * 2000)
    assert len(render_card(build_card_view(long, ALL_STAGES, [], {})).text) <= 4096
    assert len(render_alert("x" * 10_000, work_item="W-1", title="t")) <= 4096


# --- the outbox's retry decision -------------------------------------------------------------
def test_retry_decision() -> None:
    transient = DeliveryError("502")
    assert retry_decision(1, transient, now=100, backoff_s=2, max_attempts=5) == RetryAt(102)
    assert retry_decision(3, transient, now=100, backoff_s=2, max_attempts=5) == RetryAt(108)
    assert retry_decision(3, transient, now=100, backoff_s=0, max_attempts=5) == RetryAt(100)
    assert isinstance(retry_decision(5, transient, now=0, backoff_s=2, max_attempts=5), GiveUp)
    # A 429 names the moment, and does not count against the attempts.
    limited = DeliveryError("429", retry_after_s=7)
    assert retry_decision(50, limited, now=100, backoff_s=2, max_attempts=5) == RetryAt(107)
    permanent = DeliveryError("403 bot was blocked", permanent=True)
    assert isinstance(retry_decision(1, permanent, now=0, backoff_s=2, max_attempts=5), GiveUp)
