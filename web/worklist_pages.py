"""The worklist, the home page: studies ranked for reading, refreshed while it is open.

Its filters are kept in the signed-in session, not in the URL, because the free text may be
a patient's name. The page polls a fragment of itself every `web.refresh_seconds`, so new
results appear without a reload.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from core.db.schema import Result, WebSession
from core.worklist import StudyState, WorklistFilter, worklist
from web.deps import CheckedSession, CurrentSession, Db, RowId
from web.templates import page

router = APIRouter(include_in_schema=False)
# Images hold patient data and reading-room workstations are shared: no cache keeps them
# (the server keeps recently rendered ones in memory instead).
PRIVATE_IMAGE = {"Cache-Control": "no-store"}
PERIODS = {"24": "last 24 hours", "72": "last 3 days", "168": "last 7 days", "": "all"}


def _filter(request: Request, current: WebSession) -> WorklistFilter:
    default = request.app.state.config.web.worklist_hours
    return WorklistFilter.from_record(json.loads(current.worklist_filter or "{}"), default)


def _context(request: Request, db: Db, current: WebSession, page_number: int) -> dict[str, object]:
    web = request.app.state.config.web
    query = _filter(request, current)
    found = worklist(db, query, page_number, web.page_size)
    # What the refresh compares: the table is replaced when a study arrives, changes state or
    # score, not each time a waiting time ticks, so that keyboard focus stays put.
    version = hashlib.sha256(
        repr(
            [found.total, found.page]
            + [
                (r.study_id, r.state, r.flagged, r.probability, r.waiting, r.rejected)
                for r in found.rows
            ]
        ).encode()
    ).hexdigest()[:16]
    return {
        "version": version,
        "worklist": found,
        "query": query,
        "states": list(StudyState),
        "periods": PERIODS,
        "period": "" if query.hours is None else f"{query.hours:g}",
        "refresh_seconds": web.refresh_seconds,
    }


@router.get("/", response_class=HTMLResponse)
def worklist_page(
    request: Request, db: Db, current: CurrentSession, page_number: int = 1
) -> Response:
    return page(request, "worklist.html.j2", **_context(request, db, current, page_number))


@router.get("/worklist/rows", response_class=HTMLResponse)
def worklist_rows(
    request: Request, db: Db, current: CurrentSession, page_number: int = 1
) -> Response:
    """The table alone, for the page's refresh."""
    return page(request, "worklist_rows.html.j2", **_context(request, db, current, page_number))


@router.post("/worklist/filter")
def set_filter(
    db: Db,
    current: CheckedSession,
    flagged_only: Annotated[bool, Form()] = False,
    state: Annotated[str, Form()] = "",
    period: Annotated[str, Form()] = "",
    text: Annotated[str, Form()] = "",
) -> Response:
    hours = float(period) if period in PERIODS and period else None
    query = WorklistFilter(
        flagged_only=flagged_only,
        state=StudyState(state) if state in StudyState._value2member_map_ else None,
        hours=hours,
        text=text.strip()[:64],
    )
    record = query.record()
    if hours is None:
        record["hours"] = 0
    current.worklist_filter = json.dumps(record)
    db.commit()
    return RedirectResponse("/", status_code=303)


@router.get("/images/{instance_id}/thumbnail.png")
def thumbnail(db: Db, _current: CurrentSession, instance_id: RowId) -> Response:
    result = db.scalar(select(Result).where(Result.instance_fk == instance_id))
    if result is None or not result.thumbnail_png:
        return Response(status_code=404)
    return Response(result.thumbnail_png, media_type="image/png", headers=PRIVATE_IMAGE)
