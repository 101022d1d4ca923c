"""`pneumotriage export`: a study's outputs as files, for people without a PACS at hand."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import Config
from core.db.schema import Study, StudyResult
from outputs.publish import build, gather, write_durably


def export_study(session: Session, config: Config, study_uid: str, directory: Path) -> list[Path]:
    """The SR and Secondary Captures of the study's current result, the same objects (and
    UIDs) the PACS gets; named by SOP Instance UID. Empty if the study has no result."""
    versions = session.scalars(
        select(StudyResult)
        .join(Study, StudyResult.study_fk == Study.id)
        .where(Study.study_instance_uid == study_uid, StudyResult.superseded_at.is_(None))
    ).all()
    written = []
    for version in versions:
        outcome = gather(session, version, config.storage.directory)
        for built in build(outcome, config, {"sr", "sc"}):
            path = directory / f"{built.kind}-{built.sop_instance_uid}.dcm"
            write_durably(built.dataset, path)
            written.append(path)
    return written
