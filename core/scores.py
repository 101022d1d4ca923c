"""How a score reads to a person: two decimals, never a rounded certainty."""

from __future__ import annotations


def score_text(score: float) -> str:
    """0.9997 is not 1.00: a score that rounds to a certainty says it is above or below."""
    if score >= 0.995:
        return "above 0.99"
    if score < 0.005:
        return "below 0.01"
    return f"{score:.2f}"
