"""Models by name: every model version and promotion decision belongs to a named model, and a
version records the dataset it was trained on.

The new columns are NULL for the rows from before; the registry (mlplatform.registry) gives
those the name of the model that opens it first, the current dataset's by default: a registry
that held one model keeps it, under that model's name.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.add_column(sa.Column("model_name", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("dataset", sa.String(length=256), nullable=True))
        batch_op.create_index("ix_model_versions_model_name", ["model_name"])
    with op.batch_alter_table("model_promotions") as batch_op:
        batch_op.add_column(sa.Column("model_name", sa.String(length=128), nullable=True))
        batch_op.create_index("ix_model_promotions_model_name", ["model_name"])


def downgrade() -> None:
    with op.batch_alter_table("model_promotions") as batch_op:
        batch_op.drop_index("ix_model_promotions_model_name")
        batch_op.drop_column("model_name")
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.drop_index("ix_model_versions_model_name")
        batch_op.drop_column("dataset")
        batch_op.drop_column("model_name")
