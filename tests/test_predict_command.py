"""`pneumotriage predict`: files in, labels out, no network and no database."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import predict
from dicom_factory import fixture_images, grey_pixels, make_dataset, write
from PIL import Image


def test_predict_classifies_what_it_can_and_explains_the_rest(tmp_path: Path) -> None:
    normal = next(p for p in fixture_images() if p.parent.name == "NORMAL")
    pneumonia = next(p for p in fixture_images() if p.parent.name == "PNEUMONIA")
    png = tmp_path / "normal.png"
    Image.open(normal).convert("L").save(png)
    dicom = write(make_dataset(grey_pixels(pneumonia)), tmp_path, "pneumonia.dcm")
    ct = write(make_dataset(grey_pixels(normal), modality="CT"), tmp_path, "ct.dcm")
    text = tmp_path / "notes.txt"
    text.write_text("not an image", encoding="utf-8")
    missing = tmp_path / "missing.dcm"
    files = [normal, png, dicom, ct, text, missing]

    result = predict("--format", "json", *map(str, files))
    assert result.returncode == 1
    records = {Path(r["file"]).name: r for r in json.loads(result.stdout)}
    assert [Path(r) for r in records] == [Path(f.name) for f in files]
    assert records[normal.name]["label"] == records["normal.png"]["label"] == "NORMAL"
    assert records["pneumonia.dcm"]["label"] == "PNEUMONIA" and records["pneumonia.dcm"]["flagged"]
    assert abs(records[normal.name]["probability"] - records["normal.png"]["probability"]) < 1e-3
    assert "not a chest radiograph: modality CT" in records["ct.dcm"]["error"]
    assert "neither a DICOM" in records["notes.txt"]["error"]
    assert "cannot be opened" in records["missing.dcm"]["error"]
    for name in ("ct.dcm", "notes.txt", "missing.dcm"):
        assert records[name]["label"] is None and name in result.stderr
    assert "Traceback" not in result.stderr
    # TensorFlow's start-up notices (core.keras_import) stay off the console.
    for notice in ("oneDNN", "absl::InitializeLog", "cpu_feature_guard", "I0000"):
        assert notice not in result.stderr, result.stderr


def test_the_table_shows_scores_as_everywhere_else() -> None:
    """Two decimals, and a score that rounds to a certainty says "above 0.99"."""
    result = predict(*map(str, fixture_images()))
    assert result.returncode == 0, result.stderr
    assert not re.search(r"\b[01]\.\d{3}\b", result.stdout), result.stdout
    assert re.search(r"above 0\.99|below 0\.01|\b0\.\d\d\b", result.stdout)
