"""Who is calling: a console session (cookie) or a script (bearer token), and CSRF checks;
signing in and changing passwords on the node pool for a client."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse

from hivemind.client import Client, RetryLater, forwarding_metadata
from hivemind.errors import NodePoolError
from hivemind.master.gateway import ApiError, Gateway, api_error
from hivemind.master.sessions import (
    CSRF_HEADER,
    SESSION_COOKIE,
    LoginLimiter,
    Session,
    SessionStore,
    same_token,
)
from hivemind.proto import hivemind_pb2 as pb

#: Seconds the master waits for the node pool's answer to a login or a password change.
LOGIN_TIMEOUT = 15.0

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


def bearer_token(request: Request) -> str:
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
    token = bearer_token(request)
    if token:
        with gateway.calling(token) as client:
            user = client.whoami()
        if user.role in ("worker", "service"):
            raise ApiError(403, f"a {user.role} token cannot use the API; log in as a user")
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


# -- signing in ------------------------------------------------------------------------------
class LoginThrottled(ApiError):
    """A 429 that says when to retry (the Retry-After header): too many sign-in attempts to
    this master, or too many failed logins from the client's address at the node pool."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(429, message)
        self.retry_after = max(1, int(retry_after + 0.999))

    def json_response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.message},
            status_code=429,
            headers={"Retry-After": str(self.retry_after)},
        )


def client_address(request: Request) -> str:
    """The client's address as the socket has it (the master trusts no X-Forwarded-For)."""
    return request.client.host if request.client else "unknown"


def check_login_rate(request: Request) -> None:
    """This master's own limit on sign-in attempts per client address (right or wrong)."""
    limiter: LoginLimiter = request.app.state.login_limiter
    wait = limiter.check(client_address(request))
    if wait:
        raise LoginThrottled(f"too many sign-in attempts; try again in {wait:.0f} s", wait)


def forwarded(request: Request) -> list[tuple[str, str]]:
    """gRPC metadata that has the node pool count failed logins against the client's address,
    not the master's: vouched for by the master's service token. Without the signing secret
    (a master on another host and no SECRET_KEY) there is none, and they count against the
    master's address."""
    gateway: Gateway = request.app.state.gateway
    try:
        service = gateway.service_client()
    except ApiError:
        return []
    return forwarding_metadata(service.token, client_address(request))


def nodepool_refusal(exc: NodePoolError) -> ApiError:
    if isinstance(exc, RetryLater):
        return LoginThrottled(str(exc), exc.retry_after)
    return api_error(exc)


def nodepool_login(request: Request, username: str, password: str) -> pb.TokenReply:
    """Log in at the node pool for the client of ``request`` (raises ApiError)."""
    gateway: Gateway = request.app.state.gateway
    metadata = forwarded(request)
    with Client(gateway.address, timeout=LOGIN_TIMEOUT, security=gateway.security) as anonymous:
        try:
            return anonymous.login(username, password, metadata)
        except NodePoolError as exc:
            raise nodepool_refusal(exc) from None


def change_own_password(
    request: Request, caller: Caller, old_password: str, new_password: str
) -> pb.TokenReply:
    """Change the caller's password. Their older tokens stop working: their console session
    (if this is one) goes on with the new token and their other sessions end."""
    gateway: Gateway = request.app.state.gateway
    metadata = forwarded(request)
    with Client(
        gateway.address, caller.token, timeout=LOGIN_TIMEOUT, security=gateway.security
    ) as client:
        try:
            reply = client.change_password(old_password, new_password, metadata)
        except NodePoolError as exc:
            raise nodepool_refusal(exc) from None
    store: SessionStore = request.app.state.sessions
    keep = caller.session.id if caller.session is not None else None
    if keep is not None:
        store.replace_token(keep, reply.token)
    for ended in store.end_user(caller.username, keep=keep):
        gateway.forget(ended.token)
    gateway.forget(caller.token)
    return reply


def password_was_reset(request: Request, username: str) -> None:
    """An admin reset ``username``'s password: their tokens are revoked, so their sessions end."""
    store: SessionStore = request.app.state.sessions
    gateway: Gateway = request.app.state.gateway
    for ended in store.end_user(username):
        gateway.forget(ended.token)
