"""What a conversion gives: a model input with its notes, or a reason people can read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class ConversionError(Exception):
    """The image cannot become a model input; the message is shown to people as the reason."""


def one_line(exc: BaseException, limit: int = 240) -> str:
    """Decoder messages span several lines; a reason in a history table should not."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Converted:
    pixels: np.ndarray
    notes: tuple[str, ...] = ()
