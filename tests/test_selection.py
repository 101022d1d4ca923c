"""Which objects the model reads: chest radiographs only, the rest rejected with a reason.

The rules run on datasets as a modality sends them; the last test sends a mixed study
through the running node and checks that every non-chest object is stored, rejected with
its reason in history and in the report, and never given a probability.
"""

from __future__ import annotations

import json
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, Service
from dicom_factory import fixture_images, grey_pixels, make_dataset, write
from pydicom import Dataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    GrayscaleSoftcopyPresentationStateStorage,
    MRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    VLPhotographicImageStorage,
)

from core.config import SelectionConfig, load_config
from core.selection import rejection_reason

DEFAULT = load_config(ROOT / "config.toml", environ={}).selection


def image(**attributes: object) -> Dataset:
    """A small image; attributes set to None are removed. Values as modalities write them,
    lower case included, which pydicom rightly warns is not valid CS."""
    ds = make_dataset(np.arange(64, dtype=np.uint8).reshape(8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for keyword, value in attributes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
    return ds


ACCEPTED = {
    "CR chest PA": image(),
    "DX chest AP": image(Modality="DX", ViewPosition="AP"),
    "DX for presentation": image(
        SOPClassUID=DigitalXRayImageStorageForPresentation,
        Modality="DX",
        PresentationIntentType="FOR PRESENTATION",
    ),
    "lower-case thorax": image(BodyPartExamined="thorax"),
    "description only": image(
        BodyPartExamined=None,
        ViewPosition=None,
        StudyDescription="RX TORAX",
        SeriesDescription="CHEST 1V",
    ),
    "frontal view only": image(BodyPartExamined=None, StudyDescription=None, ViewPosition="PA"),
    "secondary capture of CR": image(SOPClassUID=SecondaryCaptureImageStorage, Modality="CR"),
    "secondary capture, OT": image(SOPClassUID=SecondaryCaptureImageStorage, Modality="OT"),
    "multi-frame secondary capture of DX": image(
        SOPClassUID=MultiFrameGrayscaleByteSecondaryCaptureImageStorage, Modality="DX"
    ),
    "secondary capture, no modality": image(
        SOPClassUID=SecondaryCaptureImageStorage, Modality=None
    ),
}

REJECTED = {
    "CT": (
        image(SOPClassUID=CTImageStorage, Modality="CT"),
        "not a chest radiograph: modality CT is not CR/DX",
    ),
    "MR": (
        image(SOPClassUID=MRImageStorage, Modality="MR", BodyPartExamined="CHEST"),
        "not a chest radiograph: modality MR is not CR/DX",
    ),
    "visible light photograph": (
        image(SOPClassUID=VLPhotographicImageStorage, Modality="XC"),
        "not a chest radiograph: modality XC is not CR/DX",
    ),
    "no modality": (
        image(Modality=None),
        "not a chest radiograph: modality missing is not CR/DX",
    ),
    "secondary capture of CT": (
        image(SOPClassUID=SecondaryCaptureImageStorage, Modality="CT"),
        "not a chest radiograph: secondary capture of a CT image, not of CR/DX",
    ),
    "lateral": (
        image(ViewPosition="LL"),
        "view position LL is not read: the model reads frontal (PA/AP) views only",
    ),
    "right lateral spelt out": (
        image(ViewPosition="lateral"),
        "view position LATERAL is not read: the model reads frontal (PA/AP) views only",
    ),
    "hand PA": (
        image(BodyPartExamined="HAND"),
        "not a chest radiograph: body part examined is HAND",
    ),
    "nothing says chest": (
        image(BodyPartExamined=None, StudyDescription="XR KNEE", ViewPosition=None),
        "not recognisable as a chest radiograph: no chest body part, description"
        " or frontal view position",
    ),
    "for processing": (
        image(
            SOPClassUID=DigitalXRayImageStorageForProcessing,
            Modality="DX",
            PresentationIntentType="FOR PROCESSING",
        ),
        "for processing image (raw detector data): the model reads images prepared for"
        " presentation only",
    ),
    "presentation state": (
        image(SOPClassUID=GrayscaleSoftcopyPresentationStateStorage, Modality="PR", PixelData=None),
        "not an image (Grayscale Softcopy Presentation State Storage); no pixel data",
    ),
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_chest_radiographs_are_read(name: str) -> None:
    assert rejection_reason(ACCEPTED[name], DEFAULT) is None


@pytest.mark.parametrize("name", REJECTED)
def test_everything_else_is_rejected_with_a_readable_reason(name: str) -> None:
    ds, reason = REJECTED[name]
    assert rejection_reason(ds, DEFAULT) == reason


def test_lists_are_configuration() -> None:
    lateral = image(ViewPosition="LL")
    assert rejection_reason(lateral, DEFAULT)
    keep_laterals = DEFAULT.model_copy(update={"excluded_view_positions": []})
    assert rejection_reason(lateral, keep_laterals) is None
    ct_too = DEFAULT.model_copy(update={"modalities": ["CR", "DX", "CT"]})
    assert rejection_reason(image(Modality="CT"), ct_too) is None
    no_captures = DEFAULT.model_copy(update={"secondary_capture_modalities": []})
    capture = image(SOPClassUID=SecondaryCaptureImageStorage, Modality="OT")
    assert "secondary capture of a OT image" in rejection_reason(capture, no_captures)


def test_defaults_in_code_match_the_shipped_config() -> None:
    assert SelectionConfig() == DEFAULT


@pytest.mark.interop
def test_non_chest_objects_are_stored_rejected_reported_and_never_scored(
    service: Service, dicom_dir: Path
) -> None:
    grey = grey_pixels(fixture_images()[2])
    sent = {
        "ct": make_dataset(grey, sop_class_uid=CTImageStorage, modality="CT"),
        "lateral": make_dataset(grey, view_position="LL"),
        "hand": make_dataset(grey, body_part="HAND"),
        "capture": make_dataset(grey, sop_class_uid=SecondaryCaptureImageStorage, modality="OT"),
    }
    paths = {name: write(ds, dicom_dir) for name, ds in sent.items()}
    result = service.store(*paths.values())
    assert result.stderr.count("Received Store Response (Success)") == len(sent), result.stderr
    rows = {
        name: service.wait_for_status(ds.SOPInstanceUID, {"rejected", "triaged"})
        for name, ds in sent.items()
    }
    assert rows["capture"]["status"] == "triaged"
    for name in ("ct", "lateral", "hand"):
        row = rows[name]
        assert row["status"] == "rejected" and row["probability"] is None, name
        assert row["reason"] == rejection_reason(sent[name], DEFAULT)
        assert (service.storage / row_path(service, sent[name].SOPInstanceUID)).is_file()
    history = service.cli("history", "--status", "rejected", "--format", "json").stdout
    listed = {r["sop_instance_uid"]: r["reason"] for r in json.loads(history)}
    assert listed[sent["ct"].SOPInstanceUID] == rows["ct"]["reason"]
    report = service.workdir / "selection.html"
    service.cli("report", "--since", "2000-01-01", "--out", str(report))
    html = report.read_text(encoding="utf-8")
    for name in ("ct", "lateral", "hand"):
        assert rows[name]["reason"] in html


def row_path(service: Service, sop_uid: str) -> str:
    db = Path(service.database_url.removeprefix("sqlite:///"))
    with sqlite3.connect(db) as connection:
        (path,) = connection.execute(
            "SELECT file_path FROM instances WHERE sop_instance_uid = ?", (sop_uid,)
        ).fetchone()
    return path
