"""History search with every filter of `pneumotriage history`, and its CSV and JSON export.

The filters are identifiers, dates and choices, never names, so they may sit in the URL and
an export link repeats the search exactly.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from core import audit
from core.accounts import principal_of
from core.db.schema import InstanceStatus
from core.db.types import utcnow
from core.history import HistoryQuery, find, find_studies
from core.records import as_csv, as_json
from core.texts import as_local
from web.deps import CurrentSession, Db
from web.templates import page

router = APIRouter(include_in_schema=False)
DEFAULT_LIMIT = 500


def history_query(
    patient_id: Annotated[str | None, Query()] = None,
    study_instance_uid: Annotated[str | None, Query()] = None,
    accession_number: Annotated[str | None, Query()] = None,
    study_date_from: Annotated[date | None, Query()] = None,
    study_date_to: Annotated[date | None, Query()] = None,
    received_since: Annotated[datetime | None, Query()] = None,
    received_until: Annotated[datetime | None, Query()] = None,
    flagged: Annotated[bool, Query()] = False,
    conflicts: Annotated[bool, Query()] = False,
    status: Annotated[InstanceStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = DEFAULT_LIMIT,
) -> HistoryQuery:
    """The query parameters are the command's options, with underscores."""
    return HistoryQuery(
        patient_id=patient_id or None,
        study_instance_uid=study_instance_uid or None,
        accession_number=accession_number or None,
        study_date_from=study_date_from,
        study_date_to=study_date_to,
        received_from=as_local(received_since) if received_since else None,
        received_until=as_local(received_until) if received_until else None,
        flagged_only=flagged,
        conflicts_only=conflicts,
        status=status,
        limit=limit,
    )


Search = Annotated[HistoryQuery, Depends(history_query)]
Level = Literal["instance", "study"]


def history_records(db: Db, query: HistoryQuery, level: Level) -> list[dict[str, object]]:
    rows = find_studies(db, query) if level == "study" else find(db, query)
    return [row.as_record() for row in rows]


@router.get("/history", response_class=HTMLResponse)
def history_page(
    request: Request,
    db: Db,
    current: CurrentSession,
    query: Search,
    level: Level = "study",
    format: Literal["html", "csv", "json"] = "html",
) -> Response:
    records = history_records(db, query, level)
    if format != "html":
        audit.record(
            db,
            "history_exported",
            principal_of(current).name,
            format=format,
            level=level,
            rows=len(records),
            filters=request.url.query,
        )
        db.commit()
        stamp = utcnow().astimezone().strftime("%Y%m%d-%H%M")
        body = as_csv(records, ["study_instance_uid"]) if format == "csv" else as_json(records)
        media = "text/csv; charset=utf-8" if format == "csv" else "application/json"
        disposition = f'attachment; filename="history-{stamp}.{format}"'
        return Response(body, media_type=media, headers={"Content-Disposition": disposition})
    kept = [(k, v) for k, v in request.query_params.multi_items() if k != "format"]
    export = {fmt: "/history?" + urlencode([*kept, ("format", fmt)]) for fmt in ("csv", "json")}
    return page(
        request,
        "history.html.j2",
        records=records,
        level=level,
        query=query,
        statuses=list(InstanceStatus),
        export=export,
    )
