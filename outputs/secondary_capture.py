"""A Secondary Capture per image: what the model saw, its heatmap, and the result burned in.

Viewers show a Secondary Capture as it is, without the SR, so the banner carries what a
reader must know at a glance: the result, the score against the threshold, the model, and
that it is decision support. The image is the model's own view of the source (the same
square crop and windowing) so that the heatmap lies exactly where the model looked.
"""

from __future__ import annotations

import numpy as np
from highdicom.sc import SCImage
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset

from core.scores import score_text
from outputs.codes import DISCLAIMER, MANUFACTURER, SC_SERIES_DESCRIPTION, SC_SERIES_NUMBER
from outputs.outcome import ImageOutcome, StudyOutcome, orientation

HEATMAP_CAPTION = "Heatmap: visual aid, not a localisation"


def banner_lines(outcome: StudyOutcome, image: ImageOutcome) -> list[str]:
    verdict = "PNEUMONIA LIKELY" if image.flagged else "pneumonia not flagged"
    lines = [
        f"{verdict}: score {score_text(image.probability)}, flag at {image.threshold:.2f}",
        f"{outcome.model_name} {outcome.model_version} (pneumotriage). {DISCLAIMER}.",
    ]
    if image.heatmap is not None:
        lines.append(HEATMAP_CAPTION)
    return lines


def burn_in_banner(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """A dark band across the top with the lines in a size readable at the image's scale."""
    picture = Image.fromarray(rgb)
    width = rgb.shape[1]
    size = max(8, width // 40)
    font = ImageFont.load_default(size=size)
    while size > 8 and max(font.getlength(line) for line in lines) > width - size:
        size -= 1
        font = ImageFont.load_default(size=size)
    band = int(size * 1.5 * len(lines) + size)
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 0, rgb.shape[1], band), fill=(0, 0, 0))
    for index, line in enumerate(lines):
        colour = (255, 210, 0) if index == 0 else (255, 255, 255)
        draw.text((size // 2, size // 2 + int(index * size * 1.5)), line, font=font, fill=colour)
    return np.asarray(picture)


def build_capture(outcome: StudyOutcome, image: ImageOutcome, rgb: np.ndarray) -> Dataset:
    """`rgb` is the picture to show (uint8, rows x columns x 3), heatmap already laid on."""
    pixels = burn_in_banner(rgb, banner_lines(outcome, image))
    capture = SCImage.from_ref_dataset(
        ref_dataset=image.source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=outcome.series_uid("sc"),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=outcome.sop_uid("sc", image.sop_instance_uid),
        instance_number=1
        + [i.sop_instance_uid for i in outcome.images].index(image.sop_instance_uid),
        manufacturer=MANUFACTURER,
        patient_orientation=orientation(image.source),
        series_description=SC_SERIES_DESCRIPTION,
    )
    # The body part tells a validator (and a hanging protocol) that this is a chest, which
    # has no laterality; without it General Series would want Laterality.
    capture.BodyPartExamined = str(image.source.get("BodyPartExamined", "") or "CHEST")
    capture.BurnedInAnnotation = "YES"
    capture.ImageComments = " ".join(banner_lines(outcome, image))[:10240]
    return capture
