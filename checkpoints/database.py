"""SQLAlchemy engines for the platform's own tables (checkpoints, model registry), whose schema
the Alembic revisions in checkpoints/migrations bring to head when a process first opens them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from threading import Lock
from typing import TYPE_CHECKING
from zlib import crc32

from sqlalchemy import Connection, Engine, create_engine, event, func, inspect, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Held by the process that upgrades a PostgreSQL database; the others wait, then find it done.
PG_MIGRATION_LOCK = crc32(b"mlplatform schema migrations")
UPGRADE_ATTEMPTS = 3
# Alembic's `context` and `op` are module globals: one migration at a time in this process.
_IN_PROCESS_LOCK = Lock()


class Base(DeclarativeBase):
    """Declarative base of every table the platform owns."""


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # Flows, Ray actors and the CLI write concurrently: a busy wait (first, so that even the
    # switch to WAL waits for a concurrent opener), then WAL.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def new_engine(url: str, **options: object) -> Engine:
    """An engine with the platform's SQLite settings; the schema is left as it is."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **options)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


@lru_cache
def get_engine(url: str) -> Engine:
    """One engine per URL, its database upgraded to the newest revision first."""
    engine = new_engine(url, pool_pre_ping=True)
    try:
        upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """The Alembic configuration of checkpoints/migrations, on a URL or an open connection.

    Alembic is imported here, not with the module: Ray workers of batch inference import this
    module (through the model registry) at every start, and need no migration (0.25 s each)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes.update(url=url, connection=connection)
    return config


@lru_cache(maxsize=1)
def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"no revisions in {MIGRATIONS_DIR}"
    return head


def current_revision(connection: Connection) -> str | None:
    """The database's revision; None when it has no alembic_version table."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> str:
    """Bring the database to the head revision and return it; one query when it is there."""
    head = head_revision()
    for attempt in range(1, UPGRADE_ATTEMPTS + 1):
        try:
            with engine.connect() as connection:
                if current_revision(connection) == head:
                    return head
            with _IN_PROCESS_LOCK, _migration_transaction(engine) as connection:
                _upgrade_locked(connection)
            return head
        except DBAPIError:
            # A concurrent upgrade that no lock covers won the race, or a lock wait timed out
            # (SQLite's switch to WAL of a new file can fail at once under contention): look
            # again once the winner may have finished.
            if attempt == UPGRADE_ATTEMPTS:
                raise
            time.sleep(attempt)
    raise AssertionError("unreachable")


@contextmanager
def _migration_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that only one process at a time holds, for the whole upgrade."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(select(func.pg_advisory_xact_lock(PG_MIGRATION_LOCK)))
            yield connection
        return
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        # No lock on other dialects (upgrade retries a lost race); an in-memory SQLite
        # database belongs to one connection, which a second engine would not see.
        with engine.begin() as connection:
            yield connection
        return
    # SQLite: BEGIN IMMEDIATE takes the write lock up front (others wait on busy_timeout), and
    # the driver's own transaction handling is off so that the DDL runs inside that transaction.
    locking = new_engine(engine.url.render_as_string(hide_password=False), poolclass=NullPool)

    @event.listens_for(locking, "connect", insert=True)
    def _manual_transactions(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None

    @event.listens_for(locking, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        with locking.begin() as connection:
            yield connection
    finally:
        locking.dispose()


def _upgrade_locked(connection: Connection) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory

    current, head = current_revision(connection), head_revision()
    if current == head:  # another process upgraded while this one waited for the lock
        return
    config = alembic_config(connection=connection)
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    if current is not None and current not in known:
        url = connection.engine.url.render_as_string(hide_password=True)
        raise RuntimeError(
            f"the database {url} is at revision {current!r}, which this version of the platform "
            f"does not know (its newest is {head!r}): run a newer version of the platform"
        )
    if current is None and (adopted := _create_all_revision(connection)) is not None:
        command.stamp(config, adopted)
    command.upgrade(config, "head")


def _create_all_revision(connection: Connection) -> str | None:
    """The revision whose schema create_all made in a database from before migrations, if any.

    create_all made revision 0001's tables until commit 9db3dd7, then 0002's.
    """
    tables = set(inspect(connection).get_table_names())
    if "checkpoint_runs" not in tables:
        return None
    columns = {column["name"] for column in inspect(connection).get_columns("checkpoint_runs")}
    return "0002" if "job_key" in columns else "0001"
