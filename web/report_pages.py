"""The nightly reports in the browser, and any period's report rendered on demand.

Rendering belongs to `reports`, which the web application does not import: the process that
composes the application hands it a function that renders a period (see `web.app`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from core import audit
from core.accounts import principal_of
from core.texts import as_local
from web.deps import CheckedSession, CurrentSession, Db
from web.templates import page

router = APIRouter(include_in_schema=False)
# Report files are named by period only (reports.render.report_filename).
REPORT_NAME = re.compile(r"triage-\d{8}-\d{4}-to-\d{8}-\d{4}\.html")
# A report carries its own Content-Security-Policy (its one inline stylesheet allowed by
# hash); served here, that policy must be the response's, or the pages' own forbids it.
REPORT_POLICY = re.compile(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)"')


@router.get("/reports", response_class=HTMLResponse)
def report_list(request: Request, _current: CurrentSession) -> Response:
    folder = request.app.state.config.reports.directory
    files = (
        sorted(
            (p for p in folder.glob("triage-*.html") if REPORT_NAME.fullmatch(p.name)),
            key=lambda p: p.name,
            reverse=True,
        )
        if folder.is_dir()
        else []
    )
    return page(request, "reports.html.j2", files=files, error="")


@router.get("/reports/{name}")
def report_file(request: Request, db: Db, current: CurrentSession, name: str) -> Response:
    path = request.app.state.config.reports.directory / name
    if not REPORT_NAME.fullmatch(name) or not path.is_file():
        return page(request, "not_found.html.j2", status_code=404, what="report")
    audit.record(db, "report_viewed", principal_of(current).name, report=name)
    db.commit()
    return _report_response(path.read_text(encoding="utf-8"))


def _report_response(html: str) -> HTMLResponse:
    policy = REPORT_POLICY.search(html)
    headers = {"Content-Security-Policy": policy.group(1)} if policy else {}
    return HTMLResponse(html, headers=headers)


def _moment(text: str) -> datetime:
    return as_local(datetime.fromisoformat(text))


@router.post("/reports/render", response_class=HTMLResponse)
def render_period(
    request: Request,
    db: Db,
    current: CheckedSession,
    since: Annotated[str, Form()] = "",
    until: Annotated[str, Form()] = "",
) -> Response:
    try:
        start, end = _moment(since), _moment(until)
    except ValueError:
        return page(
            request,
            "reports.html.j2",
            400,
            files=[],
            error="Give both times, like 2026-11-21T06:00.",
        )
    if start >= end:
        return page(
            request, "reports.html.j2", 400, files=[], error="The start must be before the end."
        )
    audit.record(db, "report_rendered", principal_of(current).name, since=start, until=end)
    db.commit()
    return _report_response(request.app.state.render_report(start, end))
