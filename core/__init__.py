"""Pieces shared by the DICOM node, the worker, the reports and the training code.

Dependencies flow one way: those packages import `core`, and `core` imports none of them.
"""
