"""Initial schema: patients, studies, series, instances and results.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 14:56:29.940314
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=False),
        sa.Column("patient_name", sa.String(length=324), nullable=False),
        sa.Column("birth_date", sa.Date(), nullable=True),
        sa.Column("sex", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patients")),
        sa.UniqueConstraint(
            "patient_id", "issuer_of_patient_id", name=op.f("uq_patients_patient_id")
        ),
    )
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_fk", sa.Integer(), nullable=False),
        sa.Column("study_date", sa.Date(), nullable=True),
        sa.Column("accession_number", sa.String(length=16), nullable=False),
        sa.Column("study_description", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_fk"], ["patients.id"], name=op.f("fk_studies_patient_fk_patients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_studies_study_instance_uid")),
    )
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_studies_accession_number"), ["accession_number"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_studies_patient_fk"), ["patient_fk"], unique=False)
        batch_op.create_index(batch_op.f("ix_studies_study_date"), ["study_date"], unique=False)

    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_fk", sa.Integer(), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("body_part_examined", sa.String(length=64), nullable=False),
        sa.Column("series_description", sa.String(length=64), nullable=False),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["study_fk"], ["studies.id"], name=op.f("fk_series_study_fk_studies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series")),
        sa.UniqueConstraint("series_instance_uid", name=op.f("uq_series_series_instance_uid")),
    )
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_series_study_fk"), ["study_fk"], unique=False)

    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("series_fk", sa.Integer(), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("view_position", sa.String(length=16), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("file_path", sa.String(length=512), nullable=False),
        sa.Column("file_size", sa.Integer(), nullable=False),
        sa.Column("calling_ae_title", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "processing",
                "triaged",
                "rejected",
                name="instancestatus",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("processed_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["series_fk"], ["series.id"], name=op.f("fk_instances_series_fk_series")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instances")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_instances_sop_instance_uid")),
    )
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.create_index("ix_instances_received_at", ["received_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_instances_series_fk"), ["series_fk"], unique=False)
        batch_op.create_index(
            "ix_instances_status_lease", ["status", "lease_expires_at"], unique=False
        )

    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_fk", sa.Integer(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("label", sa.String(length=32), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("thumbnail_png", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_fk"], ["instances.id"], name=op.f("fk_results_instance_fk_instances")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_results")),
        sa.UniqueConstraint("instance_fk", name=op.f("uq_results_instance_fk")),
    )
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_results_flagged"), ["flagged"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_results_flagged"))

    op.drop_table("results")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index("ix_instances_status_lease")
        batch_op.drop_index(batch_op.f("ix_instances_series_fk"))
        batch_op.drop_index("ix_instances_received_at")

    op.drop_table("instances")
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_series_study_fk"))

    op.drop_table("series")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_studies_study_date"))
        batch_op.drop_index(batch_op.f("ix_studies_patient_fk"))
        batch_op.drop_index(batch_op.f("ix_studies_accession_number"))

    op.drop_table("studies")
    op.drop_table("patients")
