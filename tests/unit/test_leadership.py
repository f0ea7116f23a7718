"""Leadership (decision 0027): led loops run only while this instance leads.

The election is driven step by step (:meth:`Leadership.check`) against a fake elector,
so no test waits for the retry interval; a led body says it started or stopped through
events, waited for with a bound that is never a pass criterion.
"""

from __future__ import annotations

import threading
from typing import Final

import pytest

from orchestrator.maintenance.leadership import Leadership
from orchestrator.maintenance.supervisor import Loop, Supervisor

WAIT_S: Final = 10.0


class FakeElector:
    """The lock is free when ``free``; ``connected`` False is a dropped connection."""

    def __init__(self) -> None:
        self.free = False
        self.connected = True
        self.held = False
        self.released = 0
        self.fail_next: Exception | None = None

    def try_acquire(self) -> bool:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        if self.free:
            self.held, self.free = True, False
        return self.held

    def still_held(self) -> bool:
        if not self.connected:
            self.held = False
        return self.held

    def release(self) -> None:
        self.held = False
        self.released += 1

    def holder(self) -> str | None:
        return "someone-else" if not self.held else None


class Body:
    """A led body that records each start and ends when its stop event is set."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.ended = threading.Event()
        self.starts = 0

    def __call__(self, stop: threading.Event) -> None:
        self.starts += 1
        self.ended.clear()
        self.started.set()
        stop.wait()
        self.started.clear()
        self.ended.set()


@pytest.fixture
def world() -> tuple[FakeElector, Leadership, Body, Supervisor]:
    elector = FakeElector()
    leadership = Leadership(elector, boot_id="me")
    body = Body()
    supervisor = Supervisor([leadership.led_loop(Loop("reaper", body))])
    return elector, leadership, body, supervisor


def states(supervisor: Supervisor) -> dict[str, str]:
    return {row["name"]: row["state"] for row in supervisor.status()}


def test_a_follower_runs_no_led_body_and_shows_standby(
    world: tuple[FakeElector, Leadership, Body, Supervisor],
) -> None:
    _elector, leadership, body, supervisor = world
    supervisor.start()
    try:
        leadership.check()  # the lock is held elsewhere
        assert not leadership.is_leader
        assert not body.started.wait(0.2)  # seen failing with led() running the body
        assert body.starts == 0
        assert states(supervisor) == {"reaper": "standby"}
        assert leadership.status()["is_leader"] is False
        assert leadership.status()["leader_boot_id"] == "someone-else"
    finally:
        supervisor.stop(WAIT_S)


def test_the_body_starts_with_the_lead_and_stops_when_it_is_lost(
    world: tuple[FakeElector, Leadership, Body, Supervisor],
) -> None:
    elector, leadership, body, supervisor = world
    supervisor.start()
    try:
        elector.free = True
        leadership.check()
        assert leadership.is_leader
        assert body.started.wait(WAIT_S)
        assert states(supervisor) == {"reaper": "running"}
        assert leadership.status()["elected_at"] is not None
        assert leadership.status()["leader_boot_id"] == "me"

        elector.connected = False  # the leader's connection dropped
        leadership.check()
        assert not leadership.is_leader
        assert body.ended.wait(WAIT_S)  # seen failing without the stop events set
        assert states(supervisor) == {"reaper": "standby"}

        elector.connected, elector.free = True, True
        leadership.check()
        assert body.started.wait(WAIT_S)
        assert body.starts == 2
        assert leadership.status()["changes"] == 3
    finally:
        supervisor.stop(WAIT_S)
    assert body.ended.is_set()  # the supervisor's stop ends a led body too


def test_a_database_error_in_the_election_is_survived(
    world: tuple[FakeElector, Leadership, Body, Supervisor],
) -> None:
    elector, leadership, _body, _supervisor = world
    elector.fail_next = OSError("connection refused")
    leadership.check()
    assert not leadership.is_leader
    elector.free = True
    leadership.check()
    assert leadership.is_leader


def test_the_leader_loop_gives_the_lead_up_when_it_ends(
    world: tuple[FakeElector, Leadership, Body, Supervisor],
) -> None:
    elector, leadership, _body, _supervisor = world
    elector.free = True
    stop = threading.Event()
    stop.set()  # run() does one pass of nothing, then gives up what it holds
    leadership.check()
    assert leadership.is_leader
    leadership.run(stop)
    assert not leadership.is_leader
    assert (elector.held, elector.released) == (False, 1)


def test_the_only_instance_always_leads() -> None:
    leadership = Leadership(None, boot_id="me")
    body = Body()
    supervisor = Supervisor([leadership.led_loop(Loop("reaper", body))])
    supervisor.start()
    try:
        assert body.started.wait(WAIT_S)
        assert leadership.status() == {
            "is_leader": True,
            "elected_at": leadership.since,
            "election": "single-instance",
            "changes": 1,
            "leader_boot_id": "me",
        }
        leadership.check()  # nothing to elect
        assert leadership.is_leader
    finally:
        supervisor.stop(WAIT_S)
    assert body.ended.is_set()
