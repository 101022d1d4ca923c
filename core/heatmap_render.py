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
# A fast zlib level: these PNGs are written per image and per report row, and a few percent
# of file size is worth less than the time Pillow's `optimize` takes.
PNG_COMPRESS_LEVEL = 3


def _resized(values: np.ndarray, size: int) -> np.ndarray:
    image = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized), 0.0, 1.0)


def overlay(pixels: np.ndarray, heatmap: np.ndarray | None, size: int) -> np.ndarray:
    """RGB (uint8, `size` x `size` x 3): a greyscale image (2-D, 0..1) under a heatmap
    (2-D, 0..1, any size, resized to `size`); without a heatmap, the image alone."""
    grey = _resized(pixels, size)[..., np.newaxis]
    if heatmap is None:
        blended = np.repeat(grey, 3, axis=-1)
    else:
        weight = _resized(heatmap, size)
        colour = colormaps[COLOURMAP](weight)[..., :3]
        opacity = (MAX_OPACITY * weight)[..., np.newaxis]
        blended = grey * (1.0 - opacity) + colour * opacity
    return np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)


def png(rgb_or_grey: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb_or_grey).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def overlay_png(pixels: np.ndarray, heatmap: np.ndarray, size: int) -> bytes:
    """The overlay as a PNG, for `predict --heatmap` and the report."""
    return png(overlay(pixels, heatmap, size))


def grey_png(values: np.ndarray) -> bytes:
    """A 2-D 0..1 image as an 8-bit greyscale PNG."""
    return png(np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8))


def map_png(heatmap: np.ndarray) -> bytes:
    """The map itself, 8-bit grey at the model's input size, as the worker stores it: small
    and cheap to write; overlays are drawn from it at whatever size a reader needs."""
    return grey_png(heatmap)


def map_from_png(data: bytes | None) -> np.ndarray | None:
    if not data:
        return None
    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture.convert("L"), dtype=np.float32) / 255.0


def layer_png(heatmap: np.ndarray, width: int, height: int) -> bytes:
    """The map alone as a transparent RGBA layer, for a viewer that lays it over an image of
    its own and lets the reader switch it on and off."""
    weight = np.asarray(
        Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(
            (width, height), Image.Resampling.BILINEAR
        )
    ).clip(0.0, 1.0)
    colour = colormaps[COLOURMAP](weight)[..., :3]
    alpha = MAX_OPACITY * weight
    rgba = np.concatenate([colour, alpha[..., np.newaxis]], axis=-1)
    return png(np.clip(np.rint(rgba * 255.0), 0, 255).astype(np.uint8))
