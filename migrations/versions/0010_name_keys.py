"""Each instance's patient name also as the key identity checks compare (core.identity.name_key).

The checks compared the databases' upper() of both names, which differ beyond ASCII (SQLite
upper-cases ASCII letters only), so the same two names were one name on PostgreSQL and a
conflict on SQLite. The keys of stored names are computed here, in Python, as the service
computes new ones.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from core.identity import name_key

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000


def upgrade() -> None:
    with op.batch_alter_table("instances") as table:
        table.add_column(
            sa.Column("patient_name_key", sa.Text(), nullable=False, server_default="")
        )
    instances = sa.table(
        "instances",
        sa.column("id", sa.Integer()),
        sa.column("patient_name", sa.String()),
        sa.column("patient_name_key", sa.Text()),
    )
    connection = op.get_bind()
    named = connection.execute(
        sa.select(instances.c.id, instances.c.patient_name).where(instances.c.patient_name != "")
    ).all()
    update = (
        instances.update()
        .where(instances.c.id == sa.bindparam("instance"))
        .values(patient_name_key=sa.bindparam("key"))
    )
    for start in range(0, len(named), _BATCH):
        rows = named[start : start + _BATCH]
        connection.execute(update, [{"instance": i, "key": name_key(n)} for i, n in rows])


def downgrade() -> None:
    with op.batch_alter_table("instances") as table:
        table.drop_column("patient_name_key")
