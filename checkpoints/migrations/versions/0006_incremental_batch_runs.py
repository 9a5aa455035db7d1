"""Incremental batch inference: what a run continues and from where.

checkpoint_runs gains lineage (the run's dataset, model version, row filter and predictor as one
key, indexed: the runs that continue one another) and since_snapshot_id (the snapshot a run
continued from: it predicts the rows appended after it; NULL: every row of its snapshot).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoint_runs") as batch_op:
        batch_op.add_column(sa.Column("lineage", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("since_snapshot_id", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_checkpoint_runs_lineage", ["lineage"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("checkpoint_runs") as batch_op:
        batch_op.drop_index("ix_checkpoint_runs_lineage")
        batch_op.drop_column("since_snapshot_id")
        batch_op.drop_column("lineage")
