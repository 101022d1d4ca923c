"""Sign-in and sign-out."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from core.accounts import AccountError, SignInThrottledError, sign_in, sign_out
from web.deps import CheckedSession, Db
from web.security import LOGIN_COOKIE, SESSION_COOKIE, new_token, same, set_cookie
from web.templates import page

router = APIRouter()
# The sign-in form's own token lives as long as a person may take to type a password.
LOGIN_FORM_SECONDS = 3600


def _safe_next(target: str) -> str:
    """Only a path on this site, so the form cannot be used to send people elsewhere."""
    plain = target.isprintable() and not any(c.isspace() for c in target)
    if plain and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def sign_in_redirect(path: str) -> RedirectResponse:
    return RedirectResponse(f"/login?next={quote(_safe_next(path), safe='/')}", status_code=303)


def _form(request: Request, next_path: str, error: str = "", status_code: int = 200) -> Response:
    token = new_token()
    response = page(
        request,
        "login.html.j2",
        status_code=status_code,
        login_token=token,
        next_path=_safe_next(next_path),
        error=error,
    )
    set_cookie(response, request, LOGIN_COOKIE, token, LOGIN_FORM_SECONDS)
    return response


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_form(request: Request, next: str = "/") -> Response:
    return _form(request, next)


@router.post("/login", include_in_schema=False)
def login(
    request: Request,
    db: Db,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    login_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    if not same(login_token, request.cookies.get(LOGIN_COOKIE)):
        return _form(request, next, "The sign-in form had expired; please sign in again.", 403)
    address = request.client.host if request.client else ""
    try:
        _who, token, _csrf = sign_in(
            db,
            username.strip(),
            password,
            address,
            request.app.state.config.web,
            replacing=request.cookies.get(SESSION_COOKIE),
        )
    except AccountError as exc:
        status = 429 if isinstance(exc, SignInThrottledError) else 401
        return _form(request, next, str(exc).capitalize() + ".", status)
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_cookie(
        response,
        request,
        SESSION_COOKIE,
        token,
        int(request.app.state.config.web.session_hours * 3600),
    )
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@router.post("/logout", include_in_schema=False)
def logout(request: Request, db: Db, _current: CheckedSession) -> Response:
    sign_out(db, request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
