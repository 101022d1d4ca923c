"""Triage results as standard DICOM objects, filed in the original study for the PACS."""
