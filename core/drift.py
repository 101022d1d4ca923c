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
measures. It warns when the index reaches `drift.warn_psi` and a week of as many results
drawn from the fitted mixture itself would rarely (p below `drift.max_p_value`) score as
high: a quiet week at a small site is noisy, and chance alone must not raise a warning. The
Kolmogorov-Smirnov distance of the binned distributions is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import DriftConfig
from core.db.schema import DriftCheck, Result
from core.db.types import utcnow
from core.model_store import ModelCard

BINS = 20
# Added to every bin of validation's histograms, so that a bin no validation image fell in
# is unlikely rather than impossible (it would make the PSI infinite).
_PSEUDO_COUNT = 0.5
_EM_ITERATIONS = 500
_NULL_SAMPLES = 999
_NULL_SEED = 20261202


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
    # How often a week of this many results drawn from the fitted mixture itself scores a PSI
    # at least as high: small weeks are noisy, and chance alone must not raise a warning.
    p_value: float


def _fit_share(observed: np.ndarray, f0: np.ndarray, f1: np.ndarray, start: float) -> np.ndarray:
    """EM for the pneumonia share of each row of bin shares (rows, BINS)."""
    share = np.full(observed.shape[0], start)
    for _ in range(_EM_ITERATIONS):
        mixed = share[:, None] * f1 + (1 - share[:, None]) * f0
        updated = np.sum(observed * share[:, None] * f1 / mixed, axis=1)
        if np.max(np.abs(updated - share)) < 1e-9:
            return updated
        share = updated
    return share


def _psi(observed: np.ndarray, expected: np.ndarray) -> np.ndarray:
    smoothed = np.maximum(observed, 1e-4)
    return np.sum((smoothed - expected) * np.log(smoothed / expected), axis=-1)


def measure(scores: np.ndarray, card_reference: dict[str, Any], positive: str) -> Drift:
    normal_name = next(k for k in card_reference if k not in ("bins", positive))
    normal = np.asarray(card_reference[normal_name], float)
    pneumonia = np.asarray(card_reference[positive], float)
    validation_share = float(pneumonia.sum() / (normal.sum() + pneumonia.sum()))
    f0 = (normal + _PSEUDO_COUNT) / (normal + _PSEUDO_COUNT).sum()
    f1 = (pneumonia + _PSEUDO_COUNT) / (pneumonia + _PSEUDO_COUNT).sum()
    observed = np.asarray(histogram(scores), float)[None] / len(scores)
    share = _fit_share(observed, f0, f1, validation_share)
    expected = share[:, None] * f1 + (1 - share[:, None]) * f0
    psi = float(_psi(observed, expected)[0])
    ks = float(np.max(np.abs(np.cumsum(observed) - np.cumsum(expected))))
    # Parametric bootstrap under "nothing moved": weeks drawn from the fitted mixture.
    rng = np.random.default_rng(_NULL_SEED)
    null = rng.multinomial(len(scores), expected[0], size=_NULL_SAMPLES) / len(scores)
    null_shares = _fit_share(null, f0, f1, float(share[0]))
    null_expected = null_shares[:, None] * f1 + (1 - null_shares[:, None]) * f0
    exceed = int(np.sum(_psi(null, null_expected) >= psi))
    p_value = (exceed + 1) / (_NULL_SAMPLES + 1)
    return Drift(len(scores), float(share[0]), validation_share, psi, ks, p_value)


def check(
    session: Session, card: ModelCard, settings: DriftConfig, now: datetime | None = None
) -> DriftCheck:
    """Measure the last `settings.days` of this model version's results and record the
    verdict (added to the session, not committed); too few results are said, not judged."""
    model_name, model_version = card.name, card.version
    card_reference = card.calibration.get("validation_scores", {})
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
        drift = measure(scores, card_reference, card.positive_class)
        row.psi, row.ks, row.pneumonia_share = drift.psi, drift.ks, drift.pneumonia_share
        row.warned = drift.psi >= settings.warn_psi and drift.p_value < settings.max_p_value
        verdict = "scores have moved" if row.warned else "scores as validated"
        row.summary = (
            f"{verdict}: PSI {drift.psi:.3f} (warns at {settings.warn_psi:g}), chance"
            f" p = {drift.p_value:.3f}, KS {drift.ks:.3f}, over {drift.results} results in"
            f" {settings.days} days; estimated pneumonia share {drift.pneumonia_share:.0%}"
            f" (validation {drift.validation_share:.0%})"
        )
    session.add(row)
    return row


class LastCheck(NamedTuple):
    """What `status`, the web's status page and the reports say about the newest check."""

    checked_at: datetime
    summary: str
    warned: bool


def latest(session: Session) -> LastCheck | None:
    row = session.scalars(select(DriftCheck).order_by(DriftCheck.id.desc()).limit(1)).first()
    return None if row is None else LastCheck(row.checked_at, row.summary, row.warned)
