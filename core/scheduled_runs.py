"""Daily jobs that any number of worker processes schedule and exactly one runs.

Each worker process, on any host, schedules the nightly report and retention; when the
time comes, each tries to insert the job's row for the day, and the one whose insert
commits runs it. The others see the unique constraint refuse theirs and skip. A process
that dies mid-run leaves the row: the job is not run twice that day, and the next day's
run (or the command, `pneumotriage report` or `purge`) covers what it missed.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db.schema import ScheduledRun
from core.db.types import utcnow
from core.heartbeat import process_name


def first_to_run(session: Session, job: str, slot: str) -> bool:
    """True for the one process that claims `job` for `slot` (a day, as YYYY-MM-DD)."""
    session.add(ScheduledRun(job=job, slot=slot, process=process_name(job), started_at=utcnow()))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return False
    return True
