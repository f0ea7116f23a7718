"""The store's pulse (store/activity.py) and the loops it paces (supervisor.every).

Time is a fake clock here: "quiet" is decided by the clock, never by sleeping; the only
real waits are bounds against hanging (``WAIT_S``) and one short look (``GLANCE_S``)
that a loop did *not* sweep, which cannot pass by luck when the code is wrong in the
way each test names.
"""

from __future__ import annotations

import threading
import time
from typing import Final

import pytest

from orchestrator.maintenance.supervisor import Loop, Supervisor, every
from orchestrator.store.activity import QUIET_AFTER_S, Activity

WAIT_S: Final = 10.0
GLANCE_S: Final = 0.3
NEVER_S: Final = 3600.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_for(condition: object, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached in {WAIT_S}s")
        time.sleep(0.005)


def test_a_poke_calls_the_listeners_and_ends_a_wait_a_touch_only_ends_the_wait() -> None:
    activity = Activity()
    called: list[int] = []
    activity.subscribe(lambda: called.append(1))
    generation = activity.generation
    activity.touch()
    assert activity.wait(0, since=generation)  # it moved since
    assert called == []
    activity.poke()
    assert called == [1]
    assert not activity.wait(0)  # nothing moved since now


def test_quiet_for_counts_from_the_last_move() -> None:
    clock = FakeClock()
    activity = Activity(clock)
    clock.now += 40
    assert activity.quiet_for() == 40
    activity.touch()
    assert activity.quiet_for() == 0


def test_a_waiter_in_another_thread_wakes_on_a_poke() -> None:
    activity = Activity()
    generation = activity.generation
    woke = threading.Event()

    def waiter() -> None:
        if activity.wait(NEVER_S, since=generation):
            woke.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    activity.poke()
    assert woke.wait(WAIT_S)
    thread.join(WAIT_S)


def test_a_quiet_loop_sleeps_until_work_moves_then_sweeps_at_once() -> None:
    """Seen failing with ``every`` ignoring the activity: the loop swept every
    ``interval_s`` (here a millisecond) through the quiet time."""
    clock = FakeClock()
    activity = Activity(clock)
    clock.now += QUIET_AFTER_S + 1  # nothing moved for longer than the quiet bound
    sweeps: list[float] = []
    body = every(0.001, lambda: sweeps.append(1), activity=activity, idle_interval_s=NEVER_S)
    supervisor = Supervisor([Loop("sweeper", body, wake=activity.touch)])
    supervisor.start()
    try:
        wait_for(lambda: len(sweeps) == 1, "the first sweep")
        time.sleep(GLANCE_S)
        assert len(sweeps) == 1  # quiet: waiting for work, not sweeping each millisecond
        activity.poke()  # work moved: a commit here, a NOTIFY from elsewhere
        wait_for(lambda: len(sweeps) >= 2, "the sweep after the poke")
        # The poke made the store busy again: the loop is back at its busy cadence.
        wait_for(lambda: len(sweeps) >= 10, "sweeps every interval while busy")
    finally:
        supervisor.stop(WAIT_S)  # ends the long idle wait through the loop's wake


def test_stopping_a_quiet_loop_does_not_wait_out_its_idle_interval() -> None:
    clock = FakeClock()
    activity = Activity(clock)
    clock.now += QUIET_AFTER_S + 1
    swept = threading.Event()
    body = every(1.0, swept.set, activity=activity, idle_interval_s=NEVER_S)
    supervisor = Supervisor([Loop("sweeper", body, wake=activity.touch)])
    supervisor.start()
    assert swept.wait(WAIT_S)
    began = time.monotonic()
    supervisor.stop(WAIT_S)
    # Not a speed bound: without the wake the thread would still be waiting its hour.
    assert time.monotonic() - began < WAIT_S
    assert [row["state"] for row in supervisor.status()] == ["stopped"]


def test_rest_waits_the_busy_interval_while_work_moves() -> None:
    clock = FakeClock()
    activity = Activity(clock)
    waited: list[float] = []
    activity.rest(
        activity.generation, busy_wait=waited.append, interval_s=0.5, idle_interval_s=NEVER_S
    )
    assert waited == [0.5]


def test_a_quiet_rest_ends_when_the_next_retry_is_due() -> None:
    """The inbox's and the outbox's wait: a retry's backoff is announced by no one, so a
    quiet loop must wake for it (seen hanging for the idle hour with ``next_due``
    ignored)."""
    clock = FakeClock()
    activity = Activity(clock)
    clock.now += QUIET_AFTER_S + 1
    began = time.monotonic()
    activity.rest(
        activity.generation,
        busy_wait=pytest.fail,
        interval_s=0.5,
        idle_interval_s=NEVER_S,
        next_due=lambda: 1000.05,
        now=lambda: 1000.0,
    )
    assert time.monotonic() - began < WAIT_S  # a bound against hanging, not a speed test
    activity.rest(
        activity.generation,
        busy_wait=pytest.fail,
        interval_s=0.5,
        idle_interval_s=NEVER_S,
        next_due=lambda: 997.0,  # overdue: no wait at all
        now=lambda: 1000.0,
    )
