"""The one ``/proc`` reader: who a process is, what state it is in, whose it is.

``/proc/<pid>/stat`` is ``pid (comm) state ppid pgrp session ... starttime ...``; the
command name ``comm`` is chosen by the process and may hold spaces and parentheses
(``1234 (a) b) (c) S 1 ...``), so the line is split at its **last** ``)``.

A zombie (``Z``, exited but not yet reaped) or a dead entry (``X``) is not *living*: an
orphaned grandchild waits for PID 1 to reap it, which in a container may take seconds or
never, and would otherwise keep a group "alive" for as long.

Linux only; where there is no ``/proc`` the readers find nothing (and the liveness
checks fall back to ``kill(pid, 0)``).
"""

from __future__ import annotations

import os
from typing import Final, NamedTuple

__all__ = [
    "NOT_LIVING",
    "ProcStat",
    "descendants",
    "group_alive",
    "group_members",
    "parse_stat",
    "pid_alive",
    "process_table",
    "read_stat",
    "start_ticks",
]

PROC: Final = "/proc"
# States of a process that has ended: a zombie, a dead entry.
NOT_LIVING: Final = frozenset({"Z", "X"})
# Index of ``starttime`` (field 22 of stat) among the fields after ``comm`` (which start
# at field 3, the state).
_START_TIME_INDEX: Final = 22 - 3


class ProcStat(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` we use (a named tuple, not a dataclass: the
    launcher imports this, and ``dataclasses`` would pull in ``inspect`` and ``ast``)."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    # When the process started, in clock ticks since boot: with the pid, it names one
    # process (a pid is reused, a pid and a start time are not).
    start_ticks: int

    @property
    def living(self) -> bool:
        return self.state not in NOT_LIVING


def parse_stat(text: str) -> ProcStat:
    """Parse one ``/proc/<pid>/stat`` line; ValueError if it is not one."""
    opening = text.find(" (")
    closing = text.rfind(")")
    if opening < 0 or closing < opening:
        raise ValueError(f"not a /proc stat line: {text[:80]!r}")
    fields = text[closing + 1 :].split()
    if len(fields) <= _START_TIME_INDEX:
        raise ValueError(f"a /proc stat line with {len(fields)} fields after comm")
    try:
        return ProcStat(
            pid=int(text[:opening]),
            comm=text[opening + 2 : closing],
            state=fields[0],
            ppid=int(fields[1]),
            pgrp=int(fields[2]),
            session=int(fields[3]),
            start_ticks=int(fields[_START_TIME_INDEX]),
        )
    except ValueError:
        raise ValueError(f"not a /proc stat line (a field is no number): {text[:80]!r}") from None


def read_stat(pid: int) -> ProcStat | None:
    """The stat of ``pid``; None if there is no such process (or no ``/proc``)."""
    try:
        with open(f"{PROC}/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            return parse_stat(handle.read())
    except (OSError, ValueError):
        return None


def process_table() -> dict[int, ProcStat]:
    """Every process in ``/proc``, by pid (those that exit while we look are left out)."""
    try:
        names = os.listdir(PROC)
    except OSError:
        return {}
    table: dict[int, ProcStat] = {}
    for name in names:
        if name.isdigit() and (stat := read_stat(int(name))) is not None:
            table[stat.pid] = stat
    return table


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None if unknown."""
    stat = read_stat(pid)
    return None if stat is None else stat.start_ticks


def pid_alive(pid: int | None) -> bool:
    """Whether ``pid`` is a living process (a zombie is not)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's, but it exists
    stat = read_stat(pid)
    return stat is None or stat.living


def group_members(pgid: int, table: dict[int, ProcStat] | None = None) -> list[int]:
    """The living processes of group ``pgid``."""
    table = process_table() if table is None else table
    return [pid for pid, stat in table.items() if stat.pgrp == pgid and stat.living]


def group_alive(pgid: int) -> bool:
    """Whether a living process of group ``pgid`` is left (zombies do not count).

    ``killpg(pgid, 0)`` answers first and cheaply when the group is gone; a zombie still
    answers it, so then ``/proc`` decides.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir(PROC):
        return True
    return bool(group_members(pgid))


def descendants(root: int, table: dict[int, ProcStat] | None = None) -> dict[int, ProcStat]:
    """Every process under ``root`` (children, theirs, ...; not ``root`` itself)."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat.ppid, []).append(pid)
    found: dict[int, ProcStat] = {}
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        if pid in found or pid == root:
            continue
        found[pid] = table[pid]
        stack.extend(children.get(pid, ()))
    return found
