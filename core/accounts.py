"""Local accounts, browser sessions and API tokens of the web application.

Passwords are kept only as argon2id hashes (argon2-cffi's defaults, RFC 9106's second
recommended set). Session cookies and API tokens are random secrets of which the database
holds only the SHA-256: they are long and random, so a fast hash is enough, and a stolen copy
of the database lets nobody in. Failed sign-ins are counted in the database per user name
and per address, so that every web process throttles the same guesses. Every change to an
account or a token, every sign-in and every refusal goes to the audit trail.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core import audit
from core.config import WebConfig
from core.db.schema import ApiToken, LoginAttempt, Role, User, WebSession
from core.db.types import utcnow

_hasher = PasswordHasher()
_USERNAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_PASSWORD_LENGTH = 10
# Wrong passwords refused from one address, as a multiple of `web.login_max_failures`.
ADDRESS_FACTOR = 4
# Verified against when the user name is unknown, so that a guess at a name takes as long
# as a guess at a password and the answer time does not say which names exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(Exception):
    """A request about accounts that cannot be met; the message says why, in one line."""


class SignInThrottledError(AccountError):
    """Too many failed sign-ins for the name or from the address within the window."""


@dataclass(frozen=True)
class Principal:
    """Who is asking: a signed-in person or an API token."""

    name: str
    role: Role
    user_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _check_name(kind: str, name: str) -> None:
    """Names of accounts and tokens appear in the audit trail and on pages: plain ones."""
    if not _USERNAME.fullmatch(name):
        raise AccountError(f"{kind} {name!r}: use 1 to 64 letters, digits, '.', '_' or '-'")


def add_user(session: Session, username: str, role: Role, password: str, actor: str) -> User:
    _check_name("user name", username)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise AccountError(f"user {username} already exists")
    user = User(username=username, role=role, password_hash=_hasher.hash(password))
    session.add(user)
    audit.record(session, "user_added", actor, username=username, role=role.value)
    return user


def users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def disable_user(session: Session, username: str, actor: str) -> User:
    """Disabling also ends the user's open sessions at once."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise AccountError(f"no user {username}")
    if user.disabled_at is None:
        user.disabled_at = utcnow()
        session.execute(delete(WebSession).where(WebSession.user_fk == user.id))
        audit.record(session, "user_disabled", actor, username=username)
    return user


def _refuse(
    session: Session, attempt: LoginAttempt | None, name: str, address: str, action: str
) -> None:
    """Audit a refusal; a refusal because of earlier failures does not count as one more."""
    if attempt is not None:
        session.delete(attempt)
    audit.record(session, action, name, address=address)
    session.commit()


def _recent_failures(session: Session, column: object, value: str, since: datetime) -> int:
    return session.scalar(
        select(func.count(LoginAttempt.id)).where(column == value, LoginAttempt.at >= since)
    )


def sign_in(
    session: Session,
    username: str,
    password: str,
    address: str,
    web: WebConfig,
    replacing: str | None = None,
) -> tuple[Principal, str, str]:
    """A new session for a correct user name and password, as (principal, cookie token,
    CSRF token), ending the session of the cookie it replaces; AccountError otherwise, with
    one message for an unknown name and a wrong password.

    Each attempt is written (and committed) before the password is checked, so that
    concurrent guesses count each other. Past `web.login_max_failures` attempts in
    `web.login_window_minutes` for one name, even a correct password is refused until the
    window has passed; from one address, `ADDRESS_FACTOR` times as many wrong passwords are
    refused, but a correct one still signs in, so that one ward's mistakes behind a shared
    address do not lock everyone out. A successful sign-in clears its name's count."""
    now = utcnow()
    since = now - timedelta(minutes=web.login_window_minutes)
    name, where = username[:64], address[:64]
    session.execute(delete(LoginAttempt).where(LoginAttempt.at < since))
    attempt = LoginAttempt(at=now, username=name, address=where)
    session.add(attempt)
    session.commit()
    by_name = _recent_failures(session, LoginAttempt.username, name, since)
    by_address = _recent_failures(session, LoginAttempt.address, where, since)
    if by_name > web.login_max_failures:
        _refuse(session, attempt, name, address, "sign_in_throttled")
        raise SignInThrottledError(
            "too many failed sign-ins: try again in"
            f" {web.login_window_minutes:g} minutes, or ask an administrator"
        )
    user = session.scalar(select(User).where(User.username == username))
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
        valid = user is not None and user.disabled_at is None
    except (VerificationError, InvalidHashError):
        valid = False
    if not valid or user is None:
        throttled = by_address > ADDRESS_FACTOR * web.login_max_failures
        _refuse(
            session, None, name, address, "sign_in_throttled" if throttled else "sign_in_failed"
        )
        if throttled:
            raise SignInThrottledError(
                "too many failed sign-ins from this address: try again in"
                f" {web.login_window_minutes:g} minutes, or ask an administrator"
            )
        raise AccountError("unknown user name or wrong password")
    session.execute(delete(LoginAttempt).where(LoginAttempt.username == name))
    if replacing:
        session.execute(delete(WebSession).where(WebSession.token_hash == _digest(replacing)))
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.add(
        WebSession(
            token_hash=_digest(token),
            csrf_token=csrf,
            user=user,
            created_at=now,
            expires_at=now + timedelta(hours=web.session_hours),
        )
    )
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    audit.record(session, "signed_in", user.username, address=address)
    session.commit()
    return Principal(user.username, Role(user.role), user.id), token, csrf


def session_for(session: Session, token: str) -> WebSession | None:
    """The live session a cookie names, or None when it is unknown, expired or its user
    has been disabled since."""
    found = session.scalar(select(WebSession).where(WebSession.token_hash == _digest(token)))
    if found is None or found.expires_at <= utcnow() or found.user.disabled_at is not None:
        return None
    return found


def principal_of(web_session: WebSession) -> Principal:
    user = web_session.user
    return Principal(user.username, Role(user.role), user.id)


def sign_out(session: Session, token: str) -> None:
    found = session.scalar(select(WebSession).where(WebSession.token_hash == _digest(token)))
    if found is not None:
        audit.record(session, "signed_out", found.user.username)
        session.delete(found)
        session.commit()


def add_token(session: Session, name: str, actor: str) -> str:
    """The new token, shown once: only its digest is kept. Tokens read (the API has no
    writes), so they carry the radiologist role."""
    _check_name("token name", name)
    if session.scalar(select(ApiToken).where(ApiToken.name == name)) is not None:
        raise AccountError(f"a token named {name} already exists")
    secret = "pt_" + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_hash=_digest(secret)))
    audit.record(session, "token_added", actor, token=name)
    return secret


def tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name)))


def revoke_token(session: Session, name: str, actor: str) -> None:
    token = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if token is None:
        raise AccountError(f"no token named {name}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(session, "token_revoked", actor, token=name)


def token_principal(session: Session, secret: str) -> Principal | None:
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == _digest(secret)))
    if token is None or token.revoked_at is not None:
        return None
    token.last_used_at = utcnow()
    session.commit()
    return Principal(f"token:{token.name}", Role.RADIOLOGIST)
