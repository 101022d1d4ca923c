"""A heatmap drawn over the radiograph it explains, as a PNG a report or a viewer can show.

The colours come from a perceptually uniform map (inferno), so equal steps in the map look
like equal steps in colour, also to colour-blind readers and in greyscale print; a rainbow
map would invent boundaries. Opacity follows the map, so where the model found nothing the
radiograph shows through untouched.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from PIL import Image

# Shown with every map: it must not be read as where the disease is.
CAPTION = "Visual aid, not a localisation: such maps often highlight tubes, wires and devices."
COLOURMAP = "inferno"
# At the map's peak a quarter of the radiograph still shows through.
MAX_OPACITY = 0.75
# The worker writes one overlay per image: Pillow's default level and its `optimize` took
# 2.5 to 20 times as long here for files 7 to 20% smaller, which the benchmark showed to
# cost more than computing the heatmap.
PNG_COMPRESS_LEVEL = 3


def _resized(values: np.ndarray, size: int) -> np.ndarray:
    image = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized), 0.0, 1.0)


def overlay_png(pixels: np.ndarray, heatmap: np.ndarray, size: int) -> bytes:
    """RGB PNG of `size` x `size` pixels: a greyscale image (2-D, 0..1) under a heatmap
    (2-D, 0..1); the two may differ in size, since both are resized to `size`."""
    grey = _resized(pixels, size)[..., np.newaxis]
    weight = _resized(heatmap, size)
    colour = colormaps[COLOURMAP](weight)[..., :3]
    opacity = (MAX_OPACITY * weight)[..., np.newaxis]
    blended = grey * (1.0 - opacity) + colour * opacity
    rgb = np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
