"""Shared fixtures: a store on SQLite and on PostgreSQL, each test on a fresh database.

Theory of operation
-------------------
``db_url`` is parametrized over ``sqlite`` and ``postgresql``. SQLite gets a file in
``tmp_path``. PostgreSQL follows procrastinate's pattern: once per session a template
database is created and migrated; every test then gets ``CREATE DATABASE ... TEMPLATE``,
a copy that is cheap to make and is dropped after the test.

The server comes from ``ORCH_TEST_PG_URL`` (default below); its database is only used as
the place to run ``CREATE DATABASE`` from. Whether it answers is checked once, after
collection, and only when a selected test needs it. When it does not answer:

* with ``CI`` set, the run stops at once with an error: CI must not pass by skipping;
* otherwise the postgres tests are skipped and the summary says why in one line (the
  folded ``-ra`` line, or our own line when ``-r`` does not list skips).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from orchestrator.store import Store

DEFAULT_PG_URL: Final = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_CONNECT_TIMEOUT_S: Final = 3
# Values of CI that mean "not in CI" (so that CI=false behaves like no CI at all).
CI_FALSE_VALUES: Final = frozenset({"", "0", "false", "no"})

pg_unreachable_key = pytest.StashKey[str | None]()


def pg_admin_url() -> URL:
    """The URL of the server's maintenance database, from ORCH_TEST_PG_URL."""
    url = sa.make_url(os.environ.get("ORCH_TEST_PG_URL") or DEFAULT_PG_URL)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in CI_FALSE_VALUES


def _server(url: URL) -> str:
    return f"{url.host or 'localhost'}:{url.port or 5432}"


def _admin_engine() -> Engine:
    # AUTOCOMMIT: CREATE/DROP DATABASE cannot run inside a transaction.
    return sa.create_engine(
        pg_admin_url(),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.NullPool,
        connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S},
    )


def _pg_unreachable_reason() -> str | None:
    """None if the server answers, else a one-line reason."""
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:
        lines = str(exc.orig).strip().splitlines() or [type(exc.orig).__name__]
        return lines[0]
    finally:
        engine.dispose()
    return None


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected what will not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[pg_unreachable_key] = None
    if not any(item.get_closest_marker("postgres") for item in items):
        return
    reason = _pg_unreachable_reason()
    if reason is not None and in_ci():
        pytest.exit(
            f"PostgreSQL at {_server(pg_admin_url())} is unreachable and CI is set: {reason}",
            returncode=pytest.ExitCode.TESTS_FAILED,
        )
    config.stash[pg_unreachable_key] = reason


@pytest.hookimpl(tryfirst=True)  # before fixtures are set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = item.config.stash.get(pg_unreachable_key, None)
    if reason is not None and item.get_closest_marker("postgres"):
        # Raised here rather than in a fixture, so that `-ra` folds every such skip
        # into one line (a fixture's skip is reported at each test's location).
        pytest.skip(_skip_message(reason))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    reason = config.stash.get(pg_unreachable_key, None)
    if reason is not None and not _summary_lists_skips(config):
        terminalreporter.write_line(_skip_message(reason), yellow=True, bold=True)


def _summary_lists_skips(config: pytest.Config) -> bool:
    """Whether the short summary (``-r``) already prints the reason of each skip."""
    listed = False
    for char in str(config.getoption("reportchars", "")):
        if char == "N":
            listed = False
        elif char in "aAs":
            listed = True
    return listed


def _skip_message(reason: str) -> str:
    return (
        f"postgres tests skipped: PostgreSQL at {_server(pg_admin_url())} unreachable "
        f"({reason}); set ORCH_TEST_PG_URL or start it"
    )


def _create_database(engine: Engine, name: str, template: str) -> URL:
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    return pg_admin_url().set(database=name)


def _drop_database(engine: Engine, name: str) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_admin(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An AUTOCOMMIT engine on the server's maintenance database."""
    reason = request.config.stash.get(pg_unreachable_key, None)
    if reason is not None:  # only a test without the postgres marker gets here
        pytest.fail(f"PostgreSQL is unreachable ({reason}); mark the test postgres")
    engine = _admin_engine()
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_template(pg_admin: Engine) -> Iterator[str]:
    """A database migrated once per session, cloned by every postgres test."""
    name = f"orch_tpl_{secrets.token_hex(6)}"
    url = _create_database(pg_admin, name, template="template0")
    try:
        Store.open(url.render_as_string(hide_password=False)).close()
        yield name
    finally:
        _drop_database(pg_admin, name)


def _pg_database(admin: Engine, template: str) -> Iterator[str]:
    name = f"orch_t_{secrets.token_hex(6)}"
    url = _create_database(admin, name, template=template)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        _drop_database(admin, name)


@pytest.fixture
def pg_database(pg_admin: Engine, pg_template: str) -> Iterator[str]:
    """URL of a fresh, migrated PostgreSQL database, dropped after the test."""
    yield from _pg_database(pg_admin, pg_template)


@pytest.fixture
def pg_empty_database(pg_admin: Engine) -> Iterator[str]:
    """URL of a fresh PostgreSQL database with no tables, dropped after the test."""
    yield from _pg_database(pg_admin, "template0")


BACKENDS: Final = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each backend: PostgreSQL's is cloned already migrated,
    SQLite's is an empty file; ``Store.open`` brings either to head."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/orch.db"
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (no tables, no revision) of each backend, fresh for this test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/orch.db"
    return str(request.getfixturevalue("pg_empty_database"))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated store on ``db_url``, closed after the test."""
    opened = Store.open(db_url)
    yield opened
    opened.close()
