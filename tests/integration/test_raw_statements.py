"""The engine's hot statements on the driver's cursor (store/raw.py, decision 0032),
against real SQLite and real PostgreSQL: what SQLAlchemy did for them still holds."""

from __future__ import annotations

import re
import time

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from tests.integration.test_store import add_task, new_job, new_task

from orchestrator.store import DuplicateError, Store
from orchestrator.store.raw import Sql
from orchestrator.store.schema import events, tasks

NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)
LITERALS = st.text(alphabet="abc %':;=()", max_size=12).map(lambda text: text.replace(":", " "))


@given(names=st.lists(NAMES, min_size=1, max_size=5), literal=LITERALS)
def test_parameters_are_spelled_for_psycopg_and_nothing_else_changes(
    names: list[str], literal: str
) -> None:
    text = " AND ".join(f"{name} = :{name}" for name in names) + f" AND x::text <> '{literal}'"
    statement = Sql(text)

    assert statement.sqlite == text
    # Back to the original: every %(name)s was a :name, every %% a %.
    restored = re.sub(r"%\((\w+)\)s", r":\1", statement.postgresql).replace("%%", "%")
    assert restored == text
    assert re.findall(r"%\((\w+)\)s", statement.postgresql) == names
    assert "::text" in statement.postgresql  # a cast is not a parameter


def test_a_duplicate_through_the_cursor_is_the_store_s_duplicate_error(store: Store) -> None:
    task_id = new_task(store)
    job_id = new_job(store, task_id)
    with store.transaction() as tx:
        run_id = tx.insert_agent_run(
            job_id=job_id, task_id=task_id, agent="a", model="", effort="", attempt=1, log_path="l"
        )
    insert = Sql(
        "INSERT INTO agent_runs (id, job_id, task_id, agent, attempt, log_path, started_at)"
        " VALUES (:id, :job, :task, 'a', 1, 'l', 0)"
    )

    def probe_then_duplicate() -> None:
        with store.transaction() as tx:
            tx.add_event("probe", actor="test", task_id=task_id)
            insert.run(tx.conn, {"id": run_id, "job": job_id, "task": task_id})

    with pytest.raises(DuplicateError):
        probe_then_duplicate()

    # Nothing of the failed transaction was kept, and the store still works.
    with store.engine.connect() as conn:
        kinds = [row.kind for row in conn.execute(sa.select(events.c.kind))]
    assert "probe" not in kinds
    assert store.get_task(task_id).id == task_id


def test_a_driver_error_is_sqlalchemy_s_and_names_the_statement(store: Store) -> None:
    with store.engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as caught:
        Sql("SELECT * FROM no_such_table WHERE id = :id").run(conn, {"id": 1})
    assert caught.value.statement is not None
    assert "no_such_table" in caught.value.statement


def test_every_statement_is_counted(store: Store) -> None:
    task_id = new_task(store)
    before = store.statements
    store.get_task(task_id)
    assert store.statements == before + 1
    with store.transaction() as tx:
        tx.add_event("probe", actor="test", task_id=task_id)
        tx.add_event("probe", actor="test", task_id=task_id)
    # The two inserts and, on SQLite, the BEGIN IMMEDIATE (PostgreSQL begins implicitly
    # and sends its NOTIFY instead).
    assert store.statements - before - 1 == 3


def test_json_and_nulls_read_back_through_sqlalchemy(store: Store) -> None:
    origin = {"tracker": "plane", "issue": "7", "labels": ["a", "b"], "n": 1.5}
    with store.transaction() as tx:
        task_id = add_task(tx)
        tx.conn.execute(tasks.update().where(tasks.c.id == task_id).values(origin=origin))
        with_data = tx.add_event("probe", actor="t", task_id=task_id, data={"k": [1, None]})
        without = tx.add_event("probe", actor="t", task_id=task_id)

    with store.engine.connect() as conn:
        data = dict(conn.execute(sa.select(events.c.id, events.c.data)).all())
        nulls = conn.execute(sa.select(events.c.id).where(events.c.data.is_(None))).scalars()
        assert without in set(nulls)  # SQL NULL, not the JSON text 'null'
    assert data[with_data] == {"k": [1, None]}
    assert store.get_task(task_id).origin == origin
    with store.transaction() as tx:
        assert tx.get_task(task_id).origin == origin


def test_a_record_exit_keeps_the_model_unless_one_is_given(store: Store) -> None:
    task_id = new_task(store)
    job_id = new_job(store, task_id)
    with store.transaction() as tx:
        run_id = tx.insert_agent_run(
            job_id=job_id,
            task_id=task_id,
            agent="claude",
            model="opus",
            effort="high",
            attempt=1,
            log_path="l",
        )
        tx.record_exit(run_id, exit_code=0)
    assert store.task_runs(task_id)[0].model == "opus"
    with store.transaction() as tx:
        tx.record_exit(run_id, exit_code=3, model="sonnet", input_tokens=5, cost_usd=0.25)
    run = store.task_runs(task_id)[0]
    assert (run.model, run.exit_code, run.input_tokens, run.cost_usd) == ("sonnet", 3, 5, 0.25)
    assert run.exit_recorded_at == pytest.approx(time.time(), abs=60)


def test_a_lost_postgresql_connection_is_not_handed_out_again(pg_database: str) -> None:
    store = Store.open(pg_database)
    task_id = new_task(store)
    with store.engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    admin = sa.create_engine(pg_database.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    admin.dispose()

    # The pool hands the killed connection out first (LIFO) and the read fails...
    with pytest.raises(sa.exc.OperationalError):
        store.get_task(task_id)
    # ...once: it was invalidated, so the next read gets a live connection.
    assert store.get_task(task_id).id == task_id
    store.close()
