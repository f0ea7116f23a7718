"""The engine's passes run their starts and finalizations together (decision 0030):
every call's outcome comes back, in order, a failure included, at most PASS_WORKERS at a
time, on daemon threads."""

from __future__ import annotations

import threading

from orchestrator.engine.core import PASS_WORKERS, _together


def test_every_outcome_comes_back_in_order_a_failure_among_them() -> None:
    def work(number: int) -> int:
        if number == 3:
            raise ValueError("three")
        return number * 10

    outcomes = _together(work, [(n,) for n in range(8)])
    assert [o if isinstance(o, int) else str(o) for o in outcomes] == [
        0,
        10,
        20,
        "three",
        40,
        50,
        60,
        70,
    ]


def test_no_more_than_pass_workers_run_at_once_on_daemon_threads() -> None:
    lock = threading.Lock()
    running = peak = 0
    daemons: list[bool] = []
    release = threading.Event()

    def work(_number: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            daemons.append(threading.current_thread().daemon)
            if running == PASS_WORKERS:
                release.set()
        release.wait(10)
        with lock:
            running -= 1

    assert _together(work, [(n,) for n in range(3 * PASS_WORKERS)]) == [None] * (3 * PASS_WORKERS)
    assert peak == PASS_WORKERS
    assert all(daemons)


def test_one_call_runs_in_the_callers_thread() -> None:
    ran_in: list[threading.Thread] = []
    assert _together(lambda: ran_in.append(threading.current_thread()), [()]) == [None]
    assert ran_in == [threading.current_thread()]
