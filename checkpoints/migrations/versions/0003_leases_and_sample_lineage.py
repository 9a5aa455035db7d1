"""Named leases (one retrain at a time) and the bounded training sample's lineage.

leases is new (checkpoints.leases); model_versions gains rows_available, rows_used and
sample_seed, NULL for the versions trained before.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=160), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ttl_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.add_column(sa.Column("rows_available", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("rows_used", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("sample_seed", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.drop_column("sample_seed")
        batch_op.drop_column("rows_used")
        batch_op.drop_column("rows_available")

    op.drop_table("leases")
