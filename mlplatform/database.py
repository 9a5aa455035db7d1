"""SQLAlchemy engines for the platform's own tables (checkpoints, model registry)."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base of every table the platform owns."""


@lru_cache
def get_engine(url: str) -> Engine:
    """One engine per URL; creates the tables it does not have yet."""
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            # Flows, Ray actors and the CLI write concurrently: WAL plus a busy wait.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    import checkpoints.store  # noqa: F401  (registers its tables on Base)
    import mlplatform.model_registry  # noqa: F401

    Base.metadata.create_all(engine)
    return engine
