"""The study view: every image at a readable size with window presets and the heatmap,
the result against its threshold, the header, and the radiologists' feedback.

Every view is written to the audit trail, with who and when.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from core import audit
from core.accounts import principal_of
from core.db.schema import Finding, Instance, Result
from core.display import presets, render_file
from core.feedback import FeedbackError, record_feedback
from core.heatmap_render import grey_png, layer_png, map_from_png
from core.pixels import ConversionError
from core.worklist import find_study, study_ids_by_uid
from web.deps import CheckedSession, CurrentSession, Db, RowId
from web.templates import page
from web.worklist_pages import PRIVATE_IMAGE

router = APIRouter(include_in_schema=False)
# The header fields a reader checks first: who, which study, how it was taken.
HEADER_FIELDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "SeriesDescription",
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "Rows",
    "Columns",
    "PhotometricInterpretation",
    "BitsStored",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "PresentationIntentType",
)
HEATMAP_PIXELS = 512
CACHED_IMAGES = 32


def _path(request: Request, instance: Instance) -> Path:
    return request.app.state.config.storage.directory / instance.file_path


def _header(path: Path) -> tuple[list[tuple[str, str]], object]:
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
        return [], None
    rows = []
    for keyword in HEADER_FIELDS:
        element = ds.get(keyword)
        if element is not None and str(element).strip():
            rows.append((keyword, str(element)))
    return rows, ds


@router.get("/studies/uid/{study_instance_uid}", response_class=HTMLResponse)
def study_by_uid(
    request: Request, db: Db, _current: CurrentSession, study_instance_uid: str
) -> Response:
    """The site's viewer or RIS links by Study UID; one UID on file under two patients (an
    identity conflict) is two studies, and the reader chooses."""
    ids = study_ids_by_uid(db, study_instance_uid)
    if len(ids) == 1:
        return RedirectResponse(f"/studies/{ids[0]}", status_code=303)
    return page(
        request,
        "study_choice.html.j2",
        status_code=404 if not ids else 200,
        ids=ids,
        uid=study_instance_uid,
    )


@router.get("/studies/{study_id}", response_class=HTMLResponse)
def study_page(
    request: Request, db: Db, current: CurrentSession, study_id: RowId, preset: str = "default"
) -> Response:
    detail = find_study(db, study_id)
    if detail is None:
        return page(request, "not_found.html.j2", status_code=404, what="study")
    who = principal_of(current)
    if not re.fullmatch(r"[a-z0-9-]{1,32}", preset):
        preset = "default"
    audit.record(
        db,
        "study_viewed",
        who.name,
        study_instance_uid=detail.row.study_instance_uid,
        study_id=study_id,
    )
    db.commit()
    images = []
    for entry in detail.images:
        header, ds = _header(_path(request, entry.instance))
        images.append(
            {"entry": entry, "header": header, "presets": presets(ds) if ds is not None else []}
        )
    web = request.app.state.config.web
    viewer = (
        web.viewer_url_template.replace(
            "{study_instance_uid}", quote(detail.row.study_instance_uid, safe="")
        )
        if web.viewer_url_template
        else ""
    )
    return page(
        request,
        "study.html.j2",
        detail=detail,
        images=images,
        preset=preset,
        viewer_url=viewer,
        findings=list(Finding),
    )


@lru_cache(maxsize=CACHED_IMAGES)
def _rendered(path: Path, modified: float, preset: str, longest: int) -> bytes:
    """Decoding a 2,000 x 2,500 radiograph takes longer than sending it: a reader flicking
    between presets and studies gets the recent ones from memory (`modified` invalidates)."""
    return grey_png(render_file(path, preset, longest))


@router.get("/images/{instance_id}.png")
def image(
    request: Request, db: Db, _current: CurrentSession, instance_id: RowId, preset: str = "default"
) -> Response:
    instance = db.get(Instance, instance_id)
    if instance is None:
        return Response(status_code=404)
    path = _path(request, instance)
    try:
        data = _rendered(
            path, path.stat().st_mtime, preset, request.app.state.config.web.image_pixels
        )
    except (ConversionError, OSError) as exc:
        return Response(f"image cannot be shown: {exc}", status_code=422, media_type="text/plain")
    return Response(data, media_type="image/png", headers=PRIVATE_IMAGE)


@router.get("/images/{instance_id}/heatmap.png")
def heatmap(db: Db, _current: CurrentSession, instance_id: RowId) -> Response:
    """The map as a transparent layer the page lays over the image: the model read the
    image stretched to a square, so the square map stretched over the image lines up."""
    result = db.scalar(select(Result).where(Result.instance_fk == instance_id))
    heatmap_map = map_from_png(result.heatmap_png) if result is not None else None
    if heatmap_map is None:
        return Response(status_code=404)
    return Response(
        layer_png(heatmap_map, HEATMAP_PIXELS, HEATMAP_PIXELS),
        media_type="image/png",
        headers=PRIVATE_IMAGE,
    )


@router.post("/studies/{study_id}/feedback")
def feedback(
    db: Db,
    current: CheckedSession,
    study_id: RowId,
    finding: Annotated[str, Form()] = "",
    comment: Annotated[str, Form()] = "",
) -> Response:
    if finding not in Finding._value2member_map_:
        return Response(
            "choose pneumonia present or absent", status_code=400, media_type="text/plain"
        )
    try:
        record_feedback(db, study_id, principal_of(current), Finding(finding), comment)
    except FeedbackError as exc:
        return Response(str(exc), status_code=404, media_type="text/plain")
    return RedirectResponse(f"/studies/{study_id}#feedback", status_code=303)
