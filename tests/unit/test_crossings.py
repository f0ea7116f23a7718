"""The crossing pool (``orchestrator.lifecycle.crossings``) with real threads and no database."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from orchestrator.lifecycle.crossings import CROSSING_THREAD_PREFIX, CrossingPool
from orchestrator.lifecycle.transitions import Crossing

WAIT_S = 30.0


class WorkerKiller(BaseException):
    """Something no crossing should raise: it ends the worker that runs it."""


def test_one_crossing_per_task_at_once_and_the_outcome_is_kept() -> None:
    pool = CrossingPool(2)
    release = threading.Event()

    def slow() -> Crossing:
        release.wait(WAIT_S)
        return Crossing.DONE

    first = pool.submit(7, slow)
    assert first is not None
    assert pool.submit(7, lambda: Crossing.DONE) is None  # task 7 is being crossed
    assert pool.in_flight(7)
    assert pool.busy_tasks() == {7}
    other = pool.submit(8, lambda: Crossing.DEFERRED)
    assert other is not None
    assert other.wait(WAIT_S) is Crossing.DEFERRED
    assert not pool.wait(0)  # task 7 is still in flight
    release.set()
    assert first.wait(WAIT_S) is Crossing.DONE
    assert pool.wait(WAIT_S)
    assert pool.pending() == 0
    assert pool.latest(7) is first
    assert all(name.startswith(f"{CROSSING_THREAD_PREFIX}-") for name in pool.workers())
    assert len(pool.workers()) == 2


def test_a_crossing_that_raises_is_logged_and_the_pool_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = CrossingPool(1)

    def broken() -> Crossing:
        raise RuntimeError("the forge is down")

    run = pool.submit(1, broken)
    assert run is not None
    assert run.wait(WAIT_S) is None
    assert isinstance(run.error, RuntimeError)
    assert "the crossing of task 1 failed" in caplog.text
    again = pool.submit(1, lambda: Crossing.DONE)  # not in flight any more
    assert again is not None
    assert again.wait(WAIT_S) is Crossing.DONE


def test_a_dead_worker_is_replaced_and_its_crossing_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Seen failing with ``supervise`` returning early: the pool's only worker stayed
    dead and the next crossing never ran."""
    pool = CrossingPool(1)

    def fatal() -> Crossing:
        raise WorkerKiller

    run = pool.submit(3, fatal)
    assert run is not None
    run.wait(WAIT_S)
    assert isinstance(run.error, WorkerKiller)
    assert not pool.in_flight(3)  # ended, even though its worker died
    dead = f"{CROSSING_THREAD_PREFIX}-1"
    for _ in range(1000):  # the worker thread ends right after it marked the run
        if not pool.workers():
            break
        threading.Event().wait(0.01)
    assert pool.workers() == []
    assert pool.supervise() == 1
    assert f"crossing worker {dead} died" in caplog.text
    assert pool.workers() == [f"{CROSSING_THREAD_PREFIX}-2"]
    after = pool.submit(3, lambda: Crossing.DONE)
    assert after is not None
    assert after.wait(WAIT_S) is Crossing.DONE
    assert pool.supervise() == 0


def test_crossings_of_one_repository_run_one_after_another_in_order() -> None:
    """Two crossings of one repository at once only defer each other (a merge waits
    while the repository's deploy runs) and the deferred one waited for the
    reconciler: `orch run` ended with the second task still in deploy."""
    pool = CrossingPool(4)
    release = threading.Event()
    order: list[str] = []
    running: set[str] = set()
    overlaps: list[set[str]] = []
    lock = threading.Lock()

    def crossing(name: str, wait: bool) -> Callable[[], Crossing]:
        def work() -> Crossing:
            with lock:
                running.add(name)
                overlaps.append(set(running))
                order.append(name)
            if wait:
                release.wait(WAIT_S)
            with lock:
                running.discard(name)
            return Crossing.DONE

        return work

    first = pool.submit(1, crossing("repo-a:1", True), key="repo-a")
    second = pool.submit(2, crossing("repo-a:2", False), key="repo-a")
    third = pool.submit(3, crossing("repo-a:3", False), key="repo-a")
    other = pool.submit(4, crossing("repo-b:4", False), key="repo-b")
    assert first is not None
    assert second is not None
    assert third is not None
    assert other is not None
    assert other.wait(WAIT_S) is Crossing.DONE  # another repository does not wait
    assert not second.ended.is_set()
    assert pool.busy_tasks() == {1, 2, 3}
    release.set()
    assert pool.wait(WAIT_S)
    assert [name for name in order if name.startswith("repo-a")] == [
        "repo-a:1",
        "repo-a:2",
        "repo-a:3",
    ]
    assert all(len({n for n in seen if n.startswith("repo-a")}) <= 1 for seen in overlaps)
    # The key is free again: a new crossing of repo-a starts at once.
    again = pool.submit(5, crossing("repo-a:5", False), key="repo-a")
    assert again is not None
    assert again.wait(WAIT_S) is Crossing.DONE
