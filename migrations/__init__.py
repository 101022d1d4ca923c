"""Alembic migrations of the result history; applied by `pneumotriage db upgrade` and at start."""
