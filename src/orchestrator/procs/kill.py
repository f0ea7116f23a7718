"""The one tree-kill: SIGTERM, one grace period, SIGKILL, until nothing of the tree lives.

What a kill reaches is named by the caller, in two ways that may be combined:

* ``group``: every process of a process group (a job, a runner's command, a deploy:
  each starts in a session of its own, see :mod:`orchestrator.procs.spawn`);
* ``root``: every descendant of a process, found through the parent links in ``/proc``,
  also one that left the group with ``setsid`` or a double fork. The launcher is its
  job's child subreaper (see :mod:`orchestrator.procs.launcher`), so whatever the job
  detached stays its descendant while it lives.

``spare`` leaves processes alone (the launcher and the hooks wrapper stop the processes
of their own group but not themselves).

A kill has two phases, also callable on their own (the engine never waits a grace out:
it calls :func:`terminate` and, at the deadline on its heap, :func:`force_kill`):

1. :func:`terminate`: SIGTERM to everything found;
2. up to ``grace_s`` (:data:`KILL_GRACE_S` unless the caller passes the setting
   ``kill_grace_s``) for it to end; a process started meanwhile gets its SIGTERM too;
3. :func:`force_kill`: what is left is frozen (SIGSTOP, so it forks no more and a
   subreaper root stays the parent of the orphans), then SIGKILLed, the root last, sweep
   after sweep until nothing is found.

Standard library only (the launcher and the hooks wrapper import it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Collection
from typing import Final

from orchestrator.procs.proc import ProcStat, descendants, process_table

__all__ = ["KILL_GRACE_S", "force_kill", "kill_tree", "living", "terminate"]

# The one grace period between a SIGTERM and the SIGKILL of what is left, in seconds:
# the default of the ``kill_grace_s`` setting and of every tree-kill.
KILL_GRACE_S: Final = 3.0
# How often a kill looks again whether anything is left.
POLL_S: Final = 0.02
# SIGKILL sweeps before giving up on a tree that keeps changing (a fork bomb).
MAX_KILL_SWEEPS: Final = 200
KILL_SWEEP_PAUSE_S: Final = 0.01

Reap = Callable[[], object]


def _found(group: int | None, root: int | None, spare: Collection[int]) -> dict[int, ProcStat]:
    if root is None and group is not None:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return {}  # the cheap answer, without reading /proc
        except PermissionError:
            pass
    table = process_table()
    found: dict[int, ProcStat] = {}
    if group is not None:
        found.update((pid, stat) for pid, stat in table.items() if stat.pgrp == group)
    if root is not None:
        found.update(descendants(root, table))
        if root in table:
            found[root] = table[root]
    # Never ourselves: a SIGSTOP would freeze the kill itself.
    for pid in (*spare, os.getpid()):
        found.pop(pid, None)
    return {pid: stat for pid, stat in found.items() if stat.living}


def living(
    *, group: int | None = None, root: int | None = None, spare: Collection[int] = ()
) -> list[int]:
    """The living processes a kill of ``group`` / under ``root`` reaches, ``spare`` left out."""
    return sorted(_found(group, root, spare))


def _signal(pids: Collection[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def terminate(
    *, group: int | None = None, root: int | None = None, spare: Collection[int] = ()
) -> list[int]:
    """SIGTERM everything the kill reaches, without waiting; the pids found."""
    found = _found(group, root, spare)
    if not found:
        return []
    if group is not None and not spare:
        # The whole group at once (a member that forked since we looked too), and one
        # by one what left it.
        _signal_group(group, signal.SIGTERM)
        _signal([pid for pid, stat in found.items() if stat.pgrp != group], signal.SIGTERM)
    else:
        _signal(found, signal.SIGTERM)
    return sorted(found)


def force_kill(
    *,
    group: int | None = None,
    root: int | None = None,
    spare: Collection[int] = (),
    reap: Reap | None = None,
) -> bool:
    """SIGSTOP, then SIGKILL everything the kill reaches, the root last, until nothing is
    left (or :data:`MAX_KILL_SWEEPS`); whether anything was found. ``reap`` collects our
    own exited children between sweeps (an unreaped child is a zombie, not living)."""
    found_any = False
    for _ in range(MAX_KILL_SWEEPS):
        if reap is not None:
            reap()
        found = living(group=group, root=root, spare=spare)
        if not found:
            break
        found_any = True
        # Frozen, nothing forks and the root stays the parent of what we kill under it.
        _signal(found, signal.SIGSTOP)
        others = [pid for pid in found if pid != root]
        _signal(others or found, signal.SIGKILL)
        time.sleep(KILL_SWEEP_PAUSE_S)
    if group is not None and not spare:
        _signal_group(group, signal.SIGKILL)  # a member /proc did not show us yet
    return found_any


def kill_tree(
    *,
    group: int | None = None,
    root: int | None = None,
    grace_s: float = KILL_GRACE_S,
    spare: Collection[int] = (),
    reap: Reap | None = None,
) -> bool:
    """SIGTERM, wait up to ``grace_s`` for the tree to end, SIGKILL what is left.

    Returns as soon as nothing is left (never waits a grace out for nothing); whether
    anything was found running. ``reap`` collects our own exited children meanwhile: an
    unreaped zombie is not counted, but reaping it lets its pid go.
    """
    termed = set(terminate(group=group, root=root, spare=spare))
    if not termed:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        left = living(group=group, root=root, spare=spare)
        if not left:
            return True
        # Started meanwhile: they get their SIGTERM too.
        _signal([pid for pid in left if pid not in termed], signal.SIGTERM)
        termed.update(left)
        time.sleep(POLL_S)
    force_kill(group=group, root=root, spare=spare, reap=reap)
    return True
