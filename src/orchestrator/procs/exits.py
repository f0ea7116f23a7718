"""Exits pushed, not polled: a process's end wakes whoever waits for it.

The engine looks at its running jobs once per tick; between ticks it waits. Without a
push it would see a job's end only when its wait ran out (up to a tick later), so
every stage-job paid that wait. :class:`ExitWatch` holds a *pidfd* per watched process
(``pidfd_open``, Linux 5.3 and later), which becomes readable when the process ends,
and one thread waiting on all of them in ``epoll``: an end calls ``on_exit`` (the
engine's wake) at once. It works for processes that are not our children too (jobs
adopted after a restart).

Where pidfds are missing (another system, an old kernel, a sandbox that forbids
them) :meth:`ExitWatch.watch` returns False and nothing is pushed: the engine still
sees every end at its next tick, as before.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Final

__all__ = ["ExitWatch"]

log = logging.getLogger("orchestrator.procs.exits")

# pidfd_open failing so means this system has no pidfds for us; anything else (out of
# descriptors) is about this one process, and the next one is tried again.
NO_PIDFDS: Final = frozenset({errno.ENOSYS, errno.EPERM, errno.EINVAL})


class ExitWatch:
    """Calls ``on_exit()`` (from its own thread) whenever a watched process ends."""

    def __init__(self, on_exit: Callable[[], None]) -> None:
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._epoll: select.epoll | None = None
        self._fds: set[int] = set()
        self._stop_read, self._stop_write = -1, -1
        self._thread: threading.Thread | None = None
        self._usable = hasattr(os, "pidfd_open") and hasattr(select, "epoll")
        self._closed = False

    def watch(self, pid: int) -> bool:
        """Push ``pid``'s end; False when it cannot be (the caller keeps polling). A
        process that has already ended is announced at once."""
        if not self._usable or self._closed:
            return False
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._on_exit()  # gone already
            return True
        except OSError as exc:
            if exc.errno in NO_PIDFDS:
                log.info("exits are polled, not pushed: pidfd_open: %s", exc)
                self._usable = False
            return False
        with self._lock:
            if self._closed:
                os.close(fd)
                return False
            if self._epoll is None:
                self._start()
            assert self._epoll is not None
            self._fds.add(fd)
            self._epoll.register(fd, select.EPOLLIN)
        return True

    def close(self) -> None:
        """Stop the thread and close every descriptor; idempotent. Nothing is watched
        after it (:meth:`watch` returns False)."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
            if thread is None:
                return
            os.write(self._stop_write, b"x")
        thread.join()
        with self._lock:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()
            if self._epoll is not None:
                self._epoll.close()
                self._epoll = None
            os.close(self._stop_read)
            os.close(self._stop_write)

    def _start(self) -> None:
        self._epoll = select.epoll()
        self._stop_read, self._stop_write = os.pipe()
        self._epoll.register(self._stop_read, select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name="exit-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        epoll = self._epoll
        assert epoll is not None
        while True:
            ready = epoll.poll()
            ended = False
            with self._lock:
                for fd, _events in ready:
                    if fd == self._stop_read:
                        return
                    if fd in self._fds:
                        self._fds.discard(fd)
                        epoll.unregister(fd)
                        with contextlib.suppress(OSError):
                            os.close(fd)
                        ended = True
            if ended:
                self._on_exit()
