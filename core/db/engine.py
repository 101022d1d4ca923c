"""Engine and session factory, with the per-dialect settings that make concurrency safe.

The node and the worker may run in separate processes against one SQLite file, so SQLite
gets write-ahead logging and a busy timeout; PostgreSQL needs nothing special. Parameters are
hidden from every database error: they are patient names and IDs, and errors get logged.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, hide_parameters=True
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_pre_ping=True, hide_parameters=True)
    event.listen(engine, "connect", _postgresql_session)
    return engine


def _postgresql_session(dbapi_connection: Any, _record: Any) -> None:
    """PostgreSQL compiles a query to machine code once its estimated cost passes
    `jit_above_cost`, which the worklist's and history's whole-history queries do; for
    queries of a few hundred milliseconds the compilation costs more than it saves (it was
    most of the 2.2 s "needs review" took at 100,000 studies in benchmarks/worklist_speed.py,
    0.48 s with this and two query changes), so it is off for this service's sessions. Set
    by a statement rather than a startup option, which connection poolers such as PgBouncer
    refuse; committed, as SET is undone with its transaction."""
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET jit = off")
    dbapi_connection.commit()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
