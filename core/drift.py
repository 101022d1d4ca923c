"""Have the scores moved away from those the model was validated on?

A weekly check compares the week's image scores with the validation scores stored in the
model card (core.calibration's fit records them, per class). Comparing with validation's
own mix would warn every week at nearly every site: validation is three quarters
pneumonia, a department's referrals are not. The reference is instead the mixture of
validation's normal and pneumonia score distributions that best explains the week (the
pneumonia share fitted by expectation-maximisation, as Saerens, Latinne and Decaestecker,
2002, adjust a classifier to new priors). A change of case mix moves that share, which is
reported; images that look unlike the validation set (a new detector, new processing, a
new population) move the scores off every mixture, which the population stability index
measures and warns about. The Kolmogorov-Smirnov distance of the binned distributions is
reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import DriftConfig
from core.db.schema import DriftCheck, Result
from core.db.types import utcnow

BINS = 20
# Added to every bin of validation's histograms, so that a bin no validation image fell in
# is unlikely rather than impossible (it would make the PSI infinite).
_PSEUDO_COUNT = 0.5
_EM_ITERATIONS = 500


def histogram(scores: np.ndarray) -> list[int]:
    counts, _ = np.histogram(np.clip(scores, 0.0, 1.0), bins=BINS, range=(0.0, 1.0))
    return [int(c) for c in counts]


def reference(scores: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """The card's record of validation's calibrated scores, per class."""
    return {"bins": BINS} | {
        name: histogram(scores[labels == index]) for index, name in enumerate(classes)
    }


@dataclass(frozen=True)
class Drift:
    results: int
    pneumonia_share: float
    validation_share: float
    psi: float
    ks: float


def measure(scores: np.ndarray, card_reference: dict[str, Any], positive: str) -> Drift:
    normal_name = next(k for k in card_reference if k not in ("bins", positive))
    normal = np.asarray(card_reference[normal_name], float) + _PSEUDO_COUNT
    pneumonia = np.asarray(card_reference[positive], float) + _PSEUDO_COUNT
    validation_share = float(
        (pneumonia.sum() - _PSEUDO_COUNT * BINS)
        / (normal.sum() + pneumonia.sum() - 2 * _PSEUDO_COUNT * BINS)
    )
    f0, f1 = normal / normal.sum(), pneumonia / pneumonia.sum()
    observed = np.asarray(histogram(scores), float)
    observed /= observed.sum()
    share = validation_share
    for _ in range(_EM_ITERATIONS):
        responsibility = share * f1 / (share * f1 + (1 - share) * f0)
        updated = float(np.dot(observed, responsibility))
        if abs(updated - share) < 1e-9:
            break
        share = updated
    expected = share * f1 + (1 - share) * f0
    smoothed = np.maximum(observed, 1e-4)
    psi = float(np.sum((smoothed - expected) * np.log(smoothed / expected)))
    ks = float(np.max(np.abs(np.cumsum(observed) - np.cumsum(expected))))
    return Drift(len(scores), share, validation_share, psi, ks)


def check(
    session: Session,
    model_name: str,
    model_version: str,
    card_reference: dict[str, Any],
    positive: str,
    settings: DriftConfig,
    now: datetime | None = None,
) -> DriftCheck:
    """Measure the last `settings.days` of this model version's results and record the
    verdict (added to the session, not committed); too few results are said, not judged."""
    until = now or utcnow()
    since = until - timedelta(days=settings.days)
    scores = np.array(
        session.scalars(
            select(Result.probability).where(
                Result.model_name == model_name,
                Result.model_version == model_version,
                Result.created_at >= since,
                Result.created_at < until,
            )
        ).all(),
        dtype=float,
    )
    row = DriftCheck(
        checked_at=until,
        since=since,
        until=until,
        model_name=model_name,
        model_version=model_version,
        results=len(scores),
        warned=False,
    )
    if not card_reference:
        row.summary = "not checked: the model card has no validation scores (run calibrate)"
    elif len(scores) < settings.min_results:
        row.summary = (
            f"not judged: {len(scores)} results in {settings.days} days, fewer than"
            f" drift.min_results ({settings.min_results})"
        )
    else:
        drift = measure(scores, card_reference, positive)
        row.psi, row.ks, row.pneumonia_share = drift.psi, drift.ks, drift.pneumonia_share
        row.warned = drift.psi >= settings.warn_psi
        verdict = "scores have moved" if row.warned else "scores as validated"
        row.summary = (
            f"{verdict}: PSI {drift.psi:.3f} (warns at {settings.warn_psi:g}), KS {drift.ks:.3f},"
            f" over {drift.results} results in {settings.days} days; estimated pneumonia share"
            f" {drift.pneumonia_share:.0%} (validation {drift.validation_share:.0%})"
        )
    session.add(row)
    return row


def latest(session: Session) -> DriftCheck | None:
    return session.scalars(select(DriftCheck).order_by(DriftCheck.id.desc()).limit(1)).first()
