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
import hashlib
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

from jinja2 import Environment, PackageLoader
from markupsafe import Markup
from sqlalchemy.orm import Session

import core
from core.drift import LastCheck
from core.drift import latest as latest_drift
from core.heatmap_render import CAPTION, map_from_png, overlay_png
from core.history import HistoryQuery, HistoryRow, find
from core.model_store import ModelCard
from core.site_threshold import OperatingThreshold, in_force
from core.templating import environment as shared_environment
from core.texts import DISCLAIMER

TEMPLATE = "report.html.j2"
# Shared with the web application, so a study looks the same in both.
STYLESHEET = Path(core.__file__).parent / "static" / "pneumotriage.css"


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

    @property
    def received_at(self) -> datetime:
        """When its first image arrived: how long the study has been waiting for a reader."""
        return min(row.received_at for row in self.images)


@dataclass(frozen=True)
class ReportContext:
    since: datetime
    until: datetime
    generated_at: datetime
    flagged: list[StudyGroup]
    not_flagged: list[StudyGroup]
    rejected: list[HistoryRow]
    awaiting: list[HistoryRow]
    counts: dict[str, int]
    rejection_reasons: list[tuple[str, int]]
    models: list[tuple[str, str]]
    # The configured model's threshold in force now (core.site_threshold); each result
    # shows the one it was flagged at.
    threshold: OperatingThreshold | None = None
    drift: LastCheck | None = None
    disclaimer: str = DISCLAIMER
    heatmap_caption: str = CAPTION

    @property
    def pending(self) -> int:
        """The summary's count, and the figure callers read before the list existed."""
        return len(self.awaiting)

    def waited(self, row: HistoryRow) -> timedelta:
        """How long an image had waited for triage when the report was made."""
        return self.generated_at - row.received_at


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
    # Longest waiting first: an image stuck in the queue is read without a triage result.
    awaiting = sorted(
        (row for row in rows if row.status in {"pending", "processing"}),
        key=lambda row: row.received_at,
    )
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
        awaiting=awaiting,
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
        threshold=None if configured_model is None else in_force(session, configured_model),
        drift=latest_drift(session),
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


@dataclass(frozen=True)
class Stylesheet:
    css: Markup
    sha256: str


@cache
def stylesheet() -> Stylesheet:
    """The shared stylesheet, inlined because a report is one file with no external assets;
    the policy allows that one stylesheet by its hash and no other style."""
    css = STYLESHEET.read_text(encoding="utf-8")
    if "</style" in css.lower():
        raise ValueError(f"{STYLESHEET} would close its <style> element early")
    digest = base64.b64encode(hashlib.sha256(css.encode("utf-8")).digest()).decode("ascii")
    # Markup: autoescaping would turn the quotes around font names into entities, which a
    # <style> element does not decode.
    return Stylesheet(Markup(css), digest)  # noqa: S704


def environment() -> Environment:
    env = shared_environment(PackageLoader("reports", "templates"))
    env.filters["data_uri"] = _data_uri
    env.filters["heatmap_uri"] = _heatmap_uri
    return env


def render(context: ReportContext) -> str:
    return environment().get_template(TEMPLATE).render(report=context, style=stylesheet())


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
