"""The engine's passes run their starts and finalizations together (decision 0030):
every call's outcome comes back, in order, a failure included, at most PASS_WORKERS at a
time, on daemon threads."""

from __future__ import annotations

import sys
import threading
import time
from typing import Final

from orchestrator.engine.core import PASS_WORKERS, PassWorkers, _together

PASSES: Final = 30_000


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


def test_the_threads_serve_pass_after_pass_and_end_when_idle() -> None:
    workers = PassWorkers(size=2, idle_s=0.2)
    seen: set[threading.Thread] = set()
    lock = threading.Lock()
    pair = threading.Barrier(2, timeout=10)  # each call waits for one on the other thread

    def work(_number: int) -> None:
        with lock:
            seen.add(threading.current_thread())
        pair.wait()

    for _ in range(5):
        assert workers.run(work, [(n,) for n in range(6)]) == [None] * 6
    # Five passes of six calls, on the same two daemon threads.
    assert len(seen) == 2
    assert all(thread.daemon for thread in seen)

    deadline = time.monotonic() + 10
    while any(thread.is_alive() for thread in seen):
        assert time.monotonic() < deadline, "idle pass workers did not end"
        time.sleep(0.05)
    # Ended idle, started again by the next pass.
    seen.clear()
    assert workers.run(work, [(n,) for n in range(4)]) == [None] * 4
    assert len(seen) == 2


def test_a_thread_ending_idle_never_strands_a_pass() -> None:
    # Workers that end after almost no idle time, a pass every moment: a thread that
    # ends between a pass counting it and putting its calls would leave the pass
    # waiting for ever.
    workers = PassWorkers(size=1, idle_s=0.0002)
    passes = 0
    switch = sys.getswitchinterval()

    def many_passes() -> None:
        nonlocal passes
        for _ in range(PASSES):
            assert workers.run(lambda n: n, [(1,), (2,)]) == [1, 2]
            passes += 1

    sys.setswitchinterval(1e-6)
    try:
        runner = threading.Thread(target=many_passes, daemon=True)
        runner.start()
        runner.join(120)
    finally:
        sys.setswitchinterval(switch)
    assert not runner.is_alive(), f"a pass was stranded after {passes} passes"
    assert passes == PASSES


def test_a_call_raising_systemexit_is_an_outcome_not_a_lost_one() -> None:
    def work(number: int) -> int:
        if number == 1:
            raise SystemExit(3)
        return number

    outcomes = _together(work, [(0,), (1,), (2,)])
    assert outcomes[0] == 0
    assert outcomes[2] == 2
    assert isinstance(outcomes[1], RuntimeError)
    assert "SystemExit" in str(outcomes[1])
