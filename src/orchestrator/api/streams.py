"""Live streams over HTTP: ``GET /events`` and ``GET /tasks/{ref}/logs``.

Theory of operation
-------------------
Both are reads (a viewer token, or none with ``public_read``: the guard in front of
every route decides, see :mod:`orchestrator.api.guard`).

``GET /events`` is a Server-Sent Events stream of the task and job changes in the
events table (task-less audit events, such as token management, are not sent). Each
message is ``id: <event id>`` and ``data: <the event as JSON>`` (its ``created_at`` in
ISO 8601 UTC, as everywhere in the API). A client resumes with
``Last-Event-ID`` (browsers send it when they reconnect) or ``?after=ID``; without
either the stream starts at the newest event. ``?task=REF`` keeps one task's events.

The stream polls the store every :data:`EVENTS_POLL_S` with one short read in a worker
thread: no connection or transaction is held between polls. Ids are handed out before
a transaction commits, so on PostgreSQL a later id can be visible before an earlier
one: :func:`releasable` holds the events behind such a gap back for
:data:`EVENT_GAP_GRACE_S` (then the gap is taken for a rolled-back insert), so that a
client resuming from the id it last saw misses nothing that was committed late.

``GET /tasks/{ref}/logs`` is the log of the task's last run, or of ``?run=ID`` (a run of
that task; any other is a 404), as plain text: the last
:data:`~orchestrator.api.run_logs.LOG_READ_MAX_BYTES` at most, the last ``?tail=N`` lines
if asked, masked (:func:`orchestrator.api.run_logs.masked_log`).
With ``?follow=1`` it is an SSE stream: the log so far, then each batch of new lines as
it is written (a message's ``data`` is one or more whole lines, without the last
newline; only the last message may end in an unfinished line), then ``event: end``
with the run's exit code when the run is over.

A comment line (``: keep-alive``) goes out every :data:`HEARTBEAT_S` so that proxies
keep an idle stream open. A stream ends when its client hangs up (Starlette cancels
it) or when the server shuts down: :meth:`StreamHub.close` (``orch serve`` calls it
before uvicorn waits for open connections) wakes every stream, which ends at once, so
SIGTERM is not held up for ``http_graceful_shutdown_s`` by a browser tab.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated, Final

from fastapi import APIRouter, Header, Query
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from orchestrator.api.format import with_iso_times
from orchestrator.api.run_logs import LogFollower, masked_log, read_log, run_ended
from orchestrator.errors import NotFoundError, TooManyRequestsError, UsageError
from orchestrator.settings import Settings
from orchestrator.store import AgentRun, Event, Store, Task
from orchestrator.text_input import check_path

__all__ = [
    "EVENTS_POLL_S",
    "EVENT_GAP_GRACE_S",
    "HEARTBEAT_S",
    "LOG_POLL_S",
    "MAX_TAIL_LINES",
    "StreamHub",
    "parse_last_event_id",
    "releasable",
    "sse_message",
    "streams_router",
]

EVENTS_POLL_S: Final = 1.0
LOG_POLL_S: Final = 0.5
HEARTBEAT_S: Final = 15.0
# How long events behind a gap in the ids wait for the gap to be committed.
EVENT_GAP_GRACE_S: Final = 3.0
EVENT_BATCH: Final = 500
MAX_TAIL_LINES: Final = 100_000
# Ids are database integers: anything longer is not one of ours.
MAX_EVENT_ID_DIGITS: Final = 18
# How long a browser waits before it reconnects a dropped stream.
RECONNECT_MS: Final = 3000
SSE_MEDIA_TYPE: Final = "text/event-stream"
SSE_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class StreamHub:
    """The open streams of one app, so that shutdown can end them all at once.

    Thread-safe: :meth:`close` may be called from any thread or event loop.
    """

    def __init__(self, max_streams: int = 32) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.closed = False
        self.max_streams = max_streams

    def check_room(self) -> None:
        """Raise :class:`TooManyRequestsError` when ``max_streams`` are open already (a
        soft cap: checked before a stream starts, so a burst may pass it by a few)."""
        if self.open_streams() >= self.max_streams:
            raise TooManyRequestsError(
                f"{self.max_streams} live streams are open (http_max_streams); "
                "close one or try again later"
            )

    def subscribe(self) -> asyncio.Event:
        """An event set when the server shuts down (already set if it has)."""
        event = asyncio.Event()
        with self._lock:
            if self.closed:
                event.set()
            self._waiters.add((asyncio.get_running_loop(), event))
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        with self._lock:
            self._waiters = {pair for pair in self._waiters if pair[1] is not event}

    def open_streams(self) -> int:
        with self._lock:
            return len(self._waiters)

    def close(self) -> None:
        """End every open stream; streams opened later end at once."""
        with self._lock:
            self.closed = True
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed already
                loop.call_soon_threadsafe(event.set)


def releasable(
    last_id: int, events: Sequence[Event], now: float, grace_s: float = EVENT_GAP_GRACE_S
) -> tuple[list[Event], int]:
    """The events (oldest first, all after ``last_id``) that can be sent now, and the
    new last id.

    An event right after the last one goes. Behind a gap in the ids it goes only when
    it was written ``grace_s`` ago or more: the missing ids were then rolled back (or
    removed by retention), not committed late. Pure.
    """
    ready: list[Event] = []
    expected = last_id + 1
    for event in events:
        if event.id < expected:
            continue
        if event.id > expected and now - event.created_at < grace_s:
            break
        ready.append(event)
        expected = event.id + 1
    return ready, expected - 1


def sse_message(data: str, *, event_id: str | None = None, event: str | None = None) -> str:
    """One SSE message; ``data`` may hold newlines (each line becomes a ``data:`` line)."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    # A lone CR ends a line in SSE too: make every line end one kind.
    text = data.replace("\r\n", "\n").replace("\r", "\n")
    lines.extend(f"data: {line}" for line in text.split("\n"))
    return "\n".join(lines) + "\n\n"


KEEP_ALIVE: Final = ": keep-alive\n\n"


def parse_last_event_id(value: str | None) -> int | None:
    """The ``Last-Event-ID`` header as an event id; None when absent or empty."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > MAX_EVENT_ID_DIGITS:
        raise UsageError(
            f"Last-Event-ID {text[:40]!r} is not an event id (a whole number from this stream)"
        )
    return int(text)


def _event_json(event: Event) -> str:
    # Moments in ISO 8601 UTC, as everywhere in the API (api_format).
    return json.dumps(with_iso_times(event.to_dict()), separators=(",", ":"), default=str)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def streams_router(store: Store, settings: Settings, hub: StreamHub) -> APIRouter:
    """The routes of the module docstring, over ``store``; ``hub`` ends them at shutdown."""
    router = APIRouter()

    def find(ref: str, repo: str | None) -> Task:
        repository = str(check_path(repo, "repo").resolve()) if repo is not None else None
        return store.find_task(ref, repository)

    @router.get(
        "/events",
        summary="Server-Sent Events: task and job changes (resume with Last-Event-ID)",
        response_class=StreamingResponse,
        response_model=None,
    )
    async def events_stream(
        task: Annotated[str | None, Query(description="Only this task's events")] = None,
        repo: Annotated[str | None, Query(description="Repository path, if ids clash")] = None,
        after: Annotated[
            int | None, Query(ge=0, le=10**MAX_EVENT_ID_DIGITS, description="Start after this id")
        ] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        hub.check_room()
        resume = parse_last_event_id(last_event_id)
        task_id = (await run_in_threadpool(find, task, repo)).id if task is not None else None
        if resume is not None:
            start = resume
        elif after is not None:
            start = after
        else:
            start = await run_in_threadpool(store.newest_event_id)

        async def stream() -> AsyncIterator[str]:
            stop = hub.subscribe()
            try:
                yield f"retry: {RECONNECT_MS}\n\n"
                last_id = start
                quiet_since = time.monotonic()
                while not stop.is_set():
                    fetched = await run_in_threadpool(store.events_after, last_id, EVENT_BATCH)
                    ready, last_id = releasable(last_id, fetched, time.time())
                    for event in ready:
                        if event.task_id is None or (
                            task_id is not None and event.task_id != task_id
                        ):
                            continue
                        yield sse_message(_event_json(event), event_id=str(event.id))
                        quiet_since = time.monotonic()
                    if len(fetched) == EVENT_BATCH and len(ready) == len(fetched):
                        continue  # more are waiting
                    if time.monotonic() - quiet_since >= HEARTBEAT_S:
                        yield KEEP_ALIVE
                        quiet_since = time.monotonic()
                    await _wait(stop, EVENTS_POLL_S)
            finally:
                hub.unsubscribe(stop)

        return StreamingResponse(stream(), media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)

    def choose_run(ref: str, repo: str | None, run_id: int | None) -> tuple[Task, AgentRun]:
        task = find(ref, repo)
        runs = store.task_runs(task.id)
        if run_id is not None:
            for run in runs:
                if run.id == run_id:
                    return task, run
            raise NotFoundError(
                f"{task.work_item} has no run {run_id}; GET /tasks/{ref} lists them"
            )
        if not runs:
            raise NotFoundError(f"{task.work_item} has no runs yet")
        return task, runs[-1]

    @router.get(
        "/tasks/{ref}/logs",
        summary="The log of a task's last run, or of ?run=ID (?follow=1: SSE as it is written)",
        response_class=PlainTextResponse,
        response_model=None,
    )
    async def task_log(
        ref: str,
        repo: Annotated[str | None, Query(description="Repository path, if ids clash")] = None,
        run: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="A run id")] = None,
        tail: Annotated[
            int | None, Query(ge=0, le=MAX_TAIL_LINES, description="Only the last N lines")
        ] = None,
        follow: Annotated[bool, Query(description="Stream as SSE until the run ends")] = False,
    ) -> PlainTextResponse | StreamingResponse:
        if follow:
            hub.check_room()
        _task, chosen = await run_in_threadpool(choose_run, ref, repo, run)
        path = Path(chosen.log_path)
        secrets = settings.log_mask_values
        headers = {"X-Orch-Run-Id": str(chosen.id)}
        if not follow:
            part = await run_in_threadpool(read_log, path, lines=tail)
            return PlainTextResponse(masked_log(part.text, secrets), headers=headers)
        # Read before the stream starts: a log that cannot be shown is a 404, not a
        # stream that ends at once.
        first = await run_in_threadpool(read_log, path, lines=tail, whole_lines=True)

        async def stream() -> AsyncIterator[str]:
            stop = hub.subscribe()
            follower = LogFollower(path, first.end)
            try:
                yield f"retry: {RECONNECT_MS}\n\n"
                if first.text:
                    yield sse_message(masked_log(first.text, secrets).removesuffix("\n"))
                quiet_since = time.monotonic()
                while not stop.is_set():
                    ended = await run_in_threadpool(run_ended, store, chosen)
                    # Read after the check: a run that ended wrote all it will write.
                    while text := await run_in_threadpool(follower.read_new, final=ended):
                        yield sse_message(masked_log(text, secrets).removesuffix("\n"))
                        quiet_since = time.monotonic()
                    if ended:
                        final = await run_in_threadpool(store.agent_run, chosen.id)
                        code = final.exit_code if final is not None else None
                        yield sse_message(json.dumps({"exit_code": code}), event="end")
                        return
                    if time.monotonic() - quiet_since >= HEARTBEAT_S:
                        yield KEEP_ALIVE
                        quiet_since = time.monotonic()
                    await _wait(stop, LOG_POLL_S)
            finally:
                hub.unsubscribe(stop)

        return StreamingResponse(
            stream(), media_type=SSE_MEDIA_TYPE, headers={**SSE_HEADERS, **headers}
        )

    return router
