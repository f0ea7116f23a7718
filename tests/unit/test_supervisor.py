"""The supervisor restarts a loop that dies, with a doubling backoff, and reports it."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Final

import pytest

from orchestrator.maintenance.supervisor import Loop, Supervisor, every

WAIT_S: Final = 10.0  # a deadline against hanging, never the pass criterion


def wait_for(condition: object, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached in {WAIT_S}s")
        time.sleep(0.005)


def test_a_loop_that_raises_is_restarted_and_its_error_kept() -> None:
    runs: list[int] = []
    healthy = threading.Event()

    def sweep() -> None:
        runs.append(1)
        if len(runs) <= 3:
            raise RuntimeError(f"broken {len(runs)}")
        healthy.set()

    supervisor = Supervisor([Loop("sweeper", every(0.001, sweep))], backoff_s=0.001)
    supervisor.start()
    wait_for(healthy.is_set, "a healthy sweep after three failures")
    [row] = supervisor.status()
    supervisor.stop()

    assert row["name"] == "sweeper"
    assert row["state"] == "running"
    assert row["restarts"] == 3
    assert row["last_error"] == "RuntimeError: broken 3"
    assert supervisor.status()[0]["state"] == "stopped"


def test_the_backoff_doubles_up_to_its_cap() -> None:
    """Restart times of an always-failing loop: each gap at least the backoff so far."""
    starts: list[float] = []

    def body(_stop: threading.Event) -> None:
        starts.append(time.monotonic())
        raise RuntimeError("always")

    supervisor = Supervisor([Loop("failing", body)], backoff_s=0.01, max_backoff_s=0.04)
    supervisor.start()
    wait_for(lambda: len(starts) >= 6, "six incarnations")
    supervisor.stop()

    gaps = [b - a for a, b in itertools.pairwise(starts)][:5]
    for gap, backoff in zip(gaps, (0.01, 0.02, 0.04, 0.04, 0.04), strict=True):
        assert gap >= backoff


def test_stop_wakes_a_waiting_loop_and_every_thread_ends() -> None:
    woken = threading.Event()

    def body(stop: threading.Event) -> None:
        woken.wait()  # a loop waiting on its own event, like the inbox
        assert stop.is_set()

    supervisor = Supervisor([Loop("waiter", body, wake=woken.set), Loop("idle", every(60, int))])
    supervisor.start()
    supervisor.stop(timeout_s=WAIT_S)

    assert [row["state"] for row in supervisor.status()] == ["stopped", "stopped"]
    assert not [t for t in threading.enumerate() if t.name in ("orch-waiter", "orch-idle")]


def test_loop_names_are_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        Supervisor([Loop("a", every(1, int)), Loop("a", every(1, int))])
