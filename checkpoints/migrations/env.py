"""Alembic environment of the platform's own tables (checkpoints and model registry).

Run by checkpoints.database (get_engine, `mlp db upgrade`), which hands over a connection already
in the transaction that serializes concurrent upgrades, and by the `alembic` command (alembic.ini
at the repository root), which connects to `-x url=...` or else the settings' database URL.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy.pool import NullPool

import checkpoints.leases  # noqa: F401
import checkpoints.registry_tables  # noqa: F401
import checkpoints.store  # noqa: F401  (registers its tables on Base, for autogenerate)
from checkpoints.database import Base, new_engine

config = context.config
if config.config_file_name is not None and "connection" not in config.attributes:
    # Only the command line configures logging; in-process callers keep their own.
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.attributes.get("url")
    if url:
        return url
    from mlplatform.settings import get_settings

    return get_settings().resolved_database_url


def _configure(**options: object) -> None:
    # render_as_batch: autogenerate writes batch_alter_table, which SQLite needs to alter columns.
    context.configure(
        target_metadata=Base.metadata,
        render_as_batch=True,
        compare_server_default=True,
        **options,
    )


def run_migrations_offline() -> None:
    """`alembic upgrade head --sql`: print the SQL instead of running it."""
    _configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = new_engine(_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            _configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
