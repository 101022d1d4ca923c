"""Alembic environment: `core.db.migrate` hands over an open connection.

Only online migration is supported: the URL lives in config.toml (or its environment
override), never in an alembic.ini, so there is nothing for offline SQL generation to use.
"""

from alembic import context

from core.db.schema import Base, schema_objects

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    include_object=schema_objects(connection.dialect.name),
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
