"""``orch serve``: the engine loop and the HTTP API in one supervised process.

Theory of operation
-------------------
The API (uvicorn) runs in the main thread, so uvicorn owns SIGTERM and SIGINT. The
engine loop runs in a background thread named ``engine``, started only once the server
listens (a port already in use must not leave jobs started behind it).

* SIGTERM / SIGINT: uvicorn finishes its requests (for ``http_graceful_shutdown_s`` at
  most: a client that stalled mid-request is then cut off) and returns; then the stop event is
  set, the engine thread joined, and :meth:`Engine.shutdown` called. Running agents are
  left running and stay recorded; the next start adopts or reaps them. Exit code 0.
* Open live streams (``GET /events``, a followed log) end as soon as shutdown begins
  (:class:`~orchestrator.api.streams.StreamHub`), so they never hold SIGTERM up.
* The database goes out of reach (its server restarts, a connection is lost): the
  engine loop waits for it and goes on, ``waiting for the database`` in ``/status``
  meanwhile (:meth:`~orchestrator.engine.core.Engine.run`).
* The engine thread dies with any other exception: the supervisor logs it and tells
  uvicorn to exit; exit code 1, so a process manager restarts the service.
* The server cannot start (port in use): exit code 1, the engine never started.
* The maintenance services run as named loops under one
  :class:`~orchestrator.maintenance.supervisor.Supervisor` (threads ``orch-<name>``): the reaper,
  the reconciler and the worktree janitor (no longer inside the engine's tick), the
  inbox (``orch-inbox``: applies the intents webhooks recorded — cancel, rollback, a
  merged pull request's ``deploy -> done`` — when the transition lease allows), the
  instance heartbeat, and outbox delivery (``orch-outbox``, when a channel such as
  Telegram is configured). A loop that dies is logged, restarted with a backoff and
  shown with its restarts and last error under ``loops`` in ``GET /status``; what the
  outbox had not delivered, or an intent the inbox had claimed, is picked up again.
* Several instances on one PostgreSQL database: the reaper, the reconciler, the
  janitor, the rescuer (the engine adopts or finishes the running jobs of instances
  that died), the inbox and outbox delivery run on the elected leader only (the ``leader``
  loop holds an advisory lock; the others show ``standby``); every instance dispatches
  and watches its own jobs. SQLite has one instance, which leads
  (:mod:`orchestrator.maintenance.leadership`). On PostgreSQL every instance also runs
  ``wakeups``: a job enqueued anywhere wakes its idle engine (LISTEN/NOTIFY,
  :mod:`orchestrator.engine.wakeups`), which then polls only every second.

uvicorn re-raises a signal it handled once it returns (so a default handler would end
the process by that signal); :func:`run_server` holds its own handlers around the server
for that reason, and restores the previous ones before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Final

import uvicorn

from orchestrator.api.server import create_app
from orchestrator.effects.leases import Heartbeat
from orchestrator.engine.core import Engine
from orchestrator.engine.wakeups import JobWakeups
from orchestrator.lifecycle.service import TaskService
from orchestrator.maintenance.leadership import Leadership
from orchestrator.maintenance.services import (
    MAINTENANCE_IDLE_INTERVAL_S,
    MAINTENANCE_INTERVAL_S,
)
from orchestrator.maintenance.supervisor import Loop, Supervisor, every
from orchestrator.outbox.delivery import OutboxDelivery
from orchestrator.outbox.notifier import Notifier, NullNotifier
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.webhooks.inbox import InboxApplier
from orchestrator.workspace.gc import LEFTOVER_SWEEP_INTERVAL_S, LeftoverSweeper

__all__ = ["ENGINE_JOIN_TIMEOUT_S", "EXIT_FAILURE", "EXIT_OK", "run_server"]

log = logging.getLogger("orchestrator.api.serve")

# How long shutdown waits for the engine's current tick to finish.
ENGINE_JOIN_TIMEOUT_S: Final = 30.0
EXIT_OK: Final = 0
# The engine loop died or the server could not start (uvicorn's own code would be 3).
EXIT_FAILURE: Final = 1
ENGINE_THREAD_NAME: Final = "engine"
SHUTDOWN_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
# uvicorn's main loop: how often it wakes when nothing asks it to exit, and how many of
# its 0.1 s ticks that counts for (it refreshes the Date header every tenth).
MAIN_LOOP_WAKE_S: Final = 1.0
MAIN_LOOP_TICKS_PER_WAKE: Final = 10


class _Server(uvicorn.Server):
    """A uvicorn server that calls ``on_started`` once it listens, and ``on_stopping``
    when it starts shutting down (before it waits for open connections).

    uvicorn's main loop wakes every 0.1 s to look at ``should_exit`` (and refreshes the
    Date header every tenth time): idle, that was most of what ``orch serve`` spent
    (issue 12). Here it wakes once a second, and at once when ``should_exit`` is set
    (by a signal, or by the supervisor from another thread)."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_started: Callable[[], None],
        on_stopping: Callable[[], None] = lambda: None,
    ) -> None:
        self._exit_asked: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._should_exit = False
        super().__init__(config)
        self._on_started = on_started
        self._on_stopping = on_stopping

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        if value and self._loop is not None and self._exit_asked is not None:
            self._loop.call_soon_threadsafe(self._exit_asked.set)

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._exit_asked = asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + MAIN_LOOP_TICKS_PER_WAKE) % 864000  # the Date header's count
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_asked.wait(), MAIN_LOOP_WAKE_S)
            should_exit = await self.on_tick(counter)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self._on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Open SSE streams end now; uvicorn would otherwise wait for them until
        # http_graceful_shutdown_s and then cut them off.
        self._on_stopping()
        await super().shutdown(sockets)


@contextmanager
def _shutdown_signals(server: uvicorn.Server) -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM handlers that ask ``server`` to exit; yields those received.

    uvicorn installs its own while it serves; these catch a signal that comes before
    it starts or that it re-raises when it returns.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # signals can only be handled in the main thread
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        server.should_exit = True

    previous = {sig: signal.signal(sig, handle) for sig in SHUTDOWN_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_server(
    settings: Settings,
    store: Store,
    *,
    notifier: Notifier | None = None,
    engine: Engine | None = None,
    delivery: OutboxDelivery | None = None,
    leadership: Leadership | None = None,
) -> int:
    """Serve the API on ``settings.host:settings.port`` with the engine running beside it.

    Blocks until SIGTERM/SIGINT (returns 0) or until the engine loop dies or the server
    cannot start (returns 1). ``engine`` is for tests and embedding; by default one is
    built from ``store``, ``settings`` and ``notifier``. ``delivery`` (if any) delivers
    the outbox in its own supervised thread. ``leadership`` decides whether this
    instance runs the maintenance that must run once (default: elected by an advisory
    lock on PostgreSQL, always on SQLite).
    """
    notifier = notifier or NullNotifier()
    engine = engine or Engine(store, settings, notifier)
    # The supervisor runs the maintenance services; the engine's tick only dispatches
    # and watches.
    engine.inline_maintenance = False
    service = TaskService(store, settings, notifier)
    inbox = InboxApplier(service, engine.runtime)
    heartbeat = Heartbeat(store, engine.runtime.owner)
    leadership = leadership or Leadership.for_store(store, engine.boot_id)
    # What must run once per database runs on the leader only (decision 0027).
    led = [
        *engine.services.loops(),
        # Dead instances' running jobs: adopted or finished by the leader's engine.
        Loop(
            "rescuer",
            every(
                MAINTENANCE_INTERVAL_S,
                engine.request_rescue,
                activity=store.activity,
                idle_interval_s=MAINTENANCE_IDLE_INTERVAL_S,
            ),
            wake=store.activity.touch,
        ),
        Loop("inbox", inbox.run, wake=inbox.wake),
    ]
    if delivery is not None:
        led.append(Loop("outbox", delivery.run, wake=delivery.wake))
    loops = [Loop("heartbeat", heartbeat.run), *map(leadership.led_loop, led)]
    if any(config.remote for config in settings.repos.values()):
        # Hosts that share no disk: each removes its own copies of worktrees whose task
        # ended elsewhere (decision 0031), whoever leads.
        sweeper = LeftoverSweeper(store, settings)
        loops.append(Loop("worktree-leftovers", every(LEFTOVER_SWEEP_INTERVAL_S, sweeper.sweep)))
    if leadership.elected:
        loops.insert(0, Loop("leader", leadership.run))
        # PostgreSQL: a job enqueued on any instance wakes this engine (LISTEN/NOTIFY).
        loops.append(Loop("wakeups", JobWakeups(store, engine).run))
    supervisor = Supervisor(loops, passing=store.is_outage)
    stop = threading.Event()

    def loop_states() -> list[dict[str, Any]]:
        state = "running" if thread.is_alive() else "stopped"
        entry: dict[str, Any] = {"name": ENGINE_THREAD_NAME, "state": state}
        if engine.database_outage is not None and thread.is_alive():
            # Alive, waiting for the database to answer again.
            entry.update(state="waiting for the database", last_error=engine.database_outage)
        return [entry, *supervisor.status()]

    app = create_app(
        store=store,
        settings=settings,
        service=service,
        engine=engine,
        on_intent=inbox.wake,
        loops=loop_states,
        leader=leadership.status,
    )
    engine_failure: list[BaseException] = []
    database = store.engine.url.set(password=None).render_as_string(hide_password=False)
    address = f"http://{settings.host}:{settings.port}"

    def engine_loop() -> None:
        try:
            # Adopt or requeue the jobs of an earlier run, reclaim its stale leases.
            engine.recover_on_startup()
            engine.run(stop)
        except BaseException as exc:
            log.exception("the engine loop died; stopping the server")
            engine_failure.append(exc)
            server.should_exit = True

    thread = threading.Thread(target=engine_loop, name=ENGINE_THREAD_NAME, daemon=True)

    def on_started() -> None:
        print(f"orch serve: listening on {address} (database: {database})", flush=True)
        heartbeat.register()
        thread.start()
        supervisor.start()

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        http="h11",  # the limits below are h11's; never a parser picked by what is installed
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
        timeout_keep_alive=settings.http_keep_alive_s,
        limit_concurrency=settings.http_limit_concurrency,
        # A client stalled mid-request must not hold SIGTERM up for ever.
        timeout_graceful_shutdown=settings.http_graceful_shutdown_s,
    )
    server = _Server(config, on_started, on_stopping=app.state.streams.close)
    exit_code = EXIT_OK
    with _shutdown_signals(server) as received:
        try:
            server.run()
        except SystemExit:
            # uvicorn exits this way when it cannot bind or its startup fails.
            print(f"orch serve: cannot serve on {address}; see the error above", file=sys.stderr)
            exit_code = EXIT_FAILURE
        finally:
            stop.set()
            engine.wake()  # an idle wait ends now
            if thread.is_alive():
                thread.join(ENGINE_JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.warning(
                    "the engine thread did not stop within %ss; leaving it", ENGINE_JOIN_TIMEOUT_S
                )
            else:
                engine.shutdown()
            supervisor.stop(ENGINE_JOIN_TIMEOUT_S)
            if delivery is not None:
                delivery.close()
            heartbeat.stopped()
    if received:
        log.info("stopped by signal %s", ", ".join(signal.Signals(s).name for s in received))
    if engine_failure:
        return EXIT_FAILURE
    return exit_code
