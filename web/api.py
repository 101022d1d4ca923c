"""The JSON API for scripts and the RIS: studies, results and feedback, read only.

Callers send `Authorization: Bearer <token>` (`pneumotriage token add NAME`) or come from a
signed-in browser. The OpenAPI description is at /api/openapi.json; there is no interactive
documentation page, because that would load scripts from a CDN and hospital networks are
closed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from sqlalchemy import select

from core import audit
from core.accounts import Principal
from core.db.schema import Feedback, Study, StudyResult, User
from core.history import HistoryQuery, find
from core.texts import as_local
from core.worklist import WorklistFilter, worklist
from web.deps import ApiCaller, Db
from web.history_pages import Search, history_records

router = APIRouter(prefix="/api", tags=["api"])


def _audited(
    request: Request, db: Db, caller: Principal, records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Bulk reads of patient data are audited like views of a study: who, what, how many."""
    audit.record(
        db,
        "api_read",
        caller.name,
        path=request.url.path,
        filters=request.url.query,
        rows=len(records),
    )
    db.commit()
    return jsonable_encoder(records)


@router.get("/studies", summary="Studies with their study-level results and latest feedback")
def studies(request: Request, db: Db, caller: ApiCaller, query: Search) -> list[dict[str, Any]]:
    return _audited(request, db, caller, history_records(db, query, "study"))


@router.get("/results", summary="Every image with its result, as `pneumotriage history`")
def results(request: Request, db: Db, caller: ApiCaller, query: Search) -> list[dict[str, Any]]:
    return _audited(request, db, caller, history_records(db, query, "instance"))


@router.get("/studies/{study_instance_uid}", summary="One study's images and results")
def study(db: Db, caller: ApiCaller, study_instance_uid: str) -> list[dict[str, Any]]:
    """A list: one Study UID may be on file under two patients (an identity conflict)."""
    rows = [
        row.as_record() for row in find(db, HistoryQuery(study_instance_uid=study_instance_uid))
    ]
    if not rows:
        raise HTTPException(status_code=404, detail="no such study")
    audit.record(db, "study_viewed", caller.name, study_instance_uid=study_instance_uid, via="api")
    db.commit()
    return jsonable_encoder(rows)


@router.get("/feedback", summary="Radiologists' feedback, newest first")
def feedback(
    request: Request, db: Db, caller: ApiCaller, since: datetime | None = None
) -> list[dict[str, Any]]:
    statement = (
        select(Feedback, User.username, Study.study_instance_uid, StudyResult.version)
        .join(User, Feedback.user_fk == User.id)
        .join(Study, Feedback.study_fk == Study.id)
        .outerjoin(StudyResult, Feedback.study_result_fk == StudyResult.id)
        .order_by(Feedback.created_at.desc(), Feedback.id.desc())
    )
    if since is not None:
        statement = statement.where(Feedback.created_at >= as_local(since))
    return _audited(
        request,
        db,
        caller,
        [
            {
                "study_instance_uid": uid,
                "finding": entry.finding,
                "agrees": entry.agrees,
                "comment": entry.comment,
                "by": username,
                "at": entry.created_at,
                "result_version": version,
            }
            for entry, username, uid, version in db.execute(statement)
        ],
    )


@router.get("/worklist", summary="The worklist: flagged first by score, then by waiting time")
def worklist_api(
    request: Request,
    db: Db,
    caller: ApiCaller,
    page: int = 1,
    page_size: int = 50,
    flagged_only: bool = False,
) -> dict[str, Any]:
    found = worklist(
        db, WorklistFilter(flagged_only=flagged_only), page, min(max(page_size, 1), 500)
    )
    studies = _audited(
        request,
        db,
        caller,
        [
            {k: v for k, v in vars(row).items() if k != "thumbnail_instance_id"}
            for row in found.rows
        ],
    )
    return {"total": found.total, "page": found.page, "pages": found.pages, "studies": studies}
