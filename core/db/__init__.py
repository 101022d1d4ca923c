"""Database schema, engine and migrations, portable between SQLite and PostgreSQL."""
