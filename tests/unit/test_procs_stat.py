"""The one ``/proc/<pid>/stat`` parser (``orchestrator.procs.proc``).

A process names itself (``comm``, up to 15 bytes, any character but NUL), so the name
may hold spaces and parentheses: ``1234 (a) b) (c) S 1 ...``. The line is split at its
last ``)``; the fields after it are the state, the parent, the group, the session and,
at field 22, the start time.
"""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.procs.proc import ProcStat, parse_stat, read_stat

# Fields 4 to 52 of a real line after the state (a kernel 6.x has 52 fields).
FIELDS_AFTER_STATE = 49
START_TIME_FIELD = 22

comms = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\n"),
    max_size=32,
)
states = st.sampled_from(["R", "S", "D", "Z", "T", "t", "X", "I"])
numbers = st.integers(min_value=0, max_value=2**31 - 1)


def stat_line(pid: int, comm: str, state: str, numbers_after: list[int]) -> str:
    return f"{pid} ({comm}) {state} {' '.join(map(str, numbers_after))}\n"


@given(
    pid=st.integers(min_value=1, max_value=2**22),
    comm=comms,
    state=states,
    after=st.lists(numbers, min_size=FIELDS_AFTER_STATE, max_size=FIELDS_AFTER_STATE),
)
def test_any_process_name_parses_to_its_own_fields(
    pid: int, comm: str, state: str, after: list[int]
) -> None:
    parsed = parse_stat(stat_line(pid, comm, state, after))

    # after[0] is field 4 (ppid); field N is after[N - 4].
    assert parsed == ProcStat(
        pid=pid,
        comm=comm,
        state=state,
        ppid=after[0],
        pgrp=after[1],
        session=after[2],
        start_ticks=after[START_TIME_FIELD - 4],
    )


def test_a_name_with_spaces_and_parentheses_splits_at_the_last_parenthesis() -> None:
    fields = " ".join(str(n) for n in range(4, 4 + FIELDS_AFTER_STATE))
    parsed = parse_stat(f"1234 (a) b) (c) S {fields}")

    assert (parsed.pid, parsed.comm, parsed.state) == (1234, "a) b) (c", "S")
    assert (parsed.ppid, parsed.pgrp, parsed.session, parsed.start_ticks) == (4, 5, 6, 22)


@pytest.mark.parametrize("state", ["Z", "X"])
def test_a_zombie_or_a_dead_entry_is_not_living(state: str) -> None:
    fields = " ".join("1" for _ in range(FIELDS_AFTER_STATE))
    assert not parse_stat(f"7 (sleep) {state} {fields}").living
    assert parse_stat(f"7 (sleep) S {fields}").living


@given(st.text(max_size=200))
def test_a_line_that_is_not_a_stat_line_is_a_value_error_or_parses(text: str) -> None:
    # Never another exception: a reader skips what it cannot parse.
    with contextlib.suppress(ValueError):
        parse_stat(text)


@pytest.mark.parametrize(
    "text",
    ["", "1234", "1234 (sleep", "1234 (sleep) S 1 2 3", "x (sleep) S " + "1 " * 60],
)
def test_a_truncated_or_garbled_line_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="/proc stat line"):
        parse_stat(text)


def test_our_own_stat_names_our_parent_group_and_session() -> None:
    stat = read_stat(os.getpid())

    assert stat is not None
    assert (stat.pid, stat.ppid, stat.pgrp, stat.session) == (
        os.getpid(),
        os.getppid(),
        os.getpgid(0),
        os.getsid(0),
    )
    assert stat.living
    assert stat.start_ticks > 0
