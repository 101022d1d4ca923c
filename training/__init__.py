"""Training and evaluation of the triage models, run offline by `pneumotriage train/evaluate`."""
