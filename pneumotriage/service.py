"""Running the long-lived parts together: DICOM node, triage worker, nightly report.

This is the one place that knows all of them; they know only `core`.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.config import Config
from core.db.engine import make_engine, make_session_factory
from core.db.migrate import upgrade
from core.model_store import ModelError, load_model, model_dir, read_card

log = logging.getLogger("pneumotriage.service")


@dataclass(frozen=True)
class Database:
    engine: Engine
    sessions: sessionmaker[Session]


def open_database(config: Config, migrate: bool = True) -> Database:
    engine = make_engine(config.database.url)
    if migrate:
        upgrade(engine)
    return Database(engine, make_session_factory(engine))


def _nightly_report(config: Config, database: Database) -> None:
    from reports.period import report_for_period

    until = datetime.now().astimezone()
    since = until - timedelta(hours=config.reports.period_hours)
    try:
        card = read_card(model_dir(config.model.directory, config.model.name))
    except ModelError:
        card = None
    report_for_period(database.sessions, since, until, config.reports.directory, card)


def _wait_for_signal() -> None:
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("%s received: finishing in-flight work", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    stop.wait()


def run(config: Config, *, node: bool, worker: bool) -> int:
    """Start the chosen parts, block until SIGINT/SIGTERM, then stop them cleanly."""
    database = open_database(config)
    scheduler = BackgroundScheduler()
    if worker:
        from worker.pipeline import TriageWorker

        model = load_model(config.model.directory, config.model.name)
        log.info(
            "model %s %s loaded (threshold %.3f)",
            model.card.name,
            model.card.version,
            model.card.threshold,
        )
        triage = TriageWorker(config, database.sessions, model)
        scheduler.add_job(
            triage.run_once,
            IntervalTrigger(seconds=config.worker.interval_seconds),
            id="triage",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now().astimezone(),
        )
        at = config.reports.nightly_at
        scheduler.add_job(
            _nightly_report,
            CronTrigger(hour=at.hour, minute=at.minute),
            args=(config, database),
            id="nightly-report",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=3600,
        )
        log.info(
            "triage every %gs; nightly report at %s local time",
            config.worker.interval_seconds,
            at.strftime("%H:%M"),
        )
    dicom_node = None
    if node:
        from dicom_node.server import DicomNode

        dicom_node = DicomNode(config.dicom, config.storage.directory, database.sessions)
    scheduler.start()
    if dicom_node is not None:
        dicom_node.start()
    log.info("ready")
    try:
        _wait_for_signal()
    finally:
        if dicom_node is not None:
            dicom_node.stop()
        scheduler.shutdown(wait=True)
        database.engine.dispose()
        log.info("stopped")
    return 0
