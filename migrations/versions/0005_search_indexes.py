"""Trigram indexes for the worklist's free-text search, on PostgreSQL only.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("ix_instances_patient_name_trgm", "instances", "patient_name"),
    ("ix_patients_patient_id_trgm", "patients", "patient_id"),
    ("ix_studies_accession_number_trgm", "studies", "accession_number"),
)


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    # pg_trgm is a trusted extension (PostgreSQL 13 and later): the database's owner may
    # create it without being a superuser.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for name, table, column in INDEXES:
        op.create_index(
            name,
            table,
            [column],
            postgresql_using="gin",
            postgresql_ops={column: "gin_trgm_ops"},
        )


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
