"""From a new study result to DICOM objects on disk and rows in the outbox, in one step.

Each new study result version is published once: its SR and Secondary Captures are built,
written durably under `storage/outputs/`, and queued for each destination that wants them,
in the same transaction that marks the version published. A crash in between leaves the
version unpublished; building it again gives the same UIDs, so nothing is sent twice.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.config import Config, Destination
from core.db.outage import DatabaseOutage
from core.db.schema import (
    Instance,
    InstanceStatus,
    OutboxItem,
    Result,
    Series,
    StudyResult,
)
from core.db.types import utcnow
from core.heatmap_render import map_from_png, overlay
from core.intake import read_model_input
from core.pixels import ConversionError
from outputs.outcome import ImageOutcome, StudyOutcome
from outputs.secondary_capture import build_capture
from outputs.structured_report import build_report

log = logging.getLogger(__name__)

OUTPUTS = "outputs"
PUBLISH_BATCH = 20


@dataclass(frozen=True)
class Built:
    kind: str
    dataset: Dataset

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)


def gather(session: Session, version: StudyResult, storage: Path) -> StudyOutcome:
    """The study result with the headers of its triaged images, read from storage; those
    whose files retention has removed (storage.keep_days) are left out of a new version."""
    rows = session.execute(
        select(Instance.file_path, Result)
        .join(Result, Result.instance_fk == Instance.id)
        .join(Series, Instance.series_fk == Series.id)
        .where(
            Series.study_fk == version.study_fk,
            Instance.status == InstanceStatus.TRIAGED,
            Instance.purged_at.is_(None),
        )
        .order_by(Instance.received_at, Instance.id)
    ).all()
    images = tuple(
        ImageOutcome(
            source=dcmread(storage / path, stop_before_pixels=True),
            path=storage / path,
            probability=result.probability,
            label=result.label,
            flagged=result.flagged,
            threshold=result.threshold,
            heatmap=map_from_png(result.heatmap_png),
        )
        for path, result in rows
    )
    return StudyOutcome(
        study_instance_uid=version.study.study_instance_uid,
        study_row=version.study_fk,
        version=version.version,
        probability=version.probability,
        label=version.label,
        flagged=version.flagged,
        threshold=version.threshold,
        rule=version.rule,
        model_name=version.model_name,
        model_version=version.model_version,
        images=images,
    )


def _picture(image: ImageOutcome, config: Config) -> np.ndarray:
    """The model's view of the image at `forward.sc_pixels`, with the heatmap laid on."""
    size = config.forward.sc_pixels
    grey = read_model_input(image.path, config.selection, size).pixels
    return overlay(grey, image.heatmap, size)


def build(outcome: StudyOutcome, config: Config, kinds: set[str]) -> list[Built]:
    built = []
    if "sr" in kinds:
        built.append(Built("sr", build_report(outcome)))
    if "sc" in kinds:
        every = config.forward.secondary_capture == "all"
        for image in outcome.images:
            if every or image.flagged:
                try:
                    rgb = _picture(image, config)
                except ConversionError as exc:
                    log.warning("no secondary capture for %s: %s", image.sop_instance_uid, exc)
                    continue
                built.append(Built("sc", build_capture(outcome, image, rgb)))
    return built


def write_durably(dataset: Dataset, path: Path) -> None:
    """Written beside its final name, forced to disk and renamed, as received files are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    try:
        dataset.save_as(partial, enforce_file_format=True)
        with partial.open("rb") as handle:
            os.fsync(handle.fileno())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    descriptor = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def output_path(outcome: StudyOutcome, built: Built) -> str:
    """Named by UIDs only, under the storage folder; no patient data in a file name."""
    return f"{OUTPUTS}/{outcome.uid('folder')}/{built.sop_instance_uid}.dcm"


def _wanted(destination: Destination, version: StudyResult) -> set[str]:
    if destination.studies == "flagged" and not version.flagged:
        return set()
    return set(destination.send)


class Publisher:
    def __init__(self, config: Config, sessions: sessionmaker[Session]) -> None:
        self.config = config
        self.sessions = sessions
        self.storage = config.storage.directory
        self.outage = DatabaseOutage(log, "publishing", config.worker.outage_backoff_max_seconds)

    def run_once(self) -> int:
        """Publish the new study result versions; return how many objects were queued."""
        if self.outage.should_skip():
            return 0
        queued = 0
        # Versions that failed in this run: the next run tries them again, and they do not
        # hold up the versions behind them meanwhile.
        failed: set[int] = set()
        try:
            with self.sessions() as session:
                for _ in range(PUBLISH_BATCH):
                    version = self._next(session, failed)
                    if version is None:
                        break
                    version_id = version.id
                    try:
                        queued += self._publish(session, version)
                    except IntegrityError:
                        session.rollback()
                        if not self._published_elsewhere(session, version_id):
                            log.error("study result %d not published: outputs clash", version_id)
                            failed.add(version_id)
                    except (OSError, ValueError, ConversionError, InvalidDicomError) as exc:
                        session.rollback()
                        log.error("study result %d not published: %s", version_id, exc)
                        failed.add(version_id)
        except SQLAlchemyError as exc:
            self.outage.failed(exc)
            return queued
        self.outage.succeeded()
        return queued

    @staticmethod
    def _next(session: Session, failed: set[int]) -> StudyResult | None:
        """The oldest unpublished version, locked until it is published, so that the
        publishers of several worker processes each take a different one (PostgreSQL)."""
        return session.scalars(
            select(StudyResult)
            .where(StudyResult.published_at.is_(None), StudyResult.id.not_in(failed))
            .order_by(StudyResult.created_at, StudyResult.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()

    @staticmethod
    def _published_elsewhere(session: Session, version_id: int) -> bool:
        """After a clash: another publisher (no row locks on SQLite) queued it first."""
        published = session.scalar(
            select(StudyResult.published_at).where(StudyResult.id == version_id)
        )
        return published is not None

    def _publish(self, session: Session, version: StudyResult) -> int:
        wanted = {d.name: _wanted(d, version) for d in self.config.forward.destinations}
        kinds = set().union(*wanted.values()) if version.superseded_at is None else set()
        rows = []
        if kinds:
            outcome = gather(session, version, self.storage)
            for built in build(outcome, self.config, kinds):
                relative = output_path(outcome, built)
                write_durably(built.dataset, self.storage / relative)
                rows += [
                    OutboxItem(
                        study_result_fk=version.id,
                        destination=name,
                        kind=built.kind,
                        sop_class_uid=str(built.dataset.SOPClassUID),
                        sop_instance_uid=built.sop_instance_uid,
                        file_path=relative,
                        next_attempt_at=utcnow(),
                        last_error="",
                    )
                    for name, kinds_for in wanted.items()
                    if built.kind in kinds_for
                ]
        session.add_all(rows)
        version.published_at = utcnow()
        session.commit()
        if rows:
            log.info(
                "study %s result version %d: %d object(s) queued",
                version.study.study_instance_uid,
                version.version,
                len(rows),
            )
        return len(rows)
