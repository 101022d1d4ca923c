"""A small PNG of what the model saw, kept with the result so reports need no image files."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_thumbnail(pixels: np.ndarray, size: int) -> bytes:
    grey = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
