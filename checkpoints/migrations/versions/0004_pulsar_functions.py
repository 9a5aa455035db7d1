"""Pulsar Functions on Ray: registrations, state and counters, input positions
(checkpoints.function_store).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "functions",
        sa.Column("fqfn", sa.String(length=255), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("fqfn"),
    )
    op.create_table(
        "function_state",
        sa.Column("fqfn", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=True),
        sa.Column("counter", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("fqfn", "key"),
    )
    op.create_table(
        "function_positions",
        sa.Column("fqfn", sa.String(length=255), nullable=False),
        sa.Column("topic", sa.String(length=512), nullable=False),
        sa.Column("ledger_id", sa.BigInteger(), nullable=False),
        sa.Column("entry_id", sa.BigInteger(), nullable=False),
        sa.Column("batch_index", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("fqfn", "topic"),
    )


def downgrade() -> None:
    op.drop_table("function_positions")
    op.drop_table("function_state")
    op.drop_table("functions")
