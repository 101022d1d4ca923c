"""Which objects are chest radiographs the model may read.

The model was trained on frontal chest radiographs for presentation; anything else gets a
clear reason instead of a meaningless probability. The checks run from the most to the
least certain: no pixels, the wrong kind of object, an explicit statement about the body
part or the view, and only then hints from descriptions. Explicit statements win over
hints: a Body Part Examined of HAND rejects an image even if its view position is PA.
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from core.config import SelectionConfig

# Secondary Capture Image Storage and its multi-frame variants (PS3.4 B.5): screenshots
# and digitised films, whose Modality names the original (CR, DX) or says OT/SC. Matched
# by component: the VL classes (...1.1.77.x) share the leading digits.
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
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
    if isinstance(value, MultiValue | list | tuple):
        value = " ".join(str(v) for v in value)
    return str(value if value is not None else "").strip().upper()


def _sop_class(ds: Dataset) -> str:
    return _upper(ds, "SOPClassUID")


def _sop_class_name(ds: Dataset) -> str:
    uid = UID(_sop_class(ds))
    if not uid.is_valid:
        return "an unknown SOP class"
    return uid.name if uid.name != str(uid) else f"SOP class {uid}"


def _words(values: list[str]) -> set[str]:
    return {v.strip().upper() for v in values}


def _kind_reason(ds: Dataset, selection: SelectionConfig) -> str | None:
    """Is this a radiograph for presentation at all, whatever it shows?"""
    modality = _upper(ds, "Modality")
    allowed = _words(selection.modalities)
    expected = "/".join(sorted(allowed))
    sop_class = _sop_class(ds)
    if sop_class == _SECONDARY_CAPTURE or sop_class.startswith(_SECONDARY_CAPTURE + "."):
        generic = _words(selection.secondary_capture_modalities)
        if modality and modality not in allowed | generic:
            return (
                f"not a chest radiograph: secondary capture of a {modality} image,"
                f" not of {expected}"
            )
    elif modality not in allowed:
        return f"not a chest radiograph: modality {modality or 'missing'} is not {expected}"
    intent = _upper(ds, "PresentationIntentType")
    if intent and intent in _words(selection.excluded_presentation_intents):
        return (
            f"{intent.lower()} image (raw detector data): the model reads images"
            " prepared for presentation only"
        )
    return None


def rejection_reason(ds: Dataset, selection: SelectionConfig) -> str | None:
    """None when the object is a chest radiograph; otherwise why it is not read."""
    if not any(tag in ds for tag in _IMAGE_TAGS):
        return f"not an image ({_sop_class_name(ds)}); no pixel data"
    reason = _kind_reason(ds, selection)
    if reason:
        return reason

    view = _upper(ds, "ViewPosition")
    if view and view in _words(selection.excluded_view_positions):
        return f"view position {view} is not read: the model reads frontal (PA/AP) views only"

    body_part = _upper(ds, "BodyPartExamined")
    if body_part:
        if body_part in _words(selection.body_parts):
            return None
        return f"not a chest radiograph: body part examined is {body_part}"
    descriptions = " ".join(_upper(ds, keyword) for keyword in _DESCRIPTIONS)
    if any(word in descriptions for word in _words(selection.description_keywords)):
        return None
    if view and view in _words(selection.view_positions):
        return None
    return (
        "not recognisable as a chest radiograph: no chest body part, description"
        " or frontal view position"
    )
