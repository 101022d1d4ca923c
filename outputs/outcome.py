"""What the outputs are built from: one study-level result and the images behind it.

UIDs are derived from the study and the result version, so building the same version twice
(the publisher after a crash, `pneumotriage export`) gives the same SOP Instance UIDs and a
PACS never files two copies of one result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid


@dataclass(frozen=True)
class ImageOutcome:
    source: Dataset
    path: Path
    probability: float
    label: str
    flagged: bool
    threshold: float
    heatmap: np.ndarray | None = None

    @property
    def sop_instance_uid(self) -> str:
        return str(self.source.SOPInstanceUID)


@dataclass(frozen=True)
class StudyOutcome:
    study_instance_uid: str
    # The study's row: one Study Instance UID on file under two patients (an identity
    # conflict, or the old study a correction left) is two studies, with their own objects.
    study_row: int
    version: int
    probability: float
    label: str
    flagged: bool
    threshold: float
    rule: str
    model_name: str
    model_version: str
    images: tuple[ImageOutcome, ...]

    def uid(self, *parts: str) -> str:
        return generate_uid(entropy_srcs=[self.study_instance_uid, str(self.study_row), *parts])

    def series_uid(self, kind: str) -> str:
        """One series per kind of object per study, shared by every version."""
        return self.uid(kind, "series")

    def sop_uid(self, kind: str, *parts: str) -> str:
        return self.uid(kind, str(self.version), *parts)


# A frontal chest radiograph is displayed with the patient's left to the right and feet
# down; used only when the source does not say (DX requires it, CR may omit it).
DEFAULT_ORIENTATION = ("L", "F")


def orientation(source: Dataset) -> tuple[str, str]:
    value = source.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(str(v) for v in value):
        return str(value[0]), str(value[1])
    return DEFAULT_ORIENTATION
