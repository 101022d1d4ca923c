"""Triage reports: one self-contained HTML file per period, for radiologists to read first.

Radiologists read studies, not instances, so rows are grouped by study: a study is flagged
when any of its images is, and ranks by its highest probability. A group is one study of one
patient as its images named them, so a reused Study UID or a corrected name never puts one
patient's image under another's name; identity conflicts are shown on the study. Jinja2
autoescaping is on for every template, so whatever a modality wrote into a patient name is
shown, not run.
"""

from __future__ import annotations

import base64
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from sqlalchemy.orm import Session

from core.heatmap_render import CAPTION, map_from_png, overlay_png
from core.history import HistoryQuery, HistoryRow, find
from core.model_store import ModelCard
from core.scores import score_text

TEMPLATE = "report.html.j2"
DISCLAIMER = (
    "Decision support, not a diagnosis. Every study must be read by a radiologist; "
    "an unflagged study is not a normal study."
)


@dataclass
class StudyGroup:
    study_instance_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    accession_number: str
    description: str
    images: list[HistoryRow] = field(default_factory=list)

    @property
    def identity_conflict(self) -> str:
        return "; ".join(
            dict.fromkeys(r.identity_conflict for r in self.images if r.identity_conflict)
        )

    @property
    def triaged(self) -> list[HistoryRow]:
        return [row for row in self.images if row.probability is not None]

    @property
    def settled(self) -> bool:
        """The study has its study-level result; until then the images' own scores stand
        in for it, and the report says the result is provisional."""
        return self.images[0].study_result_version is not None

    @property
    def flagged(self) -> bool:
        if self.settled:
            return bool(self.images[0].study_flagged)
        return any(row.flagged for row in self.images)

    @property
    def probability(self) -> float:
        if self.settled:
            return self.images[0].study_probability or 0.0
        return max((row.probability or 0.0 for row in self.triaged), default=0.0)

    @property
    def threshold(self) -> float | None:
        return max(
            (row.threshold for row in self.triaged if row.threshold is not None), default=None
        )

    @property
    def label(self) -> str:
        if self.settled:
            return self.images[0].study_label or ""
        top = max(self.triaged, key=lambda row: row.probability or 0.0, default=None)
        return top.label or "" if top else ""

    @property
    def modalities(self) -> str:
        return ", ".join(sorted({row.modality for row in self.images if row.modality}))


@dataclass(frozen=True)
class ReportContext:
    since: datetime
    until: datetime
    generated_at: datetime
    flagged: list[StudyGroup]
    not_flagged: list[StudyGroup]
    rejected: list[HistoryRow]
    pending: int
    counts: dict[str, int]
    rejection_reasons: list[tuple[str, int]]
    models: list[tuple[str, str]]
    disclaimer: str = DISCLAIMER
    heatmap_caption: str = CAPTION


def _group(rows: list[HistoryRow]) -> list[StudyGroup]:
    groups: dict[tuple[object, ...], StudyGroup] = {}
    for row in rows:
        key = (
            row.patient_id,
            row.issuer_of_patient_id,
            row.patient_name,
            row.patient_birth_date,
            row.study_instance_uid,
        )
        group = groups.setdefault(
            key,
            StudyGroup(
                study_instance_uid=row.study_instance_uid,
                patient_id=row.patient_id,
                patient_name=row.patient_name,
                study_date=row.study_date.isoformat() if row.study_date else "",
                accession_number=row.accession_number,
                description=row.study_description,
            ),
        )
        group.images.append(row)
    return list(groups.values())


def build_context(
    session: Session, since: datetime, until: datetime, configured_model: ModelCard | None
) -> ReportContext:
    rows = find(session, HistoryQuery(received_from=since, received_until=until), True)
    triaged = _group([row for row in rows if row.status == "triaged"])
    rejected = [row for row in rows if row.status == "rejected"]
    ranked = sorted(triaged, key=lambda group: group.probability, reverse=True)
    models = sorted({(r.model_name, r.model_version) for r in rows if r.model_name})
    if not models and configured_model is not None:
        models = [(configured_model.name, configured_model.version)]
    return ReportContext(
        since=since,
        until=until,
        generated_at=datetime.now().astimezone(),
        flagged=[group for group in ranked if group.flagged],
        not_flagged=[group for group in ranked if not group.flagged],
        rejected=rejected,
        pending=sum(row.status in {"pending", "processing"} for row in rows),
        counts={
            "received": len(rows),
            "triaged": sum(row.status == "triaged" for row in rows),
            "flagged": sum(row.flagged for row in rows),
            "rejected": len(rejected),
            "studies": len({row.study_instance_uid for row in rows}),
            "flagged_studies": sum(group.flagged for group in triaged),
            "identity_conflicts": sum(bool(row.identity_conflict) for row in rows),
        },
        rejection_reasons=Counter(row.reason for row in rejected).most_common(),
        models=[(name or "", version or "") for name, version in models],
    )


def _data_uri(png: bytes | None) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii") if png else ""


def _heatmap_uri(row: HistoryRow) -> str:
    """The heatmap laid over the thumbnail, drawn now from the stored map."""
    heatmap = map_from_png(row.heatmap_png)
    thumbnail = map_from_png(row.thumbnail_png)
    if heatmap is None or thumbnail is None:
        return ""
    return _data_uri(overlay_png(thumbnail, heatmap, thumbnail.shape[0]))


def _person_name(name: str) -> str:
    """DICOM PN "Family^Given^Middle^Prefix^Suffix" as a reader writes it: "Family, Given
    Middle". Only the alphabetic group (before any '=') is shown."""
    family, given, middle, prefix, suffix = ([*name.split("=")[0].split("^"), "", "", "", ""])[:5]
    forenames = " ".join(part for part in (prefix, given, middle, suffix) if part)
    return f"{family}, {forenames}" if family and forenames else family or forenames


def _local(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M %Z") if moment else ""


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("reports", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["data_uri"] = _data_uri
    env.filters["heatmap_uri"] = _heatmap_uri
    env.filters["score"] = score_text
    env.filters["local"] = _local
    env.filters["person_name"] = _person_name
    return env


def render(context: ReportContext) -> str:
    return environment().get_template(TEMPLATE).render(report=context)


def report_filename(since: datetime, until: datetime) -> str:
    """Named by period only: file names never carry patient data."""
    return f"triage-{since.astimezone():%Y%m%d-%H%M}-to-{until.astimezone():%Y%m%d-%H%M}.html"


class ReportWriteError(Exception):
    """The report could not be written where it was asked for; nothing was left behind."""


def write_report(html: str, target: Path) -> Path:
    """Write beside the target and rename, so a reader never opens half a report; the
    partial file holds patient names, so it is removed whatever goes wrong."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=".report-", suffix=".part")
    except OSError as exc:
        raise ReportWriteError(f"cannot write the report {target}: {exc.strerror}") from None
    partial = Path(name)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(html)
            handle.flush()
            os.fsync(handle.fileno())
        partial.chmod(0o644)
        partial.replace(target)
    except OSError as exc:
        raise ReportWriteError(f"cannot write the report {target}: {exc.strerror}") from None
    finally:
        partial.unlink(missing_ok=True)
    return target
