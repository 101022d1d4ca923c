"""Producing the report of one period, for the nightly job and for `pneumotriage report`."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from core.model_store import ModelCard
from reports.render import build_context, render, report_filename, write_report

log = logging.getLogger(__name__)


def report_for_period(
    sessions: sessionmaker[Session],
    since: datetime,
    until: datetime,
    directory: Path,
    configured_model: ModelCard | None,
    target: Path | None = None,
) -> Path:
    """Into `target`, or, when it is a folder or not given, under the period's name in it
    or in `directory`."""
    with sessions() as session:
        context = build_context(session, since, until, configured_model)
    if target is None or target.is_dir():
        target = (target or directory) / report_filename(since, until)
    path = write_report(render(context), target)
    log.info(
        "report %s: %d received, %d flagged studies, %d rejected",
        path.name,
        context.counts["received"],
        context.counts["flagged_studies"],
        context.counts["rejected"],
    )
    return path
