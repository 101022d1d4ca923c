"""Each instance's patient name also as the key identity checks compare (core.identity.name_key).

The checks compared the databases' upper() of both names, which differ beyond ASCII (SQLite
upper-cases ASCII letters only, PostgreSQL follows the database's locale), so the same
name in capitals was a conflict on SQLite and on a C-locale PostgreSQL. The keys of stored
names are computed here, in Python, as the service computes new ones; on a large history
this rewrites every named row once, at the first start of this version.

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

# Names keyed per statement: a site's whole history need not be in memory at once.
_PAGE = 1000


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
    page = (
        sa.select(instances.c.id, instances.c.patient_name)
        .where(instances.c.patient_name != "", instances.c.id > sa.bindparam("after"))
        .order_by(instances.c.id)
        .limit(_PAGE)
    )
    update = (
        instances.update()
        .where(instances.c.id == sa.bindparam("instance"))
        .values(patient_name_key=sa.bindparam("key"))
    )
    after = 0
    while rows := connection.execute(page, {"after": after}).all():
        connection.execute(update, [{"instance": i, "key": name_key(n)} for i, n in rows])
        after = rows[-1][0]
    # From now on every writer gives the key (core.db.schema says why).
    with op.batch_alter_table("instances") as table:
        table.alter_column("patient_name_key", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("instances") as table:
        table.drop_column("patient_name_key")
