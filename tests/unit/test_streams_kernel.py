"""The pure parts of the live streams: the gap rule, SSE framing, Last-Event-ID, masking,
and reading a log's tail and what is appended to it.

The property test models PostgreSQL: ids are handed out in order, transactions commit
in any order (or roll back) within the grace. Seen failing with a reader that sent what
it saw (an event committed late was skipped), and with one that never passed a gap (a
rolled-back id held every later event back for ever).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.api.run_logs import LogFollower, UnreadableLogError, read_log
from orchestrator.api.streams import EVENT_GAP_GRACE_S, parse_last_event_id, releasable, sse_message
from orchestrator.errors import UsageError
from orchestrator.redact import mask_text
from orchestrator.store import Event


def event(event_id: int, created_at: float) -> Event:
    return Event(
        id=event_id,
        task_id=1,
        job_id=None,
        kind="stage.changed",
        actor="t",
        from_stage=None,
        to_stage=None,
        reason="",
        data=None,
        created_at=created_at,
    )


# Per id: (allocated after the previous id by, commit delay as a share of the grace, or
# None for a rollback).
writes = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=2),
        st.one_of(st.none(), st.floats(min_value=0, max_value=0.95)),
    ),
    min_size=1,
    max_size=25,
)
polls = st.lists(st.floats(min_value=0, max_value=60), min_size=1, max_size=30)


@given(writes, polls)
def test_every_committed_event_is_sent_once_in_order(
    plan: list[tuple[float, float | None]], poll_times: list[float]
) -> None:
    created, committed = [], {}
    now = 0.0
    for event_id, (gap, delay) in enumerate(plan, start=1):
        now += gap
        created.append(now)
        if delay is not None:
            committed[event_id] = now + delay * EVENT_GAP_GRACE_S
    last_id, sent = 0, []
    end = max(created) + EVENT_GAP_GRACE_S * 2
    for at in [*sorted(poll_times), end]:
        visible = [event(i, created[i - 1]) for i, when in sorted(committed.items()) if when <= at]
        ready, last_id = releasable(last_id, [e for e in visible if e.id > last_id], at)
        sent.extend(e.id for e in ready)
    assert sent == sorted(committed)


def test_a_gap_holds_later_events_back_only_while_young() -> None:
    young = [event(1, 100.0), event(3, 100.0)]
    assert releasable(0, young, 100.5) == ([young[0]], 1)
    assert releasable(1, young[1:], 100.0 + EVENT_GAP_GRACE_S) == ([young[1]], 3)
    assert releasable(5, [], 100.0) == ([], 5)


def test_sse_message_frames_every_line() -> None:
    assert sse_message("a\nb\r\nc\rd", event_id="7", event="log") == (
        "id: 7\nevent: log\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    )
    assert sse_message("") == "data: \n\n"


@pytest.mark.parametrize("value", [None, "", "  "])
def test_no_last_event_id(value: str | None) -> None:
    assert parse_last_event_id(value) is None


@given(st.text(max_size=40))
def test_last_event_id_is_an_id_or_one_clear_error(value: str) -> None:
    try:
        parsed = parse_last_event_id(value)
    except UsageError as exc:
        message = str(exc)
        parsed = -1
    if parsed == -1:
        assert "\n" not in message
        assert "Last-Event-ID" in message
        return
    if parsed is None:
        assert not value.strip()
    else:
        assert value.strip().isascii()
        assert parsed == int(value.strip())


def test_mask_text_hides_secrets_longest_first_and_url_passwords() -> None:
    text = "key abcdef123 in abcdef123456, https://u:pw@host/x, short ab"
    assert mask_text(text, frozenset({"abcdef123", "abcdef123456", "ab"})) == (
        "key *** in ***, https://u:***@host/x, short ab"
    )


def test_read_log_tail_cap_and_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    assert read_log(log).text == ""  # not written yet
    log.write_bytes(b"one\ntwo\nthree\nfour\nunfini")
    assert read_log(log).text == "one\ntwo\nthree\nfour\nunfini"
    assert read_log(log, lines=2).text == "four\nunfini"
    capped = read_log(log, max_bytes=12)  # "ee\nfour\nunfini"[-12:]: starts mid-line
    assert (capped.text, capped.cut) == ("four\nunfini", True)
    whole = read_log(log, whole_lines=True)
    assert whole.text == "one\ntwo\nthree\nfour\n"
    assert whole.end == len(b"one\ntwo\nthree\nfour\n")
    follower = LogFollower(log, whole.end)
    assert follower.read_new() == ""
    with log.open("ab") as handle:
        handle.write(b"shed\nfive")
    assert follower.read_new() == "unfinished\n"
    assert follower.read_new(final=True) == "five"
    assert follower.read_new(final=True) == ""


def test_a_log_that_is_a_link_or_not_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "private"
    target.write_text("secret\n")
    link = tmp_path / "run.log"
    link.symlink_to(target)
    with pytest.raises(UnreadableLogError, match="symbolic link"):
        read_log(link)
    with pytest.raises(UnreadableLogError, match="symbolic link"):
        LogFollower(link).read_new()
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    with pytest.raises(UnreadableLogError, match="not a regular file"):
        read_log(fifo)
