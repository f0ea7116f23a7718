"""The reconciler's reads: which tasks may need repair, without reading history.

A task may need the reconciler when it is *live* (in a job stage, not failed) and no job
of it is pending (queued, deferred, running or finalizing). Both conditions are checked
here, in SQL, so a sweep receives only such tasks, never the thousands that ended.

Which tasks a sweep looks at is the union of three cheap sets of ids:

* **changed**: tasks whose row, or one of whose jobs, was written within a window of
  ``updated_at`` (both columns indexed, migration 0012b): what moved since the last sweep;
* **a page**: the ids of one keyset page (``after_id``, ``page`` ids), so that a slow
  pass over every task, however old, eventually covers what the window missed;
* **ids** the reconciler asks for again (it deferred them last time).

One statement answers all three. Each set is an index range or a list of ids, so the
work depends on what changed and on the page size, not on how many tasks there are.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from orchestrator.store.records import Task
from orchestrator.store.schema import jobs, tasks
from orchestrator.store.store import ACTIVE_JOB_STATUSES, WAITING_JOB_STATUSES, Store

__all__ = ["ChangeWindow", "ReconcilerStore"]

_PENDING = (*WAITING_JOB_STATUSES, *ACTIVE_JOB_STATUSES)


@dataclass(frozen=True)
class ChangeWindow:
    """Rows written with ``after < updated_at <= until``; ``after=None``: since ever."""

    after: float | None
    until: float

    def of(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        bound = column <= self.until
        return bound if self.after is None else sa.and_(column > self.after, bound)


class ReconcilerStore:
    """The reconciler's queries over one :class:`~orchestrator.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _all(self, query: sa.Select[Any]) -> list[sa.Row[Any]]:
        with self.store.engine.connect() as conn:
            return list(conn.execute(query))

    def page_end(self, after_id: int, page: int) -> int | None:
        """The last id of the ``page`` task ids after ``after_id`` (keyset); None when
        there is none after it (the pass is over: start again from 0)."""
        ids = sa.select(tasks.c.id).where(tasks.c.id > after_id).order_by(tasks.c.id).limit(page)
        row = self._all(sa.select(sa.func.max(ids.subquery().c.id)))[0]
        return None if row[0] is None else int(row[0])

    def candidates(
        self,
        stages: Collection[str],
        *,
        window: ChangeWindow | None,
        page: tuple[int, int] | None = None,
        ids: Collection[int] = (),
    ) -> list[Task]:
        """Live tasks (in one of ``stages``, not failed) with no pending job, among
        those changed in ``window``, with ids in ``page`` (``(after, last]``), or in
        ``ids``; oldest first."""
        chosen: list[sa.Select[Any]] = []
        if window is not None:
            chosen.append(sa.select(tasks.c.id).where(window.of(tasks.c.updated_at)))
            chosen.append(sa.select(jobs.c.task_id).where(window.of(jobs.c.updated_at)))
        if page is not None:
            after, last = page
            chosen.append(sa.select(tasks.c.id).where(tasks.c.id > after, tasks.c.id <= last))
        if ids:
            chosen.append(sa.select(tasks.c.id).where(tasks.c.id.in_(sorted(ids))))
        if not chosen:
            return []
        pending = sa.select(jobs.c.id).where(
            jobs.c.task_id == tasks.c.id, jobs.c.status.in_(_PENDING)
        )
        query = (
            sa.select(tasks)
            .where(
                tasks.c.id.in_(sa.union(*chosen) if len(chosen) > 1 else chosen[0]),
                tasks.c.stage.in_(sorted(stages)),
                tasks.c.failed_reason.is_(None),
                ~pending.exists(),
            )
            .order_by(tasks.c.id)
        )
        return [Task(**row._mapping) for row in self._all(query)]
