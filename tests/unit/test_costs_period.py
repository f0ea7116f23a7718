"""The cost report's period (``orchestrator.api.costs``): ISO 8601 in, UNIX seconds out,
anything else one :class:`UsageError` line. Pure: no database, no clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.api.costs import (
    DEFAULT_PERIOD_DAYS,
    MAX_PERIOD_DAYS,
    Period,
    day_text,
    parse_moment,
    parse_period,
)
from orchestrator.errors import UsageError

DAY = 86_400.0
NOW = datetime(2026, 12, 2, 15, 4, 5, tzinfo=UTC).timestamp()

moments = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 30), timezones=st.just(UTC)
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@given(moments, offsets)
def test_any_iso_time_reads_back_as_the_same_moment(moment: datetime, offset: timezone) -> None:
    shown = moment.astimezone(offset).isoformat()
    assert parse_moment(shown, "since") == pytest.approx(moment.timestamp(), abs=1e-6)


@given(st.dates(min_value=datetime(1970, 1, 1).date(), max_value=datetime(9998, 12, 31).date()))
def test_a_date_is_its_midnight_utc(day: object) -> None:
    text = str(day)
    assert (
        parse_moment(text, "until") == datetime.fromisoformat(text + "T00:00:00+00:00").timestamp()
    )


def test_a_time_without_an_offset_is_utc_and_z_is_accepted() -> None:
    expected = datetime(2026, 12, 1, 9, 30, tzinfo=UTC).timestamp()
    assert parse_moment("2026-12-01T09:30:00", "since") == expected
    assert parse_moment("2026-12-01T09:30:00Z", "since") == expected
    assert parse_moment("2026-12-01T10:30:00+01:00", "since") == expected


@given(st.text(max_size=60))
def test_any_text_is_a_moment_or_one_usage_line(text: str) -> None:
    try:
        value = parse_moment(text, "since")
    except UsageError as exc:
        message = str(exc)
        assert message.startswith("since: ")
        assert "\n" not in message
        assert len(message) < 200
    else:
        assert 0 <= value < datetime(9999, 1, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "yesterday",
        "2026-13-01",
        "2026-02-30",
        "1969-12-31",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "9999-01-01",
        "2026-12-01T25:00",
        "2026-12-01" + "0" * 100,
        "\uff12\uff10\uff12\uff16-12-01",  # fullwidth digits
        "2026-12-01\x00",
        "2026-12-01\ud800",
        "1e9",
        "-1",
    ],
)
def test_hostile_moments_are_one_usage_line(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_moment(text, "until")
    assert str(caught.value).startswith("until: ")
    assert "\n" not in str(caught.value)


def test_defaults_are_the_last_30_days_until_now() -> None:
    assert parse_period(None, None, NOW) == Period(NOW - DEFAULT_PERIOD_DAYS * DAY, NOW)
    until = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    assert parse_period(None, "2026-11-01", NOW) == Period(until - 30 * DAY, until)


def test_since_must_come_before_until_and_the_period_is_bounded() -> None:
    with pytest.raises(UsageError, match="must be before until"):
        parse_period("2026-12-02", "2026-12-02", NOW)
    with pytest.raises(UsageError, match="must be before until"):
        parse_period("2026-12-03", "2026-12-02", NOW)
    with pytest.raises(UsageError, match=f"at most {MAX_PERIOD_DAYS}"):
        parse_period("2020-01-01", "2026-01-01", NOW)
    assert (
        parse_period("2025-01-01", "2026-01-01", NOW).until
        == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    )


@given(
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.floats(min_value=1e-3, max_value=MAX_PERIOD_DAYS * DAY),
)
def test_the_days_of_a_period_cover_it_exactly(since: float, length: float) -> None:
    period = Period(since, since + length)
    days = period.days
    assert days == list(range(days[0], days[-1] + 1))
    assert days[0] * DAY <= since < (days[0] + 1) * DAY
    # The last day holds the last moment before until, and no day lies past it.
    assert days[-1] * DAY < period.until <= (days[-1] + 1) * DAY


def test_day_numbers_read_as_utc_dates() -> None:
    assert day_text(0) == "1970-01-01"
    assert day_text(20_789) == "2026-12-02"
