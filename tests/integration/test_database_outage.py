"""The engine goes on through a database outage (real PostgreSQL refusing connections
and dropping the ones it had), and a job that ended meanwhile is finished once."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Final

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine as SaEngine
from tests.integration.support import api_client
from tests.integration.test_engine import World, make_repo, wait_for

from orchestrator.api.server import create_app
from orchestrator.auth import issue_token
from orchestrator.effects.leases import Heartbeat, LeaseManager, Owner
from orchestrator.lifecycle.service import TaskService
from orchestrator.lifecycle.transitions import Crossing
from orchestrator.maintenance.leadership import Leadership
from orchestrator.store import Store
from orchestrator.store.advisory import AdvisoryLock
from orchestrator.store.notify import JobListener
from orchestrator.store.raw import Sql

# The analysis agent runs this long: the outage starts while it runs and it ends inside.
AGENT_S: Final = 1.5
OUTAGE_S: Final = 4.0


def set_reachable(admin: SaEngine, database: str, reachable: bool) -> None:
    """Let connections to ``database`` in, or refuse them and drop those it has."""
    with admin.connect() as conn:
        allow = "true" if reachable else "false"
        conn.execute(sa.text(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {allow}'))
        if not reachable:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": database},
            )


@pytest.mark.postgres
def test_the_engine_waits_out_a_database_outage_and_finishes_the_task(
    tmp_path: Path, pg_database: str, pg_admin: SaEngine
) -> None:
    database = sa.make_url(pg_database).database
    assert database is not None
    store = Store.open(pg_database)
    out = tmp_path / "out"
    out.mkdir()
    world = World(tmp_path, pg_database, store, make_repo(tmp_path / "repo"), out)
    world.configure(
        f'[ "$ORCH_STAGE" != analysis ] || sleep {AGENT_S}',
        skip=["brd-approval", "deploy-staging", "deploy"],
    )
    task = world.create("OUT-1")
    engine = world.engine()
    failures: list[BaseException] = []

    def drive() -> None:
        try:
            world.drive(engine, world.ended(task), "done", timeout_s=90)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=drive, name="test-engine")
    thread.start()
    try:
        # Started and recorded (a start whose record the outage cuts off is killed and
        # retried, which this test is not about).
        wait_for(
            lambda: any(job.pid is not None for job in store.task_jobs(task.id)),
            "the analysis job to run",
            timeout_s=30,
        )
        set_reachable(pg_admin, database, reachable=False)
        try:
            wait_for(lambda: engine.database_outage is not None, "the engine to see the outage", 10)
            time.sleep(OUTAGE_S)  # the agent ends while the database is away
            assert thread.is_alive(), failures
        finally:
            set_reachable(pg_admin, database, reachable=True)
        thread.join(120)
        assert not thread.is_alive(), "the engine did not finish after the outage"
        assert failures == []
        assert engine.database_outage is None

        done = store.get_task(task.id)
        assert (done.stage, done.failed_reason) == ("done", None)
        # The analysis job that ended during the outage was finished from what its
        # launcher recorded: one run, no retry.
        analysis = [job for job in store.task_jobs(task.id) if job.stage == "analysis"]
        assert [(job.status, job.attempt) for job in analysis] == [("done", 1)], [
            (job.error, job.failure_kind) for job in analysis
        ]
        runs = [run for run in store.task_runs(task.id) if run.job_id == analysis[0].id]
        assert [run.exit_code for run in runs] == [0]
    finally:
        set_reachable(pg_admin, database, reachable=True)
        thread.join(120)
        engine.shutdown(kill=True)
        store.close()


def test_an_error_that_is_not_an_outage_still_ends_the_loop(tmp_path: Path, db_url: str) -> None:
    store = Store.open(db_url)
    world = World(tmp_path, db_url, store, make_repo(tmp_path / "repo"), tmp_path)
    world.configure()
    world.create("OUT-2")
    engine = world.engine()
    with store.engine.connect() as conn:
        conn.execute(sa.text("ALTER TABLE agent_runs RENAME TO agent_runs_gone"))
        conn.commit()
    with pytest.raises(sa.exc.DBAPIError):
        engine.run(threading.Event(), until=lambda: False)
    assert engine.database_outage is None
    engine.shutdown(kill=True)
    store.close()


@pytest.mark.postgres
def test_the_api_answers_503_in_one_line_while_the_database_is_away(
    tmp_path: Path, pg_database: str, pg_admin: SaEngine
) -> None:
    database = sa.make_url(pg_database).database
    assert database is not None
    store = Store.open(pg_database)
    world = World(tmp_path, pg_database, store, make_repo(tmp_path / "repo"), tmp_path)
    settings = world.configure()
    app = create_app(store=store, settings=settings, service=TaskService(store, settings))
    token = issue_token(store, "tester", "operator", actor="test")
    try:
        with api_client(app, token) as client:
            assert client.get("/tasks").status_code == 200
            set_reachable(pg_admin, database, reachable=False)
            try:
                for path in ("/tasks", "/status", "/queue"):
                    response = client.get(path)
                    assert response.status_code == 503, (path, response.text)
                    assert response.json() == {
                        "error": "the database is out of reach; try again shortly"
                    }
            finally:
                set_reachable(pg_admin, database, reachable=True)
            wait_for(lambda: client.get("/tasks").status_code == 200, "the API to answer again")
    finally:
        set_reachable(pg_admin, database, reachable=True)
        store.close()


def test_a_lease_its_holder_in_this_process_left_is_released(tmp_path: Path, db_url: str) -> None:
    # A crossing the database went away under could not release its lease; the owner
    # is alive, so no one reclaimed it as stale, and the task waited for a restart.
    store = Store.open(db_url)
    world = World(tmp_path, db_url, store, make_repo(tmp_path / "repo"), tmp_path)
    settings = world.configure()
    orphaned, crossing, foreign = (world.create(f"L-{n}") for n in range(1, 4))
    engine = world.engine()
    leases = engine.runtime.leases
    assert leases.acquire(orphaned, "deploy->done", "engine") is not None
    assert leases.acquire(crossing, "deploy->done", "engine") is not None
    other = LeaseManager(store, settings, Owner.current("other", boot_id="another-process"))
    other.owner.register(store)
    assert other.acquire(foreign, "deploy->done", "webhook") is not None
    release_crossing = threading.Event()
    engine.crossings.submit(crossing.id, lambda: release_crossing.wait(30) and Crossing.LOST)
    try:
        assert engine.release_orphaned_leases() == [orphaned.id]
    finally:
        release_crossing.set()
        engine.crossings.wait(30)

    held = {info.task_id for info in leases.held()}
    assert held == {crossing.id, foreign.id}  # the crossing's and another owner's kept
    assert leases.acquire(orphaned, "deploy->done", "reconciler") is not None
    kinds = [event.kind for event in store.task_events(orphaned.id)]
    assert kinds.count("lease.force_released") == 1, kinds
    engine.shutdown(kill=True)
    store.close()


@pytest.mark.postgres
def test_the_outage_is_told_in_one_line_by_each_loop_that_meets_it(
    pg_database: str, pg_admin: SaEngine, caplog: pytest.LogCaptureFixture
) -> None:
    # Seen in `orch serve`'s log during an outage: tracebacks from the pool (a raw
    # statement's lost connection reset on its return), from the LISTEN loop (the
    # driver's own error, not recognised as an outage) and from every heartbeat.
    database = sa.make_url(pg_database).database
    assert database is not None
    store = Store.open(pg_database)
    listener = JobListener(store)
    owner = Owner.current()
    owner.register(store)
    heartbeat = Heartbeat(store, owner, interval_s=0.05)
    stop = threading.Event()
    beating = threading.Thread(target=heartbeat.run, args=(stop,))
    # A follower that tries to lead every 0.05 s, from the moment the outage begins.
    follower = Leadership(AdvisoryLock(store, name="follower"), boot_id="follower", retry_s=0.05)
    electing = threading.Thread(target=follower.run, args=(stop,))
    caplog.set_level(logging.WARNING)
    try:
        listener.connect()
        conn = store.engine.connect()
        conn.begin()
        Sql("SELECT 1").run(conn)
        beating.start()
        set_reachable(pg_admin, database, reachable=False)
        electing.start()
        with pytest.raises(sa.exc.OperationalError) as lost:
            Sql("SELECT 1").run(conn)
        assert lost.value.connection_invalidated
        conn.close()
        with pytest.raises(psycopg.OperationalError) as dropped:
            listener.wait(5)
        assert store.is_outage(dropped.value)
        time.sleep(0.5)  # about ten missed beats and election steps
    finally:
        set_reachable(pg_admin, database, reachable=True)
    try:
        wait_for(lambda: follower.is_leader, "the follower leads once the database is back")
    finally:
        stop.set()
        for thread in (beating, electing):
            if thread.is_alive():
                thread.join(10)
        listener.close()
    records = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert not [r for r in caplog.records if r.exc_info], records
    [beat] = [r for r in records if "heartbeat" in r[2]]
    assert beat[:2] == ("orchestrator.effects.leases", "WARNING")
    assert beat[2].startswith("heartbeat missed: the database is out of reach (")
    assert "not currently accepting connections" in beat[2]  # why, in the driver's words
    election = [r for r in records if r[2].startswith("leader election")]
    assert len(election) == 1, election
    assert store.is_outage(psycopg.OperationalError("a connection lost")) is False  # it is back
    store.close()
