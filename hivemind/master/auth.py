"""Who is calling: a console session (cookie) or a script (bearer token), and CSRF checks."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from hivemind.master.gateway import ApiError, Gateway
from hivemind.master.sessions import (
    CSRF_HEADER,
    SESSION_COOKIE,
    Session,
    SessionStore,
    same_token,
)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Caller:
    username: str
    role: str
    token: str
    session: Session | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def session_of(request: Request) -> Session | None:
    store: SessionStore = request.app.state.sessions
    return store.get(request.cookies.get(SESSION_COOKIE))


def caller_from_session(session: Session) -> Caller:
    return Caller(session.username, session.role, session.token, session)


def api_caller(request: Request) -> Caller:
    """The caller of an API route: bearer token first, else the console session.

    A session's unsafe calls must carry its CSRF token in the X-CSRF-Token header, so
    another site cannot make a signed-in browser submit or cancel.
    """
    gateway: Gateway = request.app.state.gateway
    token = _bearer(request)
    if token:
        with gateway.calling(token) as client:
            user = client.whoami()
        if user.role == "worker":
            raise ApiError(403, "a worker token cannot use the API; log in as a user")
        return Caller(user.username, user.role, token)
    session = session_of(request)
    if session is None:
        raise ApiError(401, "not signed in: POST /api/auth/login for a bearer token")
    if request.method not in SAFE_METHODS and not same_token(
        request.headers.get(CSRF_HEADER), session.csrf
    ):
        raise ApiError(403, "missing or wrong X-CSRF-Token header for this session")
    return caller_from_session(session)


def admin_caller(request: Request) -> Caller:
    caller = api_caller(request)
    if not caller.is_admin:
        raise ApiError(403, "this needs an admin")
    return caller
