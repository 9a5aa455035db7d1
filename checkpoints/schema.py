"""Whether a database's schema matches the platform's tables (the checkpoints' and the model
registry's): what Alembic's autogenerate would still change."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

import checkpoints.function_store  # noqa: F401
import checkpoints.leases  # noqa: F401
import checkpoints.registry_tables  # noqa: F401  (registers its tables on Base)
import checkpoints.store  # noqa: F401
from checkpoints.database import Base


def schema_differences(engine: Engine) -> list[object]:
    """What autogenerate would change to reach the models: nothing when the migrations are right."""
    with engine.connect() as connection:
        options = {"compare_type": True, "compare_server_default": True}
        return compare_metadata(MigrationContext.configure(connection, opts=options), Base.metadata)
