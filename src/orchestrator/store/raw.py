"""The engine's hot statements, written once as SQL and run on the DB-API connection.

Theory of operation
-------------------
Every stage-job costs the engine about twenty statements: its claim, its start, its
exit, its finalization and the next stage's job, with their events. Through
SQLAlchemy Core each one builds a statement object, looks its compiled form up by a
cache key, opens an execution context and wraps the result: 80 to 260 µs a statement
on SQLite, against about 10 µs for the same SQL on the driver's own cursor (measured
in one process, ``docs/benchmarks.md``). Most of a stage-job's cost in this process was
that wrapping (decision 0032).

So the statements on that path are written here as SQL text with ``:name``
parameters, the one form both databases accept once the parameters are spelled for
the driver (``%(name)s`` for psycopg), and :meth:`Sql.run` executes them on the DB-API
connection under the SQLAlchemy :class:`~sqlalchemy.engine.Connection` the caller
holds. The transaction stays SQLAlchemy's: the statements run inside whatever the
connection began, and commit or roll back with it. What SQLAlchemy did for them is
done here, no more:

* a driver error becomes SQLAlchemy's exception of the same class
  (``IntegrityError``, ``OperationalError``), so callers catch what they caught, and
  a lost connection is invalidated, as SQLAlchemy does (the pool discards it without
  trying to reset it);
* the statement is announced to ``before_cursor_execute`` listeners, so the store's
  statement counter (``orch_db_statements_total``) and the benchmarks still count it;
* JSON values are encoded here (:func:`json_value`) and decoded by the reader
  (:func:`json_field`): SQLite hands back text, psycopg hands back the value.

Everything else (the schema, migrations, the long tail of queries) stays in
SQLAlchemy Core.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["Sql", "json_field", "json_value", "rows"]

_PARAMETER: Final = re.compile(r"(?<![:\w]):(\w+)")


class Sql:
    """One statement as SQL text with ``:name`` parameters, for SQLite and PostgreSQL."""

    __slots__ = ("postgresql", "sqlite")

    def __init__(self, text: str) -> None:
        self.sqlite = text
        # psycopg reads %(name)s, and a literal % only doubled.
        self.postgresql = _PARAMETER.sub(r"%(\1)s", text.replace("%", "%%"))

    def run(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Any:
        """Execute on ``conn``'s DB-API connection, inside its transaction; the DB-API
        cursor (``rowcount``, ``fetchone``, ``description``)."""
        sql = self.sqlite if conn.dialect.name == "sqlite" else self.postgresql
        values = params or {}
        dbapi_conn = conn.connection.dbapi_connection
        assert dbapi_conn is not None
        cursor = dbapi_conn.cursor()
        conn.dispatch.before_cursor_execute(conn, cursor, sql, values, None, False)
        try:
            cursor.execute(sql, values)
        except conn.dialect.loaded_dbapi.Error as exc:
            lost = conn.dialect.is_disconnect(exc, dbapi_conn, cursor)
            if lost:
                conn.invalidate(exc)  # as SQLAlchemy's own execution: no reset, no pool error
            raise _wrapped(sql, values, exc, conn.dialect, lost=lost) from exc
        return cursor

    def __repr__(self) -> str:
        return f"Sql({self.sqlite!r})"


def _wrapped(
    sql: str, params: Mapping[str, Any], exc: Any, dialect: Any, *, lost: bool
) -> sa.exc.StatementError:
    """SQLAlchemy's exception for a driver error, as its own execution would raise it
    (``lost``: the error says the connection is gone, ``connection_invalidated``)."""
    wrapped: sa.exc.StatementError = sa.exc.DBAPIError.instance(
        sql,
        dict(params),
        exc,
        dialect.loaded_dbapi.Error,
        connection_invalidated=lost,
        dialect=dialect,
    )
    return wrapped


def rows(cursor: Any) -> list[dict[str, Any]]:
    """Every row the cursor has left, each a dict by column name."""
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def json_value(value: Any) -> str | None:
    """A JSON column's value as the statement sends it (None stays NULL)."""
    return None if value is None else json.dumps(value)


def json_field(value: Any) -> Any:
    """A JSON column as read: SQLite gives its text, psycopg the decoded value."""
    return json.loads(value) if isinstance(value, str) else value
