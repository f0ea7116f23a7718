"""The Costs and Health pages' values (``orchestrator.api.web.reports``): pure functions of
a cost report's period and a ``GET /status`` answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.api.web.reports import health_view, period_from_form
from orchestrator.errors import UsageError

DAY = 86_400.0
NOW = datetime(2026, 12, 2, 15, 4, 5, tzinfo=UTC).timestamp()


def midnight(text: str) -> float:
    return datetime.fromisoformat(text + "T00:00:00+00:00").timestamp()


def test_an_empty_form_is_the_last_30_days_with_today() -> None:
    period = period_from_form("", "", NOW)
    assert period.since == midnight("2026-11-03")
    assert period.until == midnight("2026-12-03")
    assert len(period.days) == 30


@given(st.dates(min_value=datetime(1971, 1, 1).date(), max_value=datetime(2100, 1, 1).date()))
def test_the_last_day_is_included(day: Any) -> None:
    period = period_from_form(str(day), str(day), NOW)
    assert (period.since, period.until) == (midnight(str(day)), midnight(str(day)) + DAY)


@pytest.mark.parametrize(
    ("first", "last"), [("2026-12-01T10:00", ""), ("", "2026-12-1"), ("x" * 10, "")]
)
def test_only_dates_are_taken(first: str, last: str) -> None:
    with pytest.raises(UsageError):
        period_from_form(first, last, NOW)


def test_a_reversed_period_names_the_form_fields() -> None:
    with pytest.raises(UsageError, match=r"^from \(2026-12-03\) is after to \(2026-12-01\)"):
        period_from_form("2026-12-03", "2026-12-01", NOW)


def status(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": "1",
        "started_at": "2026-12-02T15:00:00.000Z",
        "uptime_s": 245.0,
        "tasks_by_stage": {"analysis": 1},
        "failed_tasks": 0,
        "running_jobs": 0,
        "boot_id": "b",
        "outbox": {"pending": 2, "sending": 1, "failed": 0},
        "inbox": {"pending": 0, "oldest_pending_age_s": None, "failed": 0},
        "loops": [{"name": "engine", "state": "running", "restarts": 0, "last_error": None}],
        "engine_last_tick_at": "2026-12-02T15:04:04.000Z",
        "transition_leases": {"enabled": True, "held": 0, "stale": 0, "leases": []},
        "instances": [],
    }
    return {**base, **changes}


def test_a_healthy_status_has_no_problem() -> None:
    view = health_view(status(), NOW)
    assert view["problems"] == []
    assert view["outbox_backlog"] == 3
    assert view["engine_tick"] == "1.0s ago"


def test_a_restarted_or_stopped_loop_needs_a_look() -> None:
    loops = [
        {"name": "reaper", "state": "running", "restarts": 2, "last_error": "OperationalError"},
        {"name": "inbox", "state": "stopped", "restarts": 0, "last_error": None},
    ]
    view = health_view(status(loops=loops), NOW)
    assert view["problems"] == [
        "loop inbox is stopped",
        "loop reaper was restarted 2 time(s); last error: OperationalError",
    ]


def test_a_loop_on_standby_is_healthy() -> None:
    """Another instance leads the maintenance (decision 0027): nothing to look at."""
    loops = [{"name": "reaper", "state": "standby", "restarts": 0, "last_error": None}]
    assert health_view(status(loops=loops), NOW)["problems"] == []


@pytest.mark.parametrize(
    ("leader", "said"),
    [
        (None, "no maintenance in this process"),
        (
            {"is_leader": True, "elected_at": None, "election": "single-instance", "changes": 1},
            "this instance (the only one: SQLite)",
        ),
        (
            {"is_leader": True, "elected_at": "2026-12-02T15:00:00.000Z"}
            | {"election": "advisory-lock", "changes": 1},
            "this instance (advisory lock held since 2026-12-02T15:00:00.000Z)",
        ),
        (
            {"is_leader": False, "elected_at": None, "election": "advisory-lock", "changes": 0},
            "another instance; this one's maintenance loops are on standby",
        ),
    ],
)
def test_the_health_page_says_who_leads_the_maintenance(
    leader: dict[str, object] | None, said: str
) -> None:
    assert health_view(status(leader=leader), NOW)["leader"] == said
