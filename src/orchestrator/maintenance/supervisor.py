"""The supervisor: named background loops, restarted when they die, shown in /status.

Theory of operation
-------------------
``orch serve`` runs its maintenance services (the reaper, the reconciler, the worktree
janitor, outbox delivery, the webhook inbox, the instance heartbeat) as :class:`Loop`\\ s
under one :class:`Supervisor`. Each loop is a named daemon thread (``orch-<name>``) that
runs its body until the stop event is set:

* a periodic service is :func:`every` ``interval_s``: one sweep, then a wait;
* a sweep that raises ends that incarnation of the loop: the exception is logged,
  counted and kept as the loop's ``last_error``, and the loop is started again after a
  backoff that doubles from ``RESTART_BACKOFF_S`` up to ``MAX_RESTART_BACKOFF_S`` (and
  resets once an incarnation has lived ``HEALTHY_AFTER_S``), so a database outage does
  not spin and a bug does not go unnoticed;
* :meth:`Supervisor.status` is what ``GET /status`` shows under ``loops``: each loop's
  state (``running``, ``standby`` for a led loop on an instance that does not lead,
  ``restarting``, ``stopped``), restarts and last error.

The services depend on the store, the runtime and the :class:`~orchestrator.lifecycle.finalizer.
Finalizer` only, never on the engine; the engine's dispatch loop is not one of them (its
death stops ``orch serve``, see :mod:`orchestrator.api.serve`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from orchestrator.store.activity import Activity


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


__all__ = [
    "MAX_RESTART_BACKOFF_S",
    "RESTART_BACKOFF_S",
    "Loop",
    "Supervisor",
    "every",
]

log = logging.getLogger("orchestrator.maintenance.supervisor")

RESTART_BACKOFF_S: Final = 1.0
MAX_RESTART_BACKOFF_S: Final = 60.0
# An incarnation that lived this long was healthy: the next restart waits the minimum.
HEALTHY_AFTER_S: Final = 60.0
STOP_JOIN_TIMEOUT_S: Final = 30.0

Body = Callable[[threading.Event], None]


def every(
    interval_s: float,
    sweep: Callable[[], object],
    *,
    activity: Activity | None = None,
    idle_interval_s: float | None = None,
) -> Body:
    """A loop body that runs ``sweep`` now and then every ``interval_s`` until stopped.

    With an ``activity`` (the store's pulse), once no work has moved for
    ``QUIET_AFTER_S`` the loop sweeps only every ``idle_interval_s`` and sweeps at once
    when work moves again: idle, it asks the database almost nothing. Give such a loop
    ``wake=activity.touch`` so that stopping it does not wait out the long interval.
    """
    if activity is None or idle_interval_s is None:

        def body(stop: threading.Event) -> None:
            while not stop.is_set():
                sweep()
                stop.wait(interval_s)

        return body
    pulse = activity
    idle_s = idle_interval_s

    def paced(stop: threading.Event) -> None:
        while not stop.is_set():
            generation = pulse.generation
            sweep()
            pulse.rest(
                generation, busy_wait=stop.wait, interval_s=interval_s, idle_interval_s=idle_s
            )

    return paced


@dataclass(frozen=True)
class Loop:
    """A named background loop: ``body(stop)`` runs until ``stop`` is set; raising means
    the loop died. ``wake`` (optional) is called at shutdown to end a wait early.
    ``active`` (optional) says whether the loop works now: a led loop on an instance
    that does not lead is shown ``standby``."""

    name: str
    body: Body
    wake: Callable[[], None] | None = None
    active: Callable[[], bool] | None = None


@dataclass
class _State:
    loop: Loop
    thread: threading.Thread | None = None
    state: str = "stopped"
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    started_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Supervisor:
    """Runs loops in named threads, restarts the ones that die, reports their states."""

    def __init__(
        self,
        loops: Iterable[Loop],
        *,
        backoff_s: float = RESTART_BACKOFF_S,
        max_backoff_s: float = MAX_RESTART_BACKOFF_S,
        healthy_after_s: float = HEALTHY_AFTER_S,
        passing: Callable[[BaseException], bool] = lambda _exc: False,
    ) -> None:
        """``passing``: whether an error is a condition expected to pass by itself (the
        store's ``is_outage``): it is logged as one line, without a traceback."""
        self._passing = passing
        self._states = [_State(loop) for loop in loops]
        names = [state.loop.name for state in self._states]
        if len(set(names)) != len(names):
            raise ValueError(f"loop names must be unique: {names}")
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._healthy_after_s = healthy_after_s
        self._stop = threading.Event()

    def start(self) -> None:
        """Start every loop in its own thread ``orch-<name>``."""
        for state in self._states:
            name = f"orch-{state.loop.name}"
            thread = threading.Thread(
                target=self._keep_running, args=(state,), name=name, daemon=True
            )
            state.thread = thread
            thread.start()

    def stop(self, timeout_s: float = STOP_JOIN_TIMEOUT_S) -> None:
        """Ask every loop to stop and wait for each up to ``timeout_s``."""
        self._stop.set()
        for state in self._states:
            if state.loop.wake is not None:
                state.loop.wake()
        deadline = time.monotonic() + timeout_s
        for state in self._states:
            if state.thread is not None and state.thread.is_alive():
                state.thread.join(max(0.0, deadline - time.monotonic()))
                if state.thread.is_alive():
                    log.warning("loop %s did not stop within %ss", state.loop.name, timeout_s)

    def status(self) -> list[dict[str, Any]]:
        """Each loop's name, state, restarts and last error (for ``GET /status``)."""
        rows = []
        for state in self._states:
            with state.lock:
                alive = state.thread is not None and state.thread.is_alive()
                shown = state.state if alive else "stopped"
                if shown == "running" and state.loop.active is not None:
                    shown = "running" if state.loop.active() else "standby"
                rows.append(
                    {
                        "name": state.loop.name,
                        "state": shown,
                        "restarts": state.restarts,
                        "last_error": state.last_error,
                        "last_error_at": state.last_error_at,
                    }
                )
        return rows

    def _is_passing(self, exc: Exception) -> bool:
        try:
            return self._passing(exc)
        except Exception:  # asking must not kill the loop's restarts
            return False

    def _keep_running(self, state: _State) -> None:
        backoff = self._backoff_s
        while not self._stop.is_set():
            began = time.monotonic()
            with state.lock:
                state.state = "running"
                state.started_at = time.time()
            try:
                state.loop.body(self._stop)
            except Exception as exc:
                lived = time.monotonic() - began
                if lived >= self._healthy_after_s:
                    backoff = self._backoff_s
                if self._is_passing(exc):
                    log.warning(
                        "loop %s stopped: the database is out of reach (%s); "
                        "restarting it in %.0fs",
                        state.loop.name,
                        _first_line(exc),
                        backoff,
                    )
                else:
                    log.exception("loop %s died; restarting it in %.0fs", state.loop.name, backoff)
                with state.lock:
                    state.state = "restarting"
                    state.restarts += 1
                    state.last_error = f"{type(exc).__name__}: {exc}"[:500]
                    state.last_error_at = time.time()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            return  # the body returned: it was stopped
        with state.lock:
            state.state = "stopped"
