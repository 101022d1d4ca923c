"""The coded concepts the outputs use: standard codes where they exist, a local scheme
(PS3.3 8.2: designators beginning with 99) for what only this product measures."""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

PNEUMONIA = CodedConcept("233604007", "SCT", "Pneumonia")
PRESENT = codes.SCT.Present
ABSENT = codes.SCT.Absent
PLAIN_CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
SCORE = CodedConcept("SCORE", "99PNTRIAGE", "Pneumonia likelihood score")
THRESHOLD = CodedConcept("THRESHOLD", "99PNTRIAGE", "Operating threshold")
NO_UNITS = CodedConcept("1", "UCUM", "no units")

MANUFACTURER = "pneumotriage"
DISCLAIMER = "Decision support, not a diagnosis"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
SR_SERIES_DESCRIPTION = "AI triage result (pneumotriage) - not a diagnosis"
SC_SERIES_DESCRIPTION = "AI triage heatmap (pneumotriage) - not a diagnosis"
