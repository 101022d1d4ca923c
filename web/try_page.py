"""Try it: the research application's page. Upload a radiograph, see what the model says.

Nothing is stored and nothing touches the disk: the upload is parsed in memory (see
`web.app`), because a DICOM file carries its patient's name and names never go into
temporary folders.
"""

from __future__ import annotations

import base64
import io

from fastapi import APIRouter, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from core.display import render_dataset, render_picture
from core.heatmap import heatmap_model
from core.heatmap_render import grey_png, overlay_png
from core.pixels import ConversionError, convert_dataset, convert_picture, read_dicom
from core.pixels.decode import has_dicom_preamble
from core.selection import rejection_reason
from web.deps import CheckedSession, CurrentSession
from web.templates import page

router = APIRouter(include_in_schema=False)
PREVIEW_PIXELS = 512
MEGABYTE = 1024 * 1024


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


@router.get("/try", response_class=HTMLResponse)
def try_form(request: Request, _current: CurrentSession) -> Response:
    return page(request, "try.html.j2", outcome=None, error="")


def _classify(request: Request, data: bytes) -> dict[str, object]:
    """Raise ConversionError with the reason a person can read."""
    model = request.app.state.model()
    card = model.card
    source = io.BytesIO(data)
    if has_dicom_preamble(data[:132]):
        dataset = read_dicom(source)
        reason = rejection_reason(dataset, request.app.state.config.selection)
        if reason:
            raise ConversionError(reason)
        converted = convert_dataset(dataset, card.input_size)
        display = render_dataset(dataset, "default", PREVIEW_PIXELS)
        kind = "DICOM"
    else:
        converted = convert_picture(source, card.input_size)
        display = render_picture(io.BytesIO(data), PREVIEW_PIXELS)
        kind = "picture"
    refusal = model.refusal(converted.pixels)
    if refusal:
        raise ConversionError(refusal)
    explainer = heatmap_model(model)
    overlay = ""
    if explainer is not None:
        explained = explainer.explain(converted.pixels[None])
        probability = float(explained.probabilities[0])
        square = (
            convert_dataset(dataset, PREVIEW_PIXELS).pixels
            if kind == "DICOM"
            else (convert_picture(io.BytesIO(data), PREVIEW_PIXELS).pixels)
        )
        overlay = _data_uri(overlay_png(square, explained.maps[0], PREVIEW_PIXELS))
    else:
        probability = float(model.predict(converted.pixels[None])[0])
    label = card.label_for(probability)
    return {
        "kind": kind,
        "label": label,
        "flagged": label == card.positive_class,
        "probability": probability,
        "threshold": card.threshold,
        "model_name": card.name,
        "model_version": card.version,
        "notes": converted.notes,
        "preview": _data_uri(grey_png(display)),
        "overlay": overlay,
    }


@router.post("/try", response_class=HTMLResponse)
async def try_upload(
    request: Request, _current: CheckedSession, file: UploadFile | None = None
) -> Response:
    limit = request.app.state.config.web.max_upload_mb * MEGABYTE
    if file is None or not file.filename:
        return page(request, "try.html.j2", 400, outcome=None, error="Choose a file to upload.")
    data = await file.read()
    if len(data) > limit:
        message = f"The file is larger than {limit / MEGABYTE:g} MB."
        return page(request, "try.html.j2", 413, outcome=None, error=message)
    try:
        outcome = await run_in_threadpool(_classify, request, data)
    except ConversionError as exc:
        message = f"This file cannot be classified: {exc}."
        return page(request, "try.html.j2", 422, outcome=None, error=message)
    return page(request, "try.html.j2", outcome=outcome, error="")
