"""The `pneumotriage` command: one entry point, one subcommand per job.

Each subcommand imports its package only when chosen, so `history` answers without loading
TensorFlow and `node` starts without it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.config import (
    DEFAULT_CONFIG,
    MAX_LABEL_SMOOTHING,
    MAX_MIXUP,
    MAX_PROCESSES,
    Config,
    ConfigError,
    load_config,
    locate_config,
)
from core.db.migrate import SchemaNotCurrentError
from core.keras_import import import_keras
from core.logs import configure
from core.texts import as_local
from pneumotriage import __version__, preflight
from pneumotriage.preflight import PreflightError

Handler = Callable[[argparse.Namespace, Config], int]
# A check run before anything slow starts; raises PreflightError.
Check = Callable[[argparse.Namespace, Config], None]
log = logging.getLogger("pneumotriage")
# Spelled out rather than imported from training, which would load Keras for every command.
ARCHITECTURES = ("seed-rnn", "cnn", "cnn-lstm", "cnn-lstm-columns")
UNAUGMENTED = ("seed-rnn",)
BALANCES = ("smote", "class-weight", "none")
# Commands that load Keras: imported at once, quietly (core.keras_import), so that neither
# the model's first use nor the training modules' own imports print TensorFlow's notices.
KERAS_COMMANDS = frozenset({"worker", "predict", "train", "evaluate", "compare", "ensemble"})
# Overlays written by `predict --heatmap`: large enough to see ribs, small enough to mail.
HEATMAP_PIXELS = 512


def _moment(text: str) -> datetime:
    """ISO 8601 date or date-time; without an offset it means local time."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date or time like 2026-11-21 or 2026-11-21T06:00"
        ) from None
    return as_local(moment)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-21") from None


def _runs_node(args: argparse.Namespace) -> bool:
    return args.command in {"serve", "node"}


def _checks_worker(args: argparse.Namespace) -> bool:
    """`serve` runs no worker itself, but the ones it starts need the model and the
    destinations checked before anything else starts."""
    return args.command in {"serve", "worker"}


def _runs_web(args: argparse.Namespace) -> bool:
    return args.command in {"serve", "web"}


def _check_service(args: argparse.Namespace, config: Config) -> None:
    preflight.service(
        config, node=_runs_node(args), worker=_checks_worker(args), web=_runs_web(args)
    )


def _check_database_folder(_args: argparse.Namespace, config: Config) -> None:
    preflight.database_folder(config)


def _check_database_file(_args: argparse.Namespace, config: Config) -> None:
    preflight.database_file(config)


def _serve(args: argparse.Namespace, config: Config) -> int:
    """`serve` keeps the node and the web application in this process and runs every worker
    in a process of its own: in one interpreter the worker's conversion and the node's
    association threads take turns at one lock, and the whole path settled a burst at half
    the rate (docs/performance.md, *Whole-path speed*)."""
    from pneumotriage.service import run

    if getattr(args, "follow", None) is not None:
        from pneumotriage.processes import follow_parent

        follow_parent(args.follow)
    children = None
    if args.command == "serve":
        from pneumotriage.processes import Children, environment

        if args.nodes > 1:
            config = config.model_copy(
                update={"dicom": config.dicom.model_copy(update={"reuse_port": True})}
            )
        workers = config.worker.processes if args.workers is None else args.workers
        launch = [sys.executable, "-m", "pneumotriage"]
        if args.config_file is not None:
            launch += ["--config", str(args.config_file.resolve())]
        children = Children(
            launch,
            ["node"] * (args.nodes - 1) + ["worker"] * workers,
            environment(args.nodes > 1),
        )
    return run(
        config,
        node=_runs_node(args),
        worker=args.command == "worker",
        web=_runs_web(args),
        children=children,
    )


def _processes(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_PROCESSES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of processes from 1 to {MAX_PROCESSES}"
        )
    return count


def _db_upgrade(args: argparse.Namespace, config: Config) -> int:
    from core.db.engine import make_engine
    from core.db.migrate import is_current, upgrade

    engine = make_engine(config.database.url)
    if is_current(engine):
        log.info("database is already at the newest schema")
    else:
        upgrade(engine)
        log.info("database upgraded to the newest schema")
    engine.dispose()
    return 0


def _report(args: argparse.Namespace, config: Config) -> int:
    from pneumotriage.service import open_database, produce_report
    from reports.render import ReportWriteError

    if args.since and args.until and args.since >= args.until:
        print("pneumotriage: --since must be before --until", file=sys.stderr)
        return 2
    database = open_database(config, migrate=False)
    try:
        print(produce_report(config, database, args.since, args.until, args.out))
    except ReportWriteError as exc:
        print(f"pneumotriage: {exc}", file=sys.stderr)
        return 2
    finally:
        database.engine.dispose()
    return 0


# What a terminal table shows; CSV and JSON carry every field. In the table a flagged result
# reads FLAGGED in the status column, and `note` holds the identity conflict (first: it
# decides whether the row can be trusted) and the rejection reason.
HISTORY_COLUMNS = (
    "received_at",
    "patient_id",
    "patient_name",
    "accession_number",
    "status",
    "probability",
    "note",
)
STUDY_HISTORY_COLUMNS = (
    "last_received_at",
    "patient_id",
    "patient_name",
    "accession_number",
    "status",
    "images",
    "probability",
    "note",
)


def _note(record: dict[str, object]) -> str:
    conflict = record.get("identity_conflict")
    parts = [f"IDENTITY CONFLICT: {conflict}" if conflict else "", str(record.get("reason") or "")]
    return "; ".join(part for part in parts if part)


def _check_history(args: argparse.Namespace, config: Config) -> None:
    """Chosen columns are checked before anything is read, so a typo is one line."""
    from core.history import HistoryRow, StudyRow

    preflight.database_file(config)
    row = StudyRow if args.level == "study" else HistoryRow
    known = {f.name for f in fields(row)} - {"thumbnail_png", "heatmap_png"} | {"note"}
    unknown = [c for c in args.columns or () if c not in known]
    if unknown:
        raise PreflightError(
            f"no column {', '.join(unknown)} in the {args.level} history; choose from"
            f" {', '.join(sorted(known))}"
        )


def _history(args: argparse.Namespace, config: Config) -> int:
    from core.db.schema import InstanceStatus
    from core.history import HistoryQuery, find, find_studies
    from pneumotriage.output import emit
    from pneumotriage.service import open_database

    query = HistoryQuery(
        patient_id=args.patient_id,
        study_instance_uid=args.study_instance_uid,
        accession_number=args.accession_number,
        study_date_from=args.study_date_from,
        study_date_to=args.study_date_to,
        received_from=args.received_since,
        received_until=args.received_until,
        flagged_only=args.flagged,
        conflicts_only=args.conflicts,
        status=InstanceStatus(args.status) if args.status else None,
        limit=args.limit,
    )
    studies = args.level == "study"
    columns = args.columns or (STUDY_HISTORY_COLUMNS if studies else HISTORY_COLUMNS)
    database = open_database(config, migrate=False)
    with database.sessions() as session:
        rows = find_studies(session, query) if studies else find(session, query)
        records = [row.as_record() for row in rows]
    database.engine.dispose()
    if args.format == "table":
        records = [
            record
            | {
                "note": _note(record),
                "status": "FLAGGED" if record["flagged"] else record["status"],
            }
            for record in records
        ]
    if args.columns and args.format == "csv":
        records = [{c: record.get(c) for c in columns} for record in records]
    emit(records, args.format, columns)
    return 0


def _requeue(args: argparse.Namespace, config: Config) -> int:
    from core.lifecycle import RequeueQuery, requeue
    from pneumotriage.service import open_database

    query = RequeueQuery(
        sop_instance_uids=tuple(args.sop_instance_uid or ()),
        study_instance_uid=args.study_instance_uid,
        reason_contains=args.reason_contains,
        received_from=args.received_since,
        received_until=args.received_until,
    )
    if query.is_empty and not args.all:
        print(
            "pneumotriage: requeue needs a filter, or --all for every rejected instance",
            file=sys.stderr,
        )
        return 2
    database = open_database(config, migrate=False)
    with database.sessions() as session:
        uids = requeue(session, query, _actor(), dry_run=args.dry_run)
        session.commit()
    database.engine.dispose()
    for uid in uids:
        print(uid)
    verb = "would requeue" if args.dry_run else "requeued"
    print(f"{verb} {len(uids)} rejected instance(s)", file=sys.stderr)
    return 0


def _drift(args: argparse.Namespace, config: Config) -> int:
    from core.model_store import ModelError
    from pneumotriage.service import drift_check, open_database

    database = open_database(config, migrate=False)
    try:
        summary, warned = drift_check(config, database)
    except ModelError as exc:
        print(f"pneumotriage: {exc}", file=sys.stderr)
        return 2
    finally:
        database.engine.dispose()
    print(summary)
    return 1 if warned else 0


def _purge(args: argparse.Namespace, config: Config) -> int:
    from core.db.types import utcnow
    from core.disk import MB
    from core.retention import expired, purge
    from pneumotriage.service import open_database

    keep = config.storage.keep_days
    if not keep:
        print(
            "pneumotriage: storage.keep_days is 0: received files are kept for ever",
            file=sys.stderr,
        )
        return 0
    database = open_database(config, migrate=False)
    with database.sessions() as session:
        if args.dry_run:
            items = expired(session, keep, utcnow())
            for item in items:
                print(f"{item.sop_instance_uid}\t{as_local(item.received_at):%Y-%m-%d %H:%M}")
            count, size, verb = len(items), sum(i.file_size for i in items), "would remove"
        else:
            summary = purge(session, config.storage.directory, keep, _actor())
            count, size, verb = summary.files, summary.bytes, "removed"
    database.engine.dispose()
    print(
        f"{verb} {count} received file(s), {size / MB:.1f} MB, older than {keep} days;"
        " results, thumbnails and heatmaps are kept",
        file=sys.stderr,
    )
    return 0


def _status(args: argparse.Namespace, config: Config) -> int:
    from core.service_state import assess, read_state
    from pneumotriage.service import open_database
    from pneumotriage.status_table import show

    database = open_database(config, migrate=False)
    state = read_state(database.sessions, config.storage.directory)
    database.engine.dispose()
    verdict = assess(state, config.storage, config.worker)
    show(state, verdict, args.format)
    return verdict.exit_code


def _threshold(args: argparse.Namespace, config: Config) -> int:
    from sqlalchemy import select

    from core.db.schema import SiteThreshold
    from core.model_store import ModelError, model_dir, read_card
    from core.site_threshold import in_force, set_site_threshold
    from pneumotriage.output import emit
    from pneumotriage.service import open_database

    try:
        card = read_card(model_dir(config.model.directory, args.model or config.model.name))
    except ModelError as exc:
        print(f"pneumotriage: {exc}", file=sys.stderr)
        return 2
    database = open_database(config, migrate=False)
    with database.sessions() as session:
        if args.threshold_command in ("set", "clear"):
            value = args.value if args.threshold_command == "set" else None
            set_site_threshold(session, card, value, args.reason, _actor())
            session.commit()
        current = in_force(session, card)
        history = session.scalars(
            select(SiteThreshold)
            .where(
                SiteThreshold.model_name == card.name, SiteThreshold.model_version == card.version
            )
            .order_by(SiteThreshold.set_at.desc(), SiteThreshold.id.desc())
        ).all()
        records = [
            {
                "set_at": row.set_at,
                "value": "the card's" if row.value is None else f"{row.value:.3f}",
                "set_by": row.set_by,
                "reason": row.reason,
            }
            for row in history
        ]
    database.engine.dispose()
    print(f"{card.name} {card.version}: operating threshold {current.describe()}")
    if args.threshold_command == "show" and records:
        emit(records, "table", ("set_at", "value", "set_by", "reason"))
    return 0


TRUTHS = {"pneumonia": 1, "present": 1, "1": 1, "normal": 0, "absent": 0, "0": 0}


def _truths_from_csv(path: Path) -> dict[str, int]:
    """`uid,truth` rows: a Study or SOP Instance UID, and pneumonia/present/1 or
    normal/absent/0 (any case)."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise PreflightError(f"cannot read {path}: {exc.strerror}") from None
    if not rows or not {"uid", "truth"} <= set(rows[0]):
        raise PreflightError(f"{path}: expected the columns uid,truth")
    truths = {}
    for line, row in enumerate(rows, start=2):
        truth = TRUTHS.get((row["truth"] or "").strip().lower())
        if truth is None:
            raise PreflightError(
                f"{path}, line {line}: truth {row['truth']!r} is not pneumonia or normal"
            )
        truths[(row["uid"] or "").strip()] = truth
    return truths


def _validate(args: argparse.Namespace, config: Config) -> int:
    import json

    import numpy as np

    from core.labelled_scores import readings, scores_of
    from core.model_store import ModelError, model_dir, read_card
    from core.site_threshold import in_force
    from pneumotriage.output import emit
    from pneumotriage.service import open_database
    from training.site_validation import site_figures

    try:
        card = read_card(model_dir(config.model.directory, config.model.name))
        truths = _truths_from_csv(args.labels) if args.labels else None
    except (ModelError, PreflightError) as exc:
        print(f"pneumotriage: {exc}", file=sys.stderr)
        return 2
    database = open_database(config, migrate=False)
    with database.sessions() as session:
        if truths is None:
            truths = readings(session, args.since, args.until)
        scored, unscored = scores_of(session, truths)
        threshold = in_force(session, card)
    database.engine.dispose()
    for uid in unscored:
        print(f"pneumotriage: {uid}: no result on file, left out", file=sys.stderr)
    labels = np.array([item.truth for item in scored])
    scores = np.array([item.score for item in scored])
    target = args.target_sensitivity or config.training.target_sensitivity
    try:
        figures = site_figures(labels, scores, threshold.value, target)
    except ValueError as exc:
        print(f"pneumotriage: {len(scored)} labelled studies with a result: {exc}", file=sys.stderr)
        return 2
    if args.out:
        from training.evaluation import Evaluation
        from training.metrics import evaluate_predictions
        from training.plots import write_plots

        evaluation = Evaluation(
            card, labels, scores, evaluate_predictions(labels, scores, threshold.value)
        )
        for path in write_plots(args.out, evaluation, None):
            print(f"wrote {path}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps({"model": card.name, "model_version": card.version} | figures, indent=2))
        return 0
    print(
        f"{card.name} {card.version} on {figures['n']} labelled studies"
        f" ({figures['positives']} with pneumonia); threshold {threshold.describe()}"
    )

    def shown(entry: dict[str, object]) -> dict[str, object]:
        low_high = entry["ci95"]
        return {
            "value": None if entry["value"] is None else f"{entry['value']:.3f}",
            "95% CI": "" if not low_high else f"{low_high[0]:.3f} - {low_high[1]:.3f}",
        }

    names = ("sensitivity", "specificity", "ppv", "npv", "auc", "ece")
    emit([{"figure": n} | shown(figures[n]) for n in names], "table", ("figure", "value", "95% CI"))
    print(
        f"threshold reaching sensitivity {target:g} on these studies:"
        f" {figures['threshold_for_target']:.3f} (`pneumotriage threshold set` records it)"
    )
    return 0


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a threshold between 0 and 1")
    return value


def _actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


def _in_accounts(config: Config, change: Callable[[Session], str | None]) -> int:
    """Run an account or token command in one transaction. These run at installation,
    often before the service's first start, so they bring the schema up to date like the
    service does. An AccountError is one line and exit 2."""
    from core.accounts import AccountError
    from pneumotriage.service import open_database

    database = open_database(config, migrate=True)
    try:
        with database.sessions() as session:
            said = change(session)
            session.commit()
    except AccountError as exc:
        print(f"pneumotriage: {exc}", file=sys.stderr)
        return 2
    finally:
        database.engine.dispose()
    if said:
        print(said, file=sys.stderr)
    return 0


def _user(args: argparse.Namespace, config: Config) -> int:
    from core.accounts import add_user, disable_user, users
    from core.db.schema import Role
    from pneumotriage.output import emit

    if args.user_command == "add" and not args.password_stdin:
        print(
            "pneumotriage: give the password on standard input with --password-stdin",
            file=sys.stderr,
        )
        return 2
    password = sys.stdin.readline().rstrip("\r\n") if args.user_command == "add" else ""

    def change(session: Session) -> str | None:
        if args.user_command == "add":
            add_user(session, args.name, Role(args.role), password, _actor())
            return f"user {args.name} added ({args.role})"
        if args.user_command == "disable":
            disable_user(session, args.name, _actor())
            return f"user {args.name} disabled; their sessions are ended"
        records = [
            {
                "username": u.username,
                "role": str(u.role),
                "created_at": u.created_at,
                "disabled_at": u.disabled_at,
            }
            for u in users(session)
        ]
        emit(records, args.format, ("username", "role", "created_at", "disabled_at"))
        return None

    return _in_accounts(config, change)


def _token(args: argparse.Namespace, config: Config) -> int:
    from core.accounts import add_token, revoke_token, tokens
    from pneumotriage.output import emit

    def change(session: Session) -> str | None:
        if args.verb == "add":
            print(add_token(session, args.name, _actor()))
            return (
                f"token {args.name} added: send it as 'Authorization: Bearer <token>';"
                " it is shown only now"
            )
        if args.verb == "revoke":
            revoke_token(session, args.name, _actor())
            return f"token {args.name} revoked"
        records = [
            {
                "name": t.name,
                "created_at": t.created_at,
                "last_used_at": t.last_used_at,
                "revoked_at": t.revoked_at,
            }
            for t in tokens(session)
        ]
        emit(records, args.format, ("name", "created_at", "last_used_at", "revoked_at"))
        return None

    return _in_accounts(config, change)


# Study UIDs do not fit beside the detail in a terminal; CSV and JSON carry them.
AUDIT_COLUMNS = ("at", "action", "actor", "detail")


def _audit(args: argparse.Namespace, config: Config) -> int:
    from core.audit import as_record, events
    from pneumotriage.output import emit
    from pneumotriage.service import open_database

    database = open_database(config, migrate=False)
    with database.sessions() as session:
        records = [
            as_record(event)
            for event in events(
                session,
                since=args.since,
                action=args.action,
                actor=args.actor,
                study_instance_uid=args.study_instance_uid,
                limit=args.limit,
            )
        ]
    database.engine.dispose()
    emit(records, args.format, AUDIT_COLUMNS)
    return 0


# Study UIDs and times of creation do not fit a terminal table; CSV and JSON carry them.
OUTBOX_COLUMNS = (
    "id",
    "destination",
    "kind",
    "status",
    "attempts",
    "next_attempt_at",
    "last_error",
)


def _outbox(args: argparse.Namespace, config: Config) -> int:
    from sqlalchemy import select

    from core.db.schema import OutboxItem, OutboxStatus, Study, StudyResult
    from forwarder.outbox import retry
    from pneumotriage.output import emit
    from pneumotriage.service import open_database

    database = open_database(config, migrate=False)
    with database.sessions() as session:
        if args.retry or args.retry_failed:
            count = retry(session, args.retry or None)
            print(f"queued {count} failed object(s) again", file=sys.stderr)
            database.engine.dispose()
            return 0
        statement = (
            select(OutboxItem, Study.study_instance_uid)
            .join(StudyResult, OutboxItem.study_result_fk == StudyResult.id)
            .join(Study, StudyResult.study_fk == Study.id)
            .order_by(OutboxItem.id.desc())
        )
        if args.status:
            statement = statement.where(OutboxItem.status == OutboxStatus(args.status))
        if args.destination:
            statement = statement.where(OutboxItem.destination == args.destination)
        if args.limit:
            statement = statement.limit(args.limit)
        records = [
            {
                "id": item.id,
                "created_at": item.created_at,
                "destination": item.destination,
                "kind": item.kind,
                "study_instance_uid": study_uid,
                "sop_instance_uid": item.sop_instance_uid,
                "status": OutboxStatus(item.status).value,
                "attempts": item.attempts,
                "next_attempt_at": item.next_attempt_at,
                "last_status": item.last_status,
                "last_error": item.last_error,
                "sent_at": item.sent_at,
            }
            for item, study_uid in session.execute(statement)
        ]
    database.engine.dispose()
    emit(records, args.format, OUTBOX_COLUMNS)
    return 0


def _export(args: argparse.Namespace, config: Config) -> int:
    from outputs.export import export_study
    from pneumotriage.service import open_database

    database = open_database(config, migrate=False)
    with database.sessions() as session:
        written = export_study(session, config, args.study_instance_uid, args.directory)
    database.engine.dispose()
    if not written:
        print(
            f"pneumotriage: study {args.study_instance_uid} has no study-level result yet"
            " (unknown, still being triaged, or every image rejected)",
            file=sys.stderr,
        )
        return 2
    for path in written:
        print(path)
    return 0


PREDICT_COLUMNS = ("file", "label", "probability", "flagged", "error")
# Anything else in a file name is replaced, so a name is safe on every file system.
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _heatmap_name(index: int, path: Path) -> str:
    """Position first, so names are unique and sort like the command line. A DICOM file's
    name may hold the patient's name (some PACS exports do), so a DICOM input is named by
    its SOP Instance UID, or `NNN-dicom` when that is missing or odd."""
    from core.pixels import is_dicom_file

    if path.is_file() and is_dicom_file(path):
        from pydicom import dcmread
        from pydicom.errors import InvalidDicomError

        try:
            header = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            uid = str(header.get("SOPInstanceUID", ""))
        except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
            uid = ""
        label = uid if re.fullmatch(r"[0-9.]{1,64}", uid) else "dicom"
    else:
        label = _UNSAFE_NAME.sub("_", path.stem)[:80] or "image"
    return f"{index:03d}-{label}.png"


def _predict(args: argparse.Namespace, config: Config) -> int:
    from core.intake import read_model_input
    from core.model_store import ModelError, load_model
    from core.pixels import ConversionError, convert_file
    from pneumotriage.output import emit

    try:
        model = load_model(config.model.directory, args.model or config.model.name)
    except ModelError as exc:
        print(f"pneumotriage: {exc}", file=sys.stderr)
        return 2
    card = model.card
    heatmaps = None
    if args.heatmap:
        from core.heatmap import HeatmapModel, NoHeatmapError
        from core.heatmap_render import CAPTION, overlay_png

        try:
            heatmaps = HeatmapModel(card, model.keras_model)
        except NoHeatmapError as exc:
            print(f"pneumotriage: model {card.name}: {exc}", file=sys.stderr)
            return 2
        try:
            args.heatmap.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"pneumotriage: cannot create {args.heatmap}: {exc.strerror}", file=sys.stderr)
            return 2
        print(f"pneumotriage: heatmaps in {args.heatmap}. {CAPTION}", file=sys.stderr)
    records, failed = [], 0
    for index, path in enumerate(args.files, start=1):
        record: dict[str, object] = {
            "file": str(path),
            "label": None,
            "probability": None,
            "flagged": None,
            "error": None,
        }
        if heatmaps is not None:
            record["heatmap"] = None
        try:
            pixels = read_model_input(path, config.selection, card.input_size).pixels
            refusal = model.refusal(pixels)
            if refusal:
                raise ConversionError(refusal)
        except ConversionError as exc:
            failed += 1
            record["error"] = str(exc)
            print(f"pneumotriage: {path}: {exc}", file=sys.stderr)
        else:
            if heatmaps is not None:
                explained = heatmaps.explain(pixels[None])
                probability = float(explained.probabilities[0])
                written = args.heatmap / _heatmap_name(index, path)
                # The radiograph converted again at the overlay's size, so ribs stay sharp
                # instead of being the 150-pixel model input blown up.
                display = convert_file(path, HEATMAP_PIXELS).pixels
                written.write_bytes(overlay_png(display, explained.maps[0], HEATMAP_PIXELS))
                record["heatmap"] = str(written)
            else:
                probability = float(model.predict(pixels[None])[0])
            label = card.label_for(probability)
            record |= {
                "label": label,
                "probability": round(probability, 4),
                "flagged": label == card.positive_class,
            }
        records.append(
            record
            | {"threshold": card.threshold, "model": card.name, "model_version": card.version}
        )
    emit(records, args.format, PREDICT_COLUMNS + (("heatmap",) if heatmaps is not None else ()))
    return 1 if failed else 0


def _ensemble(args: argparse.Namespace, config: Config) -> int:
    from training.ensemble import EnsembleError, EnsembleRequest, build_ensemble

    try:
        build_ensemble(
            EnsembleRequest(
                members=tuple(args.members),
                models_directory=config.model.directory,
                data=args.data or config.training.data_directory,
                output=args.out or config.model.directory / args.name,
                target_sensitivity=args.target_sensitivity or config.training.target_sensitivity,
                command=shlex.join(["pneumotriage", *sys.argv[1:]]),
                calibration_copies=config.training.calibration_copies,
            )
        )
    except EnsembleError as exc:
        print(f"pneumotriage: {exc}", file=sys.stderr)
        return 2
    return 0


def _check_model_folder(args: argparse.Namespace, config: Config) -> None:
    preflight.model_folder(config.model, args.model)


def _check_train(args: argparse.Namespace, config: Config) -> None:
    """Before Keras loads and images convert: the model a run starts from must exist, and
    the augmentation, mixup and label smoothing asked for must be ones the run can use."""
    if args.member and not args.init_from:
        raise PreflightError("--member needs --init-from (the ensemble it is in)")
    if args.init_from:
        preflight.model_folder(config.model, args.init_from)
    known = config.training.augmentations
    if args.augmentation is not None and args.augmentation not in known:
        raise PreflightError(
            f"--augmentation {args.augmentation}: the configuration has no"
            f" [training.augmentations.{args.augmentation}] (there are: {', '.join(sorted(known))})"
        )
    if args.augmentation is not None and args.architecture in UNAUGMENTED:
        raise PreflightError(f"--augmentation: {args.architecture} trains without augmentation")
    if args.mixup is not None and not 0 <= args.mixup <= MAX_MIXUP:
        raise PreflightError(
            f"--mixup is a Beta parameter between 0 and {MAX_MIXUP}, not {args.mixup}"
        )
    smoothing = args.label_smoothing
    if smoothing is not None and not 0 <= smoothing < MAX_LABEL_SMOOTHING:
        raise PreflightError(
            f"--label-smoothing is at least 0 and below {MAX_LABEL_SMOOTHING}, not {smoothing}"
        )


def _fit_in_model_folder(
    args: argparse.Namespace, config: Config, fit: Callable[[Path, Path, str], dict[str, Any]]
) -> tuple[Path, dict[str, Any]] | None:
    """Run a fit that writes into a model folder's card (calibration, content check) on the
    folder `--model` names and its split's data; None, having said why, when it cannot."""
    from core.model_store import ModelError, model_dir
    from training.data import DataError

    try:
        folder = model_dir(config.model.directory, args.model or config.model.name)
        data = args.data or config.training.data_directory
        return folder, fit(folder, data, shlex.join(["pneumotriage", *sys.argv[1:]]))
    except (ModelError, DataError) as exc:
        print(f"pneumotriage: {exc}", file=sys.stderr)
        return None


def _calibrate(args: argparse.Namespace, config: Config) -> int:
    from core.model_store import read_card
    from training.calibration import fit_calibration

    copies = config.training.calibration_copies
    fitted = _fit_in_model_folder(
        args, config, lambda folder, data, command: fit_calibration(folder, data, command, copies)
    )
    if fitted is None:
        return 2
    folder, entry = fitted
    card = read_card(folder)
    print(
        f"{folder.name}: calibrated (a {entry['a']:.3f}, b {entry['b']:.3f}, c"
        f" {entry['c']:.3f}); validation ECE {entry['uncalibrated_ece']:.3f} before,"
        f" {entry['ece']:.3f} after; threshold {card.threshold:.3f}; version {card.version}"
    )
    if "warning" in entry:
        print(f"pneumotriage: warning: {entry['warning']}", file=sys.stderr)
    return 0


def _content_check(args: argparse.Namespace, config: Config) -> int:
    from training.content_check import fit_content_check

    fitted = _fit_in_model_folder(args, config, fit_content_check)
    if fitted is None:
        return 2
    folder, entry = fitted
    print(
        f"{folder.name}: content check fitted; limits {entry['limit']:.1f} (distance) and"
        f" {entry['orientation_limit']:.3f} (upright); passes {entry['validation_pass_rate']:.1%}"
        " of the validation radiographs"
    )
    return 0


def _augmentation_strengths(config: Config, name: str) -> dict[str, float]:
    return config.training.augmentations[name].model_dump()


def _train(args: argparse.Namespace, config: Config) -> int:
    from core.model_store import model_dir
    from training.balance import Balance
    from training.data import DataError
    from training.train import TrainError, TrainRequest, train

    output = args.out or config.model.directory / (args.name or args.architecture)
    augmentation = args.augmentation or config.training.augmentation
    init_from = model_dir(config.model.directory, args.init_from) if args.init_from else None
    try:
        train(
            TrainRequest(
                data=args.data or config.training.data_directory,
                labels_csv=args.labels,
                architecture=args.architecture,
                balance=Balance(args.balance),
                output=output,
                seed=config.training.seed if args.seed is None else args.seed,
                split_seed=config.training.seed,
                validation_fraction=config.training.validation_fraction,
                target_sensitivity=args.target_sensitivity or config.training.target_sensitivity,
                input_size=config.training.input_size,
                command=shlex.join(["pneumotriage", *sys.argv[1:]]),
                calibration_copies=config.training.calibration_copies,
                epochs=args.epochs,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                fixed_threshold=args.threshold,
                init_from=init_from,
                init_member=args.member,
                average_from_epoch=args.average_from_epoch,
                augmentation_name=augmentation,
                augmentation=_augmentation_strengths(config, augmentation),
                mixup=config.training.mixup if args.mixup is None else args.mixup,
                label_smoothing=(
                    config.training.label_smoothing
                    if args.label_smoothing is None
                    else args.label_smoothing
                ),
            )
        )
    except (TrainError, DataError) as exc:
        print(f"pneumotriage: {exc}", file=sys.stderr)
        return 2
    return 0


def _evaluate(args: argparse.Namespace, config: Config) -> int:
    import json

    from core.model_store import ModelError, load_model, model_dir
    from training.data import DataError, discover, load_images
    from training.evaluation import evaluate_model
    from training.plots import write_plots
    from training.split import SPLIT_FILE, read_split
    from training.summary import print_summary
    from training.train import HISTORY_FILE

    name = args.model or config.model.name
    if args.data is None and not args.validation_part:
        print("pneumotriage: evaluate needs --data, or --validation-part", file=sys.stderr)
        return 2
    try:
        model = load_model(config.model.directory, name)
        if args.validation_part:
            split = model_dir(config.model.directory, name) / SPLIT_FILE
            data = args.data or config.training.data_directory
            samples = read_split(split, data, "validation")
        else:
            samples = discover(args.data, args.labels)
        images = load_images(samples, model.card.input_size)
    except (ModelError, DataError, FileNotFoundError) as exc:
        print(f"pneumotriage: {exc}", file=sys.stderr)
        return 2
    trained_on = model.card.training.get("data")
    if (
        not args.validation_part
        and trained_on
        and args.data.resolve() == Path(trained_on).resolve()
    ):
        log.warning("these are the images %s was trained on: the figures flatter it", name)
    evaluation = evaluate_model(model, images)
    plots = []
    if args.out:
        history = model_dir(config.model.directory, name) / HISTORY_FILE
        plots = write_plots(args.out, evaluation, history)
    record = evaluation.record()
    if args.format == "json":
        print(json.dumps(record | {"plots": [str(p) for p in plots]}, indent=2))
    else:
        print_summary(record, plots)
    return 0


def _compare(args: argparse.Namespace, config: Config) -> int:
    import tempfile

    from training.balance import Balance
    from training.compare import CompareRequest, comparison_markdown, run_all

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pneumotriage-compare-"))
    if workdir.resolve().is_relative_to(config.model.directory):
        print(f"pneumotriage: --workdir must lie outside {config.model.directory}", file=sys.stderr)
        return 2
    request = CompareRequest(
        data=args.data or config.training.data_directory,
        labels_csv=args.labels,
        architectures=tuple(dict.fromkeys(args.architectures)),
        balances=tuple(Balance(b) for b in dict.fromkeys(args.balances)),
        workdir=workdir,
        seed=config.training.seed,
        validation_fraction=config.training.validation_fraction,
        target_sensitivity=config.training.target_sensitivity,
        input_size=config.training.input_size,
        command=shlex.join(["pneumotriage", *sys.argv[1:]]),
        calibration_copies=config.training.calibration_copies,
        augmentation_name=config.training.augmentation,
        augmentation=_augmentation_strengths(config, config.training.augmentation),
        mixup=config.training.mixup,
        label_smoothing=config.training.label_smoothing,
        epochs=args.epochs,
    )
    started = datetime.now().astimezone()
    log.info("comparison runs go to %s", workdir)
    markdown = comparison_markdown(request, run_all(request), started)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown, encoding="utf-8")
        log.info("wrote %s", args.out)
    print(markdown, end="")
    return 0


def _add_service_commands(
    commands: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    for name, text in (
        ("serve", "run the DICOM node, the triage worker and the nightly report together"),
        ("node", "run the DICOM node alone (receive and store)"),
        ("worker", "run the triage worker and the nightly report, without the DICOM node"),
        ("web", "run the web application alone (worklist, study view, history, status)"),
    ):
        command = commands.add_parser(name, help=text, parents=[common])
        command.set_defaults(handler=_serve, preflight=_check_service)
        if name in {"node", "worker"}:
            # Given by `serve` to the processes it starts, which stop when it is gone.
            command.add_argument("--follow", type=int, metavar="PID", help=argparse.SUPPRESS)
        if name == "serve":
            command.add_argument(
                "--nodes",
                type=_processes,
                default=1,
                metavar="N",
                help="DICOM node processes sharing dicom.port (default 1)",
            )
            command.add_argument(
                "--workers",
                type=_processes,
                metavar="N",
                help="triage worker processes, started beside this one (default: worker.processes)",
            )
    db = commands.add_parser("db", help="database maintenance", parents=[common])
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_commands.add_parser(
        "upgrade", help="apply migrations up to the newest schema", parents=[common]
    ).set_defaults(handler=_db_upgrade, preflight=_check_database_folder)


def _add_account_commands(
    commands: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    user = commands.add_parser("user", help="web application accounts", parents=[common])
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = user_commands.add_parser("add", help="add an account", parents=[common])
    add.add_argument("name")
    add.add_argument("--role", choices=["radiologist", "admin"], required=True)
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    listing = user_commands.add_parser("list", help="list the accounts", parents=[common])
    listing.add_argument("--format", choices=["table", "csv", "json"], default="table")
    disable = user_commands.add_parser(
        "disable", help="disable an account and end its sessions", parents=[common]
    )
    disable.add_argument("name")
    user.set_defaults(handler=_user, preflight=_check_database_folder, format="table")

    token = commands.add_parser(
        "token", help="API tokens for scripts and the RIS", parents=[common]
    )
    token_commands = token.add_subparsers(dest="verb", required=True, metavar="ACTION")
    token_commands.add_parser(
        "add", help="make a token; printed once", parents=[common]
    ).add_argument("name")
    token_list = token_commands.add_parser("list", help="list the tokens", parents=[common])
    token_list.add_argument("--format", choices=["table", "csv", "json"], default="table")
    token_commands.add_parser("revoke", help="revoke a token", parents=[common]).add_argument(
        "name"
    )
    token.set_defaults(handler=_token, preflight=_check_database_folder, format="table")

    audit = commands.add_parser(
        "audit", help="the audit trail: sign-ins, views, feedback, changes", parents=[common]
    )
    audit.add_argument("--since", type=_moment, metavar="TIME")
    audit.add_argument("--action")
    audit.add_argument("--actor")
    audit.add_argument("--study-instance-uid", metavar="UID")
    audit.add_argument("--limit", type=int, default=500)
    audit.add_argument("--format", choices=["table", "csv", "json"], default="table")
    audit.set_defaults(handler=_audit, preflight=_check_database_file)


def _add_query_commands(
    commands: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    report = commands.add_parser(
        "report", help="render the HTML triage report of a period", parents=[common]
    )
    report.add_argument("--since", type=_moment, help="start (default: --until minus period)")
    report.add_argument("--until", type=_moment, help="end (default: now)")
    report.add_argument(
        "--out", type=Path, help="HTML file, or a folder for it (default: reports.directory)"
    )
    report.set_defaults(handler=_report, preflight=_check_database_file)

    history = commands.add_parser("history", help="query the result history", parents=[common])
    history.add_argument("--patient-id")
    history.add_argument("--study-instance-uid", metavar="UID")
    history.add_argument("--accession-number")
    history.add_argument("--study-date-from", type=_day, metavar="DATE")
    history.add_argument("--study-date-to", type=_day, metavar="DATE")
    history.add_argument("--received-since", type=_moment, metavar="TIME")
    history.add_argument("--received-until", type=_moment, metavar="TIME")
    history.add_argument("--flagged", action="store_true", help="flagged results only")
    history.add_argument(
        "--conflicts", action="store_true", help="instances in an identity conflict only"
    )
    history.add_argument("--status", choices=["pending", "processing", "triaged", "rejected"])
    history.add_argument("--limit", type=int)
    history.add_argument(
        "--level",
        choices=["instance", "study"],
        default="instance",
        help="one row per image (default), or per study with its study-level result",
    )
    history.add_argument("--format", choices=["table", "csv", "json"], default="table")
    history.add_argument(
        "--columns",
        type=lambda text: [c.strip() for c in text.split(",") if c.strip()],
        metavar="A,B,...",
        help="the table's and CSV's columns, e.g. received_at,accession_number,status"
        " (JSON has every field)",
    )
    history.set_defaults(handler=_history, preflight=_check_history)

    requeue = commands.add_parser(
        "requeue",
        help="give rejected instances a fresh set of attempts (audited)",
        parents=[common],
    )
    requeue.add_argument("--sop-instance-uid", action="append", metavar="UID")
    requeue.add_argument("--study-instance-uid", metavar="UID")
    requeue.add_argument("--reason-contains", metavar="TEXT")
    requeue.add_argument("--received-since", type=_moment, metavar="TIME")
    requeue.add_argument("--received-until", type=_moment, metavar="TIME")
    requeue.add_argument("--all", action="store_true", help="every rejected instance")
    requeue.add_argument("--dry-run", action="store_true", help="list, change nothing")
    requeue.set_defaults(handler=_requeue, preflight=_check_database_file)

    threshold = commands.add_parser(
        "threshold",
        help="the operating threshold in force: the model card's, or one set for this site",
        parents=[common],
    )
    threshold_commands = threshold.add_subparsers(
        dest="threshold_command", required=True, metavar="ACTION"
    )
    show = threshold_commands.add_parser(
        "show", help="the threshold in force and its history", parents=[common]
    )
    setting = threshold_commands.add_parser(
        "set", help="set this site's threshold (audited; workers use it at once)", parents=[common]
    )
    setting.add_argument("value", type=_fraction, metavar="VALUE")
    clearing = threshold_commands.add_parser(
        "clear", help="return to the model card's threshold (audited)", parents=[common]
    )
    for action in (setting, clearing):
        action.add_argument("--reason", required=True, help="why, for the record")
    for action in (show, setting, clearing):
        action.add_argument("--model", help="model name (default: model.name)")
        action.set_defaults(handler=_threshold, preflight=_check_database_file)

    validate = commands.add_parser(
        "validate",
        help="the model's figures on this site's labelled studies, with 95%% intervals",
        parents=[common],
    )
    truth = validate.add_mutually_exclusive_group(required=True)
    truth.add_argument("--labels", type=Path, help="CSV with uid,truth (Study or SOP UIDs)")
    truth.add_argument(
        "--readings", action="store_true", help="the radiologists' readings in the web app"
    )
    validate.add_argument("--since", type=_moment, metavar="TIME", help="readings from")
    validate.add_argument("--until", type=_moment, metavar="TIME", help="readings until")
    validate.add_argument("--target-sensitivity", type=_fraction)
    validate.add_argument("--out", type=Path, help="folder for the PNG plots")
    validate.add_argument("--format", choices=["table", "json"], default="table")
    validate.set_defaults(handler=_validate, preflight=_check_database_file)

    purge = commands.add_parser(
        "purge",
        help="remove received files older than storage.keep_days (results stay; audited)",
        parents=[common],
    )
    purge.add_argument("--dry-run", action="store_true", help="list, remove nothing")
    purge.set_defaults(handler=_purge, preflight=_check_database_file)

    drift = commands.add_parser(
        "drift",
        help="compare the last drift.days of scores with the model's validation scores now"
        " (recorded; exit 1 when they have moved)",
        parents=[common],
    )
    drift.set_defaults(handler=_drift, preflight=_check_database_file)

    status = commands.add_parser(
        "status",
        help="the service's state; exit 0 healthy, 1 warning, 2 critical (a monitoring check)",
        parents=[common],
    )
    status.add_argument("--format", choices=["table", "json"], default="table")
    # A monitoring check's output is its verdict: no start-up line beside it.
    status.set_defaults(handler=_status, preflight=_check_database_file, start_up_line=False)

    outbox = commands.add_parser(
        "outbox",
        help="list the DICOM outputs queued for the PACS; retry failed ones",
        parents=[common],
    )
    outbox.add_argument("--status", choices=["pending", "sending", "sent", "failed"])
    outbox.add_argument("--destination", metavar="AE@HOST:PORT")
    outbox.add_argument("--limit", type=int)
    outbox.add_argument("--retry", type=int, nargs="+", metavar="ID", help="queue these again")
    outbox.add_argument("--retry-failed", action="store_true", help="queue every failed again")
    outbox.add_argument("--format", choices=["table", "csv", "json"], default="table")
    outbox.set_defaults(handler=_outbox, preflight=_check_database_file)

    export = commands.add_parser(
        "export",
        help="write a study's triage SR and Secondary Captures as DICOM files",
        parents=[common],
    )
    export.add_argument("study_instance_uid", metavar="STUDY_UID")
    export.add_argument("directory", type=Path, metavar="DIR")
    export.set_defaults(handler=_export, preflight=_check_database_file)

    predict = commands.add_parser(
        "predict", help="classify DICOM, JPEG or PNG files directly", parents=[common]
    )
    predict.add_argument("files", nargs="+", type=Path, metavar="FILE")
    predict.add_argument("--model", help="model name or folder (default: model.name)")
    predict.add_argument("--format", choices=["table", "csv", "json"], default="table")
    predict.add_argument(
        "--heatmap",
        type=Path,
        metavar="DIR",
        help="also write a heatmap overlay PNG per image into DIR (a visual aid only)",
    )
    predict.set_defaults(handler=_predict)


def _add_training_commands(
    commands: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    fits = (
        (
            "calibrate",
            "fit the map from raw scores to probabilities on a model's validation patients"
            " (a new model version: site thresholds of the old one stop applying)",
            _calibrate,
        ),
        (
            "content-check",
            "fit the check that refuses what is not a frontal chest radiograph, on a"
            " model's own split (writes content_check.npz and the card's limits)",
            _content_check,
        ),
    )
    for name, help_text, handler in fits:
        fit = commands.add_parser(name, help=help_text, parents=[common])
        fit.add_argument("--model", help="model name or folder (default: model.name)")
        fit.add_argument("--data", type=Path, help="the training data folder of its split")
        fit.set_defaults(handler=handler, preflight=_check_model_folder)

    ensemble = commands.add_parser(
        "ensemble", help="average trained models into one model with its card", parents=[common]
    )
    ensemble.add_argument(
        "members",
        nargs="+",
        metavar="MODEL",
        help="model names or folders; an ensemble adds each of its members",
    )
    ensemble.add_argument("--name", required=True, help="name of the new model")
    ensemble.add_argument("--out", type=Path, help="model folder (default: models/<name>)")
    ensemble.add_argument("--data", type=Path, help="the members' training data folder")
    ensemble.add_argument("--target-sensitivity", type=float)
    ensemble.set_defaults(handler=_ensemble)
    train = commands.add_parser(
        "train", help="train a model and write it with its card", parents=[common]
    )
    train.add_argument("--data", type=Path, help="class folders, or files listed in --labels")
    train.add_argument("--labels", type=Path, help="CSV with path,label[,patient] columns")
    train.add_argument("--architecture", choices=ARCHITECTURES, default="seed-rnn")
    train.add_argument("--balance", choices=BALANCES, default="smote")
    train.add_argument("--name", help="model name (default: the architecture)")
    train.add_argument("--out", type=Path, help="model folder (default: models/<name>)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--learning-rate", type=float)
    train.add_argument(
        "--target-sensitivity", type=float, help="choose the threshold for this sensitivity"
    )
    train.add_argument(
        "--threshold", type=float, help="fixed operating threshold instead (0.5 = argmax)"
    )
    train.add_argument(
        "--seed",
        type=int,
        help="initialisation, shuffling and augmentation seed; the split"
        " always uses training.seed so that models share their validation patients",
    )
    train.add_argument(
        "--init-from",
        metavar="MODEL",
        help="start from this trained model's weights (name or folder) instead of new ones",
    )
    train.add_argument("--member", help="with --init-from an ensemble: the member to start from")
    train.add_argument(
        "--average-from-epoch",
        type=int,
        metavar="N",
        help="stochastic weight averaging: ship the mean of the weights after epochs N and"
        " later, at a constant learning rate",
    )
    train.add_argument(
        "--augmentation",
        metavar="NAME",
        help="the [training.augmentations] table to augment with (default: training.augmentation)",
    )
    train.add_argument(
        "--mixup",
        type=float,
        metavar="ALPHA",
        help="blend training images in pairs, shares drawn from Beta(ALPHA, ALPHA); 0 = off"
        " (default: training.mixup)",
    )
    train.add_argument(
        "--label-smoothing",
        type=float,
        metavar="E",
        help="train towards 1 - E/2 and E/2 instead of 1 and 0 (default: training.label_smoothing)",
    )
    train.set_defaults(handler=_train, preflight=_check_train)


def _add_evaluation_commands(
    commands: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="score a model on labelled images, with figures and plots",
        parents=[common],
    )
    evaluate.add_argument("--data", type=Path, help="class folders, or files listed in --labels")
    evaluate.add_argument(
        "--validation-part",
        action="store_true",
        help="score the validation part of the model's own split.csv; --data is then the "
        "training folder (default: training.data_directory)",
    )
    evaluate.add_argument("--labels", type=Path, help="CSV with path,label[,patient] columns")
    evaluate.add_argument("--model", help="model name or folder (default: model.name)")
    evaluate.add_argument("--format", choices=["table", "json"], default="table")
    evaluate.add_argument("--out", type=Path, help="folder for the PNG plots")
    evaluate.set_defaults(handler=_evaluate)

    compare = commands.add_parser(
        "compare",
        help="train every architecture with and without SMOTE; write the comparison table",
        parents=[common],
    )
    compare.add_argument("--data", type=Path, help="class folders, or files listed in --labels")
    compare.add_argument("--labels", type=Path, help="CSV with path,label[,patient] columns")
    compare.add_argument("--out", type=Path, help="Markdown file for the table")
    compare.add_argument("--epochs", type=int, help="epochs per run (default: each architecture's)")
    compare.add_argument(
        "--architectures", nargs="+", choices=ARCHITECTURES, default=list(ARCHITECTURES)
    )
    compare.add_argument("--balances", nargs="+", choices=BALANCES, default=["smote", "none"])
    compare.add_argument(
        "--workdir", type=Path, help="folder for the runs' models (default: a new temporary one)"
    )
    compare.set_defaults(handler=_compare)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"configuration file (default: {DEFAULT_CONFIG} in the current folder if there is"
        " one, else the embedded defaults)",
    )
    parser = argparse.ArgumentParser(
        prog="pneumotriage",
        description="DICOM triage node that flags likely pneumonia on chest radiographs.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"pneumotriage {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_service_commands(commands, common)
    _add_query_commands(commands, common)
    _add_account_commands(commands, common)
    _add_training_commands(commands, common)
    _add_evaluation_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    source = locate_config(getattr(args, "config", None))
    check: Check | None = getattr(args, "preflight", None)
    try:
        config = load_config(source)
        if check is not None:
            check(args, config)
    except (ConfigError, PreflightError) as exc:
        for line in str(exc).splitlines():
            print(f"pneumotriage: {line}", file=sys.stderr)
        return 2
    configure(config.logging.level, config.logging.format)
    log.log(
        logging.INFO if getattr(args, "start_up_line", True) else logging.DEBUG,
        "pneumotriage %s; configuration: %s",
        __version__,
        source.resolve() if source else f"embedded defaults (no {DEFAULT_CONFIG} in {Path.cwd()})",
    )
    args.config_file = source
    handler: Handler = args.handler
    if args.command in KERAS_COMMANDS:
        import_keras()
    try:
        return handler(args, config)
    except SchemaNotCurrentError as exc:
        print(f"pneumotriage: {exc}", file=sys.stderr)
        return 2
    except OperationalError as exc:
        database = make_url(config.database.url).render_as_string(hide_password=True)
        reason = " ".join(str(exc.orig).split())
        print(f"pneumotriage: cannot use the database {database}: {reason}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader (`| head`) has gone; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
