"""The web application, assembled: routers, error pages, security headers, static files.

`create_app` takes what the application needs from outside as arguments (the database
sessions, a function that loads the model, a function that renders a report), the way
FastAPI's dependencies take theirs, so that `pneumotriage/` composes it with the node in one
process, or runs it alone, and the tests can run it as it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker
from starlette.formparsers import MultiPartParser

import core
from core.accounts import session_for
from core.config import Config
from core.model_store import LoadedModel, ModelError, model_dir, read_card
from web import (
    about_page,
    admin_pages,
    api,
    history_pages,
    report_pages,
    signin,
    study_pages,
    try_page,
    worklist_pages,
)
from web.deps import AdminRequiredError, SignInRequiredError
from web.security import SESSION_COOKIE, CsrfError, access_log, security_headers
from web.templates import page

STATIC = Path(__file__).resolve().parent / "static"
# The look shared with the nightly report.
SHARED_STATIC = Path(core.__file__).resolve().parent / "static"
MEGABYTE = 1024 * 1024
# Every form of the pages but the upload is a few fields.
FORM_BYTES = 64 * 1024


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _install_error_pages(app: FastAPI) -> None:
    @app.exception_handler(SignInRequiredError)
    def _sign_in(request: Request, _exc: SignInRequiredError) -> Response:
        if _is_api(request):
            return JSONResponse(
                {"detail": "sign in, or send Authorization: Bearer <token>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if request.method != "GET":
            return PlainTextResponse("sign in first", status_code=401)
        return signin.sign_in_redirect(request.url.path)

    @app.exception_handler(AdminRequiredError)
    def _admin(request: Request, _exc: AdminRequiredError) -> Response:
        return page(request, "forbidden.html.j2", status_code=403)

    @app.exception_handler(CsrfError)
    def _csrf(request: Request, _exc: CsrfError) -> Response:
        message = (
            "the form was not sent from this application's own page (CSRF token missing or"
            " wrong); reload the page and try again"
        )
        return PlainTextResponse(message, status_code=403)

    @app.exception_handler(ModelError)
    def _model(request: Request, exc: ModelError) -> Response:
        return page(request, "unavailable.html.j2", status_code=503, message=str(exc))

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> Response:
        """One line a person can read instead of a validation dump."""
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        message = f"{where}: {first.get('msg', 'invalid value')}"
        if _is_api(request):
            return JSONResponse({"detail": message}, status_code=422)
        return PlainTextResponse(message, status_code=422)


def _body_limit(
    limit: int,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """FastAPI reads a form before any dependency runs, so the size of a body is decided
    here, before it is read: a form of the pages at most FORM_BYTES, an upload to the try-it
    page at most `limit` and only from a signed-in browser. What is admitted is parsed in
    memory (Starlette otherwise spools parts over 1 MB to the system temporary folder, and a
    DICOM file carries its patient's name)."""
    MultiPartParser.spool_max_size = limit + FORM_BYTES

    async def check(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.method != "POST":
            return await call_next(request)
        length = request.headers.get("content-length", "")
        if not length.isdigit():
            return PlainTextResponse("a request body needs its Content-Length", status_code=411)
        upload = request.url.path == "/try"
        if int(length) > (limit + FORM_BYTES if upload else FORM_BYTES):
            allowed = f"{limit / MEGABYTE:g} MB" if upload else f"{FORM_BYTES // 1024} KB"
            return PlainTextResponse(f"the request is larger than {allowed}", status_code=413)
        if upload and not _signed_in(request):
            return PlainTextResponse("sign in first", status_code=401)
        return await call_next(request)

    return check


def _signed_in(request: Request) -> bool:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return False
    with request.app.state.sessions() as session:
        return session_for(session, token) is not None


def create_app(
    config: Config,
    sessions: sessionmaker[Session],
    model: Callable[[], LoadedModel],
    render_report: Callable[[datetime, datetime], str],
) -> FastAPI:
    app = FastAPI(
        title="pneumotriage",
        summary="Pneumonia triage results of chest radiographs, for scripts and the RIS",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.config = config
    app.state.sessions = sessions
    app.state.model = model
    app.state.render_report = render_report

    def model_status() -> dict[str, Any]:
        """What the status page says of the model, from its card: loading the model for a
        status line would put TensorFlow into the node's process under `serve` (each
        worker's heartbeat says which model it runs)."""
        try:
            card = read_card(model_dir(config.model.directory, config.model.name))
        except (ModelError, ValueError, TypeError, OSError) as exc:
            return {"error": str(exc)}
        return {"name": card.name, "version": card.version, "threshold": card.threshold}

    app.state.model_status = model_status
    app.middleware("http")(_body_limit(int(config.web.max_upload_mb * MEGABYTE)))
    app.middleware("http")(security_headers)
    app.middleware("http")(access_log)
    _install_error_pages(app)
    for module in (
        signin,
        worklist_pages,
        study_pages,
        history_pages,
        try_page,
        about_page,
        report_pages,
        admin_pages,
        api,
    ):
        app.include_router(module.router)
    app.mount("/static/shared", StaticFiles(directory=SHARED_STATIC), name="shared")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
