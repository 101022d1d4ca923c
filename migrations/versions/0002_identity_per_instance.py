"""Identity per instance: studies and series keyed under their patient; audit trail.

Demographics move from the patient row to each instance (what that instance carried), a
study is unique per patient rather than globally, a series per study, and a table records
identity corrections and requeues. `claimed_alone` lets the worker tell a culprit from the
bystanders of a batch that was in flight when it died.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PATIENT_OF_INSTANCE = (
    "SELECT p.{column} FROM series se JOIN studies st ON se.study_fk = st.id "
    "JOIN patients p ON st.patient_fk = p.id WHERE se.id = instances.series_fk"
)
_INSTANCE_OF_PATIENT = (
    "SELECT i.{column} FROM instances i JOIN series se ON i.series_fk = se.id "
    "JOIN studies st ON se.study_fk = st.id WHERE st.patient_fk = patients.id "
    "ORDER BY i.received_at DESC LIMIT 1"
)
_DEMOGRAPHICS = (
    ("patient_name", "patient_name"),
    ("birth_date", "patient_birth_date"),
    ("sex", "patient_sex"),
)


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_events_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_events_action"), ["action"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_audit_events_sop_instance_uid"), ["sop_instance_uid"], unique=False
        )

    with op.batch_alter_table("instances") as batch_op:
        batch_op.add_column(
            sa.Column("patient_name", sa.String(length=324), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("patient_birth_date", sa.Date(), nullable=True))
        batch_op.add_column(
            sa.Column("patient_sex", sa.String(length=16), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("claimed_alone", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    for old, new in _DEMOGRAPHICS:
        op.execute(
            f"UPDATE instances SET {new} = ({_PATIENT_OF_INSTANCE.format(column=old)})"  # noqa: S608
        )
    with op.batch_alter_table("patients") as batch_op:
        for old, _new in _DEMOGRAPHICS:
            batch_op.drop_column(old)

    with op.batch_alter_table("studies") as batch_op:
        batch_op.drop_constraint("uq_studies_study_instance_uid", type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_studies_patient_fk"), ["patient_fk", "study_instance_uid"]
        )
        batch_op.create_index(
            batch_op.f("ix_studies_study_instance_uid"), ["study_instance_uid"], unique=False
        )
    with op.batch_alter_table("series") as batch_op:
        batch_op.drop_constraint("uq_series_series_instance_uid", type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_series_study_fk"), ["study_fk", "series_instance_uid"]
        )
        batch_op.create_index(
            batch_op.f("ix_series_series_instance_uid"), ["series_instance_uid"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("series") as batch_op:
        batch_op.drop_index(batch_op.f("ix_series_series_instance_uid"))
        batch_op.drop_constraint(batch_op.f("uq_series_study_fk"), type_="unique")
        batch_op.create_unique_constraint("uq_series_series_instance_uid", ["series_instance_uid"])
    with op.batch_alter_table("studies") as batch_op:
        batch_op.drop_index(batch_op.f("ix_studies_study_instance_uid"))
        batch_op.drop_constraint(batch_op.f("uq_studies_patient_fk"), type_="unique")
        batch_op.create_unique_constraint("uq_studies_study_instance_uid", ["study_instance_uid"])
    with op.batch_alter_table("patients") as batch_op:
        batch_op.add_column(
            sa.Column("patient_name", sa.String(length=324), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("birth_date", sa.Date(), nullable=True))
        batch_op.add_column(
            sa.Column("sex", sa.String(length=16), nullable=False, server_default="")
        )
    for old, new in _DEMOGRAPHICS:
        value = f"({_INSTANCE_OF_PATIENT.format(column=new)})"
        if old != "birth_date":
            value = f"COALESCE({value}, '')"
        op.execute(f"UPDATE patients SET {old} = {value}")  # noqa: S608
    with op.batch_alter_table("instances") as batch_op:
        for _old, new in _DEMOGRAPHICS:
            batch_op.drop_column(new)
        batch_op.drop_column("claimed_alone")
    op.drop_table("audit_events")
