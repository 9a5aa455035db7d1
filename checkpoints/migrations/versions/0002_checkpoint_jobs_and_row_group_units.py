"""Checkpoints by units of row groups (commit 9db3dd7): the run lease, job keys, row filters.

checkpoint_runs gains job_key (indexed), row_filter, units_total, owner and heartbeat_at;
checkpoint_units gains file_path, first_row_group and row_groups; checkpoint_jobs is new.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

# The models give these NOT NULL columns a Python-side default only; existing rows get 0 through
# a server default that is dropped again, so that the schema matches a fresh one exactly.
COUNTERS = {
    "checkpoint_runs": ("units_total",),
    "checkpoint_units": ("first_row_group", "row_groups"),
}


def upgrade() -> None:
    op.create_table(
        "checkpoint_jobs",
        sa.Column("job_key", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("job_key"),
    )
    with op.batch_alter_table("checkpoint_runs") as batch:
        batch.add_column(sa.Column("job_key", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("row_filter", sa.Text(), nullable=True))
        batch.add_column(sa.Column("units_total", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("owner", sa.String(length=160), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_checkpoint_runs_job_key", ["job_key"], unique=False)
    with op.batch_alter_table("checkpoint_units") as batch:
        batch.add_column(sa.Column("file_path", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("first_row_group", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("row_groups", sa.Integer(), nullable=False, server_default="0"))
    for table, columns in COUNTERS.items():
        # On SQLite this recreates the table (copying its rows): it cannot drop a default.
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.alter_column(
                    column, existing_type=sa.Integer(), existing_nullable=False, server_default=None
                )


def downgrade() -> None:
    with op.batch_alter_table("checkpoint_units") as batch:
        batch.drop_column("row_groups")
        batch.drop_column("first_row_group")
        batch.drop_column("file_path")
    with op.batch_alter_table("checkpoint_runs") as batch:
        batch.drop_index("ix_checkpoint_runs_job_key")
        batch.drop_column("heartbeat_at")
        batch.drop_column("owner")
        batch.drop_column("units_total")
        batch.drop_column("row_filter")
        batch.drop_column("job_key")
    op.drop_table("checkpoint_jobs")
