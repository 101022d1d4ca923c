"""A department's own operating threshold per model, with who set it, when and why.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "site_thresholds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("set_by", sa.String(length=64), nullable=False),
        sa.Column("set_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_site_thresholds")),
    )
    with op.batch_alter_table("site_thresholds") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_site_thresholds_model_name"), ["model_name"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("site_thresholds") as batch_op:
        batch_op.drop_index(batch_op.f("ix_site_thresholds_model_name"))
    op.drop_table("site_thresholds")
