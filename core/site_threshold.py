"""The operating threshold in force: a department's own, or the model card's.

A threshold tuned on one population can be wrong for another (an independent study found
that one tuned for a version of a commercial product made the next version worse until it
was recalibrated), so a department that has checked the model on its own patients may set
its own, with a reason. It is recorded with who and when, audited, used by the worker for
every result from then on, and shown with every result (each result keeps the threshold it
was flagged at) and in the report. It holds for one model version: a new version starts
from its own card's threshold until the site has checked it again. The card's threshold
stays the default, and clearing the site's returns to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.audit import record
from core.db.schema import SiteThreshold
from core.db.types import utcnow
from core.model_store import ModelCard


@dataclass(frozen=True)
class OperatingThreshold:
    value: float
    # Empty for the model card's own threshold.
    set_by: str = ""
    set_at: datetime | None = None
    reason: str = ""

    @property
    def is_site(self) -> bool:
        return bool(self.set_by)

    def describe(self) -> str:
        if not self.is_site:
            return f"{self.value:.3f}, the model card's"
        when = self.set_at.astimezone().strftime("%Y-%m-%d %H:%M") if self.set_at else ""
        return f"{self.value:.3f}, set for this site by {self.set_by} on {when}: {self.reason}"


def in_force(session: Session, card: ModelCard) -> OperatingThreshold:
    latest = session.scalars(
        select(SiteThreshold)
        .where(SiteThreshold.model_name == card.name, SiteThreshold.model_version == card.version)
        .order_by(SiteThreshold.set_at.desc(), SiteThreshold.id.desc())
        .limit(1)
    ).first()
    if latest is None or latest.value is None:
        return OperatingThreshold(card.threshold)
    return OperatingThreshold(latest.value, latest.set_by, latest.set_at, latest.reason)


def set_site_threshold(
    session: Session, card: ModelCard, value: float | None, reason: str, actor: str
) -> None:
    """Record a site threshold (None: back to the card's) in the caller's transaction."""
    session.add(
        SiteThreshold(
            model_name=card.name,
            model_version=card.version,
            value=value,
            reason=reason,
            set_by=actor[:64],
            set_at=utcnow(),
        )
    )
    record(
        session,
        "threshold_set" if value is not None else "threshold_cleared",
        actor,
        model=card.name,
        model_version=card.version,
        value=value,
        card_threshold=card.threshold,
        reason=reason,
    )
