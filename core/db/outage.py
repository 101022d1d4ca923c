"""Database outages as the long-running jobs see them: said once, retried with back-off.

The triage worker, the publisher and the forwarder all run every few seconds; without this
each would log an ERROR per run for as long as the database is down.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.exc import SQLAlchemyError


def error_line(exc: SQLAlchemyError) -> str:
    """What went wrong, without what SQLAlchemy and the server append after the first line:
    the statement, and PostgreSQL's DETAIL, which repeats the row (patient data)."""
    return str(exc).split("\n", 1)[0]


class DatabaseOutage:
    """Logs an outage once when it starts and once when it ends, through the job's own
    logger, and spaces the attempts in between with exponential back-off."""

    def __init__(self, log: logging.Logger, job: str, max_backoff: float) -> None:
        self.log = log
        self.job = job
        self.max_backoff = max_backoff
        self.since: float | None = None
        self.retry_at = 0.0
        self.backoff = 0.0

    def should_skip(self) -> bool:
        return self.since is not None and time.monotonic() < self.retry_at

    def failed(self, exc: SQLAlchemyError) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since, self.backoff = now, 1.0
            self.log.error(
                "database unavailable, %s paused and retried with back-off: %s",
                self.job,
                error_line(exc),
            )
        else:
            self.backoff = min(self.backoff * 2, self.max_backoff)
            self.log.debug("database still unavailable; next try in %.0fs", self.backoff)
        self.retry_at = now + self.backoff

    def succeeded(self) -> None:
        if self.since is not None:
            self.log.warning(
                "database reachable again after %.0fs; %s resumed",
                time.monotonic() - self.since,
                self.job,
            )
            self.since = None
