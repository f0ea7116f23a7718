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


def test_an_error_expected_to_pass_is_one_line_and_any_other_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The store's is_outage: a database out of reach is expected to pass, so the loop
    # says so in one line (restarted all the same); a bug keeps its traceback.
    errors = iter([ConnectionError("server closed the connection\nmore detail"), KeyError("x")])
    done = threading.Event()

    def sweep() -> None:
        error = next(errors, None)
        if error is None:
            done.set()
            return
        raise error

    supervisor = Supervisor(
        [Loop("sweeper", every(0.001, sweep))],
        backoff_s=0.001,
        passing=lambda exc: isinstance(exc, ConnectionError),
    )
    with caplog.at_level("WARNING", logger="orchestrator.maintenance.supervisor"):
        supervisor.start()
        wait_for(done.is_set, "a sweep after both errors")
        supervisor.stop()

    outage, bug = [record for record in caplog.records if "sweeper" in record.getMessage()]
    assert outage.levelname == "WARNING"
    assert outage.exc_info is None
    assert outage.getMessage() == (
        "loop sweeper stopped: the database is out of reach "
        "(ConnectionError: server closed the connection); restarting it in 0s"
    )
    assert bug.levelname == "ERROR"
    assert bug.exc_info is not None
    assert supervisor.status()[0]["restarts"] == 2


def test_a_passing_check_that_raises_counts_as_a_bug(caplog: pytest.LogCaptureFixture) -> None:
    failed = threading.Event()

    def sweep() -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("broken")

    def passing(_exc: BaseException) -> bool:
        raise OSError("cannot ask")

    supervisor = Supervisor(
        [Loop("sweeper", every(0.001, sweep))], backoff_s=0.001, passing=passing
    )
    with caplog.at_level("WARNING", logger="orchestrator.maintenance.supervisor"):
        supervisor.start()
        wait_for(lambda: supervisor.status()[0]["restarts"] == 1, "one restart")
        supervisor.stop()

    [record] = [record for record in caplog.records if "sweeper" in record.getMessage()]
    assert record.levelname == "ERROR"
    assert record.exc_info is not None
