"""How a score reads to a person: two decimals, never a rounded certainty."""

from __future__ import annotations


def score_text(score: float) -> str:
    """0.9997 is not 1.00: a score that rounds to a certainty says it is above or below."""
    if score >= 0.995:
        return "above 0.99"
    if score < 0.005:
        return "below 0.01"
    return f"{score:.2f}"


def score_at(score: float, threshold: float | None) -> str:
    """A score means little without the threshold it was flagged against, so the two are
    always shown together and rounded alike, e.g. "score 0.78, flag at 0.71"."""
    text = f"score {score_text(score)}"
    return f"{text}, flag at {score_text(threshold)}" if threshold is not None else text
