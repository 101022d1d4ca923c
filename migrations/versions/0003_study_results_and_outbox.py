"""Study-level results with versions, the outbox of DICOM outputs, and heatmaps.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "study_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_fk", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("label", sa.String(length=32), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("rule", sa.String(length=16), nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("deciding_instance_fk", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("checked_at", sa.DateTime(), nullable=False),
        sa.Column("superseded_at", sa.DateTime(), nullable=True),
        sa.Column("published_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["deciding_instance_fk"],
            ["instances.id"],
            name=op.f("fk_study_results_deciding_instance_fk_instances"),
        ),
        sa.ForeignKeyConstraint(
            ["study_fk"], ["studies.id"], name=op.f("fk_study_results_study_fk_studies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study_results")),
        sa.UniqueConstraint("study_fk", "version", name=op.f("uq_study_results_study_fk")),
    )
    with op.batch_alter_table("study_results", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_study_results_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_study_results_flagged"), ["flagged"], unique=False)
        batch_op.create_index(batch_op.f("ix_study_results_study_fk"), ["study_fk"], unique=False)

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_result_fk", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("file_path", sa.String(length=512), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "sending",
                "sent",
                "failed",
                name="outboxstatus",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["study_result_fk"],
            ["study_results.id"],
            name=op.f("fk_outbox_study_result_fk_study_results"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("destination", "sop_instance_uid", name=op.f("uq_outbox_destination")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_status_due", ["status", "next_attempt_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_outbox_study_result_fk"), ["study_result_fk"], unique=False
        )

    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heatmap_png", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_column("heatmap_png")

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_study_result_fk"))
        batch_op.drop_index("ix_outbox_status_due")

    op.drop_table("outbox")
    with op.batch_alter_table("study_results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_study_results_study_fk"))
        batch_op.drop_index(batch_op.f("ix_study_results_flagged"))
        batch_op.drop_index(batch_op.f("ix_study_results_created_at"))

    op.drop_table("study_results")
