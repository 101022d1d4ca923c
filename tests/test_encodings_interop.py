"""Compressed encodings through the running node: negotiated, stored as sent, triaged.

storescu proposes one presentation context per transfer syntax (an association profile
given with -xf, since its -x options cover only some syntaxes, and not JPEG lossless
process 14 with other selection values). It sends each file over the context whose
accepted syntax is the file's own, so a success means the node negotiated that syntax
rather than DCMTK quietly decompressing; the instances table records which was used.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import Service, require_tools
from dicom_factory import (
    DCMTK_TOOLS,
    ENCODINGS,
    HTJ2K_ENCODING,
    encode,
    fixture_images,
    grey_pixels,
    make_dataset,
    scaled,
    with_pixels,
    write,
)
from pydicom import dcmread
from pynetdicom import AE

pytestmark = pytest.mark.interop

SENT = [
    "jpeg-baseline",
    "jpeg-extended",
    "jpeg-lossless",
    "jpeg-lossless-sv1",
    "jpeg-ls-lossless",
    "jpeg-ls-near-lossless",
    "j2k-lossless",
    "j2k-lossy",
    "rle",
    "deflated",
    "explicit-be",
    "implicit-le",
]
LOSSLESS_PROBABILITY = 1e-4


def store_as_encoded(
    service: Service, sop_class: str, files: list[Path], directory: Path
) -> subprocess.CompletedProcess[str]:
    syntaxes = sorted(
        {str(dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files}
    )
    profile = directory / "encodings.cfg"
    lines = ["[[TransferSyntaxes]]"]
    for number, syntax in enumerate(syntaxes, 1):
        lines += [f"[Syntax{number}]", f"TransferSyntax1 = {syntax}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    lines += [
        f"PresentationContext{n} = {sop_class}\\Syntax{n}" for n in range(1, len(syntaxes) + 1)
    ]
    lines += ["[[Profiles]]", "[Encodings]", "PresentationContexts = Contexts"]
    profile.write_text("\n".join(lines) + "\n")
    return service.store(*files, options=["-xf", str(profile), "Encodings"])


def stored_syntax(service: Service, sop_uid: str) -> str:
    sql = "SELECT transfer_syntax_uid FROM instances WHERE sop_instance_uid = ?"
    ((syntax,),) = service.sql(sql, sop_uid)
    return syntax


def test_compressed_encodings_are_negotiated_stored_and_triaged(
    service: Service, tmp_path: Path
) -> None:
    require_tools(*DCMTK_TOOLS)
    grey = grey_pixels(fixture_images()[3])
    files, sop_uids = {}, {}
    for name in SENT:
        encoding = ENCODINGS[name]
        bits = min(encoding.max_bits, 12)
        ds = with_pixels(make_dataset(grey, patient_id="ENCODINGS"), scaled(grey, bits), bits)
        files[name] = encode(write(ds, tmp_path / "source"), encoding, tmp_path / name)
        # Lossy DCMTK encoders give the result a new SOP Instance UID, as they should.
        sop_uids[name] = dcmread(files[name], stop_before_pixels=True).SOPInstanceUID
    result = store_as_encoded(service, ds.SOPClassUID, list(files.values()), tmp_path)
    assert len(re.findall(r"Received Store Response \(Success\)", result.stderr)) == len(SENT), (
        result.stderr
    )

    rows = {}
    for name, sop_uid in sop_uids.items():
        assert stored_syntax(service, sop_uid) == ENCODINGS[name].transfer_syntax, name
        rows[name] = service.wait_for_status(sop_uid, {"triaged"})
    reference = rows["implicit-le"]["probability"]
    for name, row in rows.items():
        assert row["reason"] == "" and row["label"] in {"NORMAL", "PNEUMONIA"}
        if not ENCODINGS[name].lossy:
            assert row["probability"] == pytest.approx(reference, abs=LOSSLESS_PROBABILITY), name


@pytest.mark.skipif(
    shutil.which("ojph_compress") is None,
    reason="HTJ2K is optional: ojph_compress (Debian openjph-tools) encodes the fixture",
)
def test_htj2k_is_negotiated_and_triaged(service: Service, tmp_path: Path) -> None:
    """DCMTK 3.6.7's storescu predates HTJ2K, so pynetdicom sends this one."""
    grey = grey_pixels(fixture_images()[3])
    ds = with_pixels(make_dataset(grey, patient_id="ENCODINGS"), scaled(grey, 12), 12)
    path = encode(write(ds, tmp_path / "source"), HTJ2K_ENCODING, tmp_path)
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(ds.SOPClassUID, HTJ2K_ENCODING.transfer_syntax)
    association = ae.associate("127.0.0.1", service.port, ae_title="PNEUMOTRIAGE")
    assert association.is_established
    status = association.send_c_store(path)
    association.release()
    assert status.Status == 0x0000
    assert stored_syntax(service, ds.SOPInstanceUID) == HTJ2K_ENCODING.transfer_syntax
    assert service.wait_for_status(ds.SOPInstanceUID, {"triaged"})["reason"] == ""
