"""Which objects are chest radiographs the model may read.

The model was trained on frontal chest radiographs only; anything else gets a clear reason
instead of a meaningless probability. Explicit statements win over hints: a Body Part
Examined of HAND rejects an image even if its view position is PA.
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.uid import UID

from core.config import SelectionConfig

_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_IMAGE_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DESCRIPTIONS = (
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "RequestedProcedureDescription",
    "PerformedProcedureStepDescription",
)


def _upper(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value if value is not None else "").strip().upper()


def _sop_class_name(ds: Dataset) -> str:
    uid = UID(str(ds.get("SOPClassUID", "")))
    return uid.name if uid.is_valid else "an unknown SOP class"


def rejection_reason(ds: Dataset, selection: SelectionConfig) -> str | None:
    """None when the object is a chest radiograph; otherwise why it is not read."""
    if not any(tag in ds for tag in _IMAGE_TAGS):
        return f"not an image ({_sop_class_name(ds)}); no pixel data"
    modality = _upper(ds, "Modality")
    modalities = {m.upper() for m in selection.modalities}
    secondary_capture = str(ds.get("SOPClassUID", "")).startswith(_SECONDARY_CAPTURE_PREFIX)
    if modality not in modalities and not secondary_capture:
        expected = "/".join(sorted(modalities))
        return f"not a chest radiograph: modality {modality or 'missing'} is not {expected}"

    view = _upper(ds, "ViewPosition")
    excluded = {v.upper() for v in selection.excluded_view_positions}
    if view and view in excluded:
        return f"view position {view} is not read by the model (frontal views only)"

    body_part = _upper(ds, "BodyPartExamined")
    body_parts = {b.upper() for b in selection.body_parts}
    if body_part and body_part not in body_parts:
        return f"not a chest radiograph: body part examined is {body_part}"
    if body_part:
        return None
    descriptions = " ".join(_upper(ds, keyword) for keyword in _DESCRIPTIONS)
    if any(word.upper() in descriptions for word in selection.description_keywords):
        return None
    if view and view in {v.upper() for v in selection.view_positions}:
        return None
    return "not recognisable as a chest radiograph: no chest body part, description or view"
