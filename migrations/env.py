"""Alembic environment: `core.db.migrate` hands over an open connection.

Only online migration is supported: the URL lives in config.toml (or its environment
override), never in an alembic.ini, so there is nothing for offline SQL generation to use.
"""

from alembic import context

from core.db.schema import Base

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=Base.metadata,
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
