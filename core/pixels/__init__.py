"""Pixel conversion: any radiograph, DICOM or picture file, to the model's square 0..1 input.

One path for every source, so that the model sees the same picture whether an image came
from the modality, from `predict` or from the training folders:

1. decode the first frame with pydicom and its pylibjpeg plugins (Pillow for JPEG/PNG);
   native pixel data is read in place, without the copy a plain decode makes;
2. area-average blocks of whole pixels down to about three times the model size
   (Pillow's `reducing_gap` rule); pixels equal to the Pixel Padding Value are left out of
   the averages, and colour becomes luminance (ITU-R BT.601 weights);
3. Modality LUT or Rescale Slope/Intercept, then the VOI LUT or the first Window
   Center/Width (LINEAR, LINEAR_EXACT or SIGMOID), on those block means;
4. MONOCHROME1, or Presentation LUT Shape INVERSE on MONOCHROME2, is inverted so that
   air is always dark;
5. an antialiased bilinear resize to `size` x `size` (the aspect ratio is not kept, exactly
   as the training images were made from radiographs of many shapes);
6. the result is stretched to its own minimum and maximum, giving 0..1.

One module per job, each with the reasons for its steps:

- `decode`: reading and validating DICOM Part 10 files, decoding the first frame (step 1);
- `reduce`: block means of whole pixels, padding left out, colour to luminance (step 2),
  and why averaging comes before the lookups;
- `render`: stored values, padding, Modality/VOI transforms and inversion (steps 3 and 4);
- `convert`: the entry points for every source, and the final resize and stretch (5, 6);
- `result`: what a conversion gives, `Converted` or a `ConversionError` with its reason.

Importing the package installs the filter that keeps decoder tracebacks out of the log
(see `decode`).
"""

from core.pixels.convert import (
    convert_dataset,
    convert_file,
    convert_frame,
    convert_picture,
    finish,
)
from core.pixels.decode import is_dicom_file, read_dicom
from core.pixels.reduce import REDUCING_GAP
from core.pixels.result import ConversionError, Converted

__all__ = [
    "REDUCING_GAP",
    "ConversionError",
    "Converted",
    "convert_dataset",
    "convert_file",
    "convert_frame",
    "convert_picture",
    "finish",
    "is_dicom_file",
    "read_dicom",
]
