"""FastAPI dependencies: a database session per request, who is asking, and the CSRF check.

Pages send a person who is not signed in to the sign-in form; the API answers 401. Both
accept a browser session; the API also accepts `Authorization: Bearer <token>`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Form, Request
from fastapi import Path as PathParameter
from sqlalchemy.orm import Session

from core.accounts import Principal, principal_of, session_for, token_principal
from core.db.schema import WebSession
from web.security import SESSION_COOKIE, CsrfError, same

# A row number from a URL: a larger one is no row, and would overflow the database's integer.
RowId = Annotated[int, PathParameter(ge=1, le=2**63 - 1)]


class SignInRequiredError(Exception):
    """No valid session: pages redirect to the sign-in form, the API answers 401."""


class AdminRequiredError(Exception):
    """Signed in, but the page is for administrators."""


def database(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


Db = Annotated[Session, Depends(database)]


def web_session(request: Request, db: Db) -> WebSession:
    token = request.cookies.get(SESSION_COOKIE)
    found = session_for(db, token) if token else None
    if found is None:
        raise SignInRequiredError
    request.state.web_session = found
    return found


CurrentSession = Annotated[WebSession, Depends(web_session)]


def maybe_session(request: Request, db: Db) -> WebSession | None:
    """For pages open to all (About): signed-in readers still get their menu."""
    try:
        return web_session(request, db)
    except SignInRequiredError:
        return None


MaybeSession = Annotated[WebSession | None, Depends(maybe_session)]


def person(current: CurrentSession) -> Principal:
    return principal_of(current)


Person = Annotated[Principal, Depends(person)]


def admin(who: Person) -> Principal:
    if not who.is_admin:
        raise AdminRequiredError
    return who


Admin = Annotated[Principal, Depends(admin)]


def api_caller(request: Request, db: Db) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() == "bearer" and secret.strip():
        found = token_principal(db, secret.strip())
        if found is None:
            raise SignInRequiredError
        return found
    return principal_of(web_session(request, db))


ApiCaller = Annotated[Principal, Depends(api_caller)]


def csrf_checked(current: CurrentSession, csrf_token: Annotated[str, Form()] = "") -> WebSession:
    if not same(csrf_token, current.csrf_token):
        raise CsrfError
    return current


CheckedSession = Annotated[WebSession, Depends(csrf_checked)]
