"""Running the long-lived parts together: DICOM node, triage worker, outputs, forwarder.

This is the one place that knows all of them; they know only `core`. An instance's way
through them, each step a durable state in the database:

1. `dicom_node` (C-STORE): file fsynced under `storage/`, instance row `pending`, Success.
2. `worker.pipeline` (every `worker.interval_seconds`): claimed, converted, inferred;
   `triaged` with a result (and heatmap) or `rejected` with a reason.
3. `worker.settle`: once the study is complete, a study-level result version.
4. `outputs.publish`: that version's SR and Secondary Captures written under
   `storage/outputs/` and queued in the outbox, one row per destination.
5. `forwarder` (every `forward.interval_seconds`): C-STORE to the PACS, retried with
   back-off, `sent` or, after `forward.max_attempts`, `failed` with the peer's answer.
6. `web`: the worklist shows the study from its first image on, ranked once results come;
   radiologists open it, see the images, scores and heatmaps, and record their reading.

Each long-lived part also beats a heartbeat into the database (core.heartbeat), so that
the status page and /healthz of any web process can tell whether nodes and workers run.
"""

from __future__ import annotations

import functools
import gc
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.config import Config
from core.db.engine import make_engine, make_session_factory
from core.db.migrate import SchemaNotCurrentError, is_current, upgrade
from core.db.outage import error_line
from core.disk import free_megabytes
from core.heartbeat import INTERVAL_SECONDS as HEARTBEAT_SECONDS
from core.model_store import LoadedModel, ModelError, load_model, model_dir, read_card
from pneumotriage.processes import FAULT_STATUS

if TYPE_CHECKING:
    from fastapi import FastAPI

    from pneumotriage.processes import Children

log = logging.getLogger("pneumotriage.service")


@dataclass(frozen=True)
class Database:
    engine: Engine
    sessions: sessionmaker[Session]


def open_database(config: Config, *, migrate: bool) -> Database:
    """The service migrates at start; query commands only read, so they never change the
    schema under a running service, and say how to bring it up to date instead."""
    engine = make_engine(config.database.url)
    if migrate:
        upgrade(engine)
    elif not is_current(engine):
        engine.dispose()
        raise SchemaNotCurrentError(
            "the database schema is not the one this version uses: run "
            "`pneumotriage db upgrade` (the service also does it when it starts)"
        )
    return Database(engine, make_session_factory(engine))


def produce_report(
    config: Config,
    database: Database,
    since: datetime | None = None,
    until: datetime | None = None,
    target: Path | None = None,
) -> Path:
    """The report of a period, by default the `reports.period_hours` up to now, naming the
    configured model when the period holds no results of any model."""
    from reports.period import report_for_period

    until = until or datetime.now().astimezone()
    since = since or until - timedelta(hours=config.reports.period_hours)
    try:
        card = read_card(model_dir(config.model.directory, config.model.name))
    except ModelError:
        card = None
    return report_for_period(
        database.sessions, since, until, config.reports.directory, card, target
    )


def _first_to_run(database: Database, job: str) -> bool:
    """Whether this process runs today's `job`: every worker process schedules it, and the
    database lets one of them (core.scheduled_runs)."""
    from core.scheduled_runs import first_to_run

    with database.sessions() as session:
        return first_to_run(session, job, datetime.now().astimezone().date().isoformat())


def _nightly_report(config: Config, database: Database) -> None:
    """The scheduler would log a failure with a traceback and no advice; a full disk or a
    database outage at 6 a.m. deserves one line an administrator can act on."""
    from reports.render import ReportWriteError

    try:
        if not _first_to_run(database, "nightly-report"):
            return
        produce_report(config, database)
    except ReportWriteError as exc:
        log.error("nightly report not written: %s; `pneumotriage report` writes it later", exc)
    except SQLAlchemyError as exc:
        log.error(
            "nightly report not written, database unavailable: %s; `pneumotriage report`"
            " writes it later",
            error_line(exc),
        )


def _purge(config: Config, database: Database) -> None:
    from core.disk import MB
    from core.retention import purge

    try:
        if not _first_to_run(database, "retention"):
            return
        with database.sessions() as session:
            summary = purge(
                session, config.storage.directory, config.storage.keep_days, "retention"
            )
    except (SQLAlchemyError, OSError) as exc:
        reason = error_line(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
        log.error("retention did not run: %s; `pneumotriage purge` runs it by hand", reason)
        return
    if summary.files:
        log.info(
            "retention removed %d received file(s), %.1f MB",
            summary.files,
            summary.bytes / MB,
        )


def drift_check(config: Config, database: Database) -> tuple[str, bool]:
    """Run the drift check (core.drift) on the configured model now and record it; its
    summary line and whether it warned."""
    from core.drift import check

    card = read_card(model_dir(config.model.directory, config.model.name))
    with database.sessions() as session:
        row = check(session, card, config.drift)
        outcome = (row.summary, row.warned)
        session.commit()
    return outcome


def _weekly_drift(config: Config, database: Database) -> None:
    try:
        if not _first_to_run(database, "drift-check"):
            return
        summary, warned = drift_check(config, database)
    except (SQLAlchemyError, ModelError) as exc:
        reason = error_line(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
        log.error("drift check did not run: %s; `pneumotriage drift` runs it by hand", reason)
        return
    log.log(logging.WARNING if warned else logging.INFO, "drift check: %s", summary)


def render_report_html(config: Config, database: Database) -> Callable[[datetime, datetime], str]:
    """The report of any period as HTML, for the web application, which does not import
    `reports` itself."""
    from reports.render import build_context, render

    def rendered(since: datetime, until: datetime) -> str:
        try:
            card = read_card(model_dir(config.model.directory, config.model.name))
        except ModelError:
            card = None
        with database.sessions() as session:
            return render(build_context(session, since, until, card))

    return rendered


def web_application(config: Config, database: Database) -> FastAPI:
    from web.app import create_app

    @functools.cache
    def model() -> LoadedModel:
        """Loaded once, by the first page that needs it (about, try-it), then frozen with
        start-up: the node's process then never carries TensorFlow for the status page."""
        loaded = load_model(config.model.directory, config.model.name)
        _freeze_start_up()
        return loaded

    return create_app(config, database.sessions, model, render_report_html(config, database))


def _beat(database: Database, parts: dict[str, dict[str, object]]) -> None:
    from core.heartbeat import beat

    try:
        with database.sessions() as session:
            for component, detail in parts.items():
                beat(session, component, detail)
    except SQLAlchemyError as exc:
        log.debug("heartbeat not written: %s", error_line(exc))


def _stop_beating(database: Database, parts: dict[str, dict[str, object]]) -> None:
    from core.heartbeat import stop

    try:
        with database.sessions() as session:
            for component in parts:
                stop(session, component)
    except SQLAlchemyError as exc:
        # `status` reports a process whose row outlives it as stopped uncleanly for a day.
        log.warning("heartbeat not removed at stop: %s", error_line(exc))


def _freeze_start_up() -> None:
    """Leave what start-up built (modules, the model, the web application), which lives as
    long as the process, out of every later garbage collection.

    pynetdicom's acceptor forces a full collection every 60 passes of its loop (every 60
    connections under load); walking all of start-up's objects took over 0.1 s, in which
    every association thread stood still. Collected once first, so that no start-up garbage
    is kept for good.
    """
    gc.collect()
    gc.freeze()


def _stop_on_signal() -> threading.Event:
    """Set by SIGINT or SIGTERM. Installed before anything starts, so that a signal during
    start-up (among them `serve`'s own, on a fault of a process it started) still ends in
    the orderly stop rather than the default of dying on the spot."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("%s received: finishing in-flight work", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def _schedule_outputs(scheduler: BackgroundScheduler, config: Config, database: Database) -> None:
    """Publishing runs even with no destination, so that each result version is marked as
    handled; the forwarder only when there is somewhere to send to."""
    from forwarder.job import Forwarder
    from outputs.publish import Publisher

    every = IntervalTrigger(seconds=config.forward.interval_seconds)
    publisher = Publisher(config, database.sessions)
    scheduler.add_job(publisher.run_once, every, id="publish", max_instances=1, coalesce=True)
    if config.forward.destinations:
        forwarder = Forwarder(config, database.sessions)
        scheduler.add_job(forwarder.run_once, every, id="forward", max_instances=1, coalesce=True)
        log.info("results go to %s", ", ".join(d.name for d in config.forward.destinations))


def run(
    config: Config, *, node: bool, worker: bool, web: bool, children: Children | None = None
) -> int:
    """Start the chosen parts (and `children`, more node and worker processes), block until
    SIGINT/SIGTERM, then stop them cleanly."""
    stop = _stop_on_signal()
    database = open_database(config, migrate=True)
    storage = config.storage
    storage.directory.mkdir(parents=True, exist_ok=True)
    log.info(
        "database %s; storage %s (%d MB free, stores refused below %d MB)",
        database.engine.url.render_as_string(hide_password=True),
        storage.directory,
        free_megabytes(storage.directory),
        storage.min_free_mb,
    )
    scheduler = BackgroundScheduler()
    beating: dict[str, dict[str, object]] = {}
    triage = None
    if worker:
        from worker.pipeline import TriageWorker

        try:
            model = load_model(config.model.directory, config.model.name)
        except ModelError as exc:
            log.error("the model did not load: %s", exc)
            return FAULT_STATUS
        log.info(
            "model %s %s loaded from %s (threshold %.3f)",
            model.card.name,
            model.card.version,
            model_dir(config.model.directory, config.model.name),
            model.card.threshold,
        )
        beating["worker"] = {"model": f"{model.card.name} {model.card.version}"}
        triage = TriageWorker(config, database.sessions, model)
        triage.recover_dead_leases()
        scheduler.add_job(
            triage.run_once,
            IntervalTrigger(seconds=config.worker.interval_seconds),
            id="triage",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now().astimezone(),
        )
        _schedule_outputs(scheduler, config, database)
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
        drift = config.drift
        scheduler.add_job(
            _weekly_drift,
            CronTrigger(day_of_week=drift.weekday, hour=drift.at.hour, minute=drift.at.minute),
            args=(config, database),
            id="drift-check",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=3600,
        )
        if storage.keep_days:
            scheduler.add_job(
                _purge,
                CronTrigger(hour=storage.purge_at.hour, minute=storage.purge_at.minute),
                args=(config, database),
                id="retention",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=3600,
            )
            log.info(
                "received files are removed after %d days, at %s local time",
                storage.keep_days,
                storage.purge_at.strftime("%H:%M"),
            )
    dicom_node = None
    if node:
        from dicom_node.server import DicomNode

        beating["node"] = {
            "AE title": config.dicom.ae_title,
            "port": config.dicom.port,
            "address": config.dicom.bind_address,
        }
        if config.dicom.tls:
            beating["node"]["TLS port"] = config.dicom.tls_listen_port
        dicom_node = DicomNode(
            config.dicom,
            config.storage,
            database.sessions,
            config.identity.conflict_policy,
        )
    web_server = None
    if web:
        from web.server import BackgroundServer

        web_server = BackgroundServer(web_application(config, database), config.web)
        beating["web"] = {"port": config.web.port, "address": config.web.bind_address}
    _beat(database, beating)
    scheduler.add_job(
        _beat,
        IntervalTrigger(seconds=HEARTBEAT_SECONDS),
        args=(database, beating),
        id="heartbeat",
        max_instances=1,
        coalesce=True,
    )
    scheduler.start()
    try:
        if dicom_node is not None:
            dicom_node.start()
        if children is not None:
            children.start()
            scheduler.add_job(
                children.watch,
                IntervalTrigger(seconds=HEARTBEAT_SECONDS),
                id="children",
                max_instances=1,
                coalesce=True,
            )
        if web_server is not None:
            if not web_server.start():
                log.error(
                    "the web application did not start on %s:%d; see the lines above",
                    config.web.bind_address,
                    config.web.port,
                )
                return 2
            scheme = "https" if config.web.tls_certificate else "http"
            where = f"{scheme}://{config.web.bind_address}:{config.web.port}/"
            log.info("web application on %s", where)
        _freeze_start_up()
        log.info("ready")
        stop.wait()
    finally:
        if triage is not None:
            triage.stop()
        if children is not None:
            children.terminate()
        if web_server is not None:
            web_server.stop()
        if dicom_node is not None:
            dicom_node.stop()
        if children is not None:
            children.wait(config.dicom.shutdown_grace_seconds)
        scheduler.shutdown(wait=True)
        _stop_beating(database, beating)
        database.engine.dispose()
        log.info("stopped")
    return children.failed_status if children is not None else 0
