"""Sending queued DICOM objects to their destinations, with retries, from the outbox."""
