"""What every response carries, and what every state-changing request must prove.

The pages hold patient data on shared reading-room workstations, so nothing may be framed,
cached or sent to another site, and no script may run but our own file. Forms carry the
session's CSRF token (the synchroniser-token pattern); the sign-in form, which has no session
yet, carries a token that must equal the one in its own cookie (double submit).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable

from fastapi import Request, Response

log = logging.getLogger("web.access")
SESSION_COOKIE = "pt_session"
LOGIN_COOKIE = "pt_login"
CSP = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self';"
    " object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class CsrfError(Exception):
    """A state-changing request without the token of the session (or sign-in form)."""


async def security_headers(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    response = await call_next(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    if not request.url.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    if request.url.scheme == "https":
        response.headers["Strict-Transport-Security"] = "max-age=31536000"
    return response


async def access_log(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """One line per request with the path but never the query string, which may hold a
    Patient ID or an accession number (uvicorn's own access log, which prints it, is off)."""
    response = await call_next(request)
    client = request.client.host if request.client else "-"
    log.info("%s %s %s %d", client, request.method, request.url.path, response.status_code)
    return response


def same(given: str | None, expected: str | None) -> bool:
    return bool(given and expected) and hmac.compare_digest(str(given), str(expected))


def new_token() -> str:
    return secrets.token_urlsafe(32)


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    """HttpOnly so no script reads it, SameSite=Strict so no other site's page sends it,
    Secure whenever the page came over HTTPS (directly or through a trusted proxy)."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
