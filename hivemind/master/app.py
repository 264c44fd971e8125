"""The master's ASGI app: routes, error handling and security headers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hivemind import __version__
from hivemind.config import Settings
from hivemind.errors import NodePoolError
from hivemind.master import api, observability, pages
from hivemind.master.auth import bearer_token
from hivemind.master.body_limit import BodyLimit
from hivemind.master.gateway import ApiError, Gateway, api_error
from hivemind.master.sessions import LoginLimiter, SessionStore
from hivemind.master.views import age, when

log = logging.getLogger("hivemind.master")
HERE = Path(__file__).resolve().parent
#: Room for the multipart framing around a bundle of MAX_TASK_DATA_SIZE.
FORM_OVERHEAD = 64 * 1024
SECURITY_HEADERS = {
    # Scripts and styles only from our own /static: an injected <script> would not run.
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                headers.extend((k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items())
            await send(message)

        await self.app(scope, receive, send_with_headers)


def wants_json(request: Request) -> bool:
    path = request.url.path
    return not (path == "/" or any(path.startswith(p) for p in pages.PAGE_PREFIXES))


def error_response(request: Request, status: int, message: str) -> Response:
    if wants_json(request):
        return JSONResponse({"error": message}, status_code=status)
    templates: Jinja2Templates = request.app.state.templates
    session = pages.session_of(request)
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "message": message, "session": session},
        status_code=status,
    )


def upload_refusal(request: Request) -> Response | None:
    """None when an upload comes from a caller the node pool or a live session vouches for,
    else the refusal: checked before the body is read (see :mod:`hivemind.master.body_limit`)."""
    token = bearer_token(request)
    if token:
        gateway: Gateway = request.app.state.gateway
        try:
            gateway.client(token).whoami()
        except NodePoolError as exc:
            return error_response(request, api_error(exc).status, api_error(exc).message)
        return None
    if pages.session_of(request) is not None:
        return None
    if wants_json(request):
        return error_response(request, 401, "not signed in: POST /api/auth/login for a token")
    return RedirectResponse(f"/login?next={quote(request.url.path, safe='')}", status_code=303)


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="HiveMind master",
        version=__version__,
        description=(
            "The REST API of the HiveMind master. Log in with POST /api/auth/login and send "
            "the token as `Authorization: Bearer TOKEN`."
        ),
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.gateway = Gateway(settings)
    app.state.sessions = SessionStore(settings.master_session_ttl)
    app.state.login_limiter = LoginLimiter()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["when"] = when
    templates.env.filters["age"] = age
    app.state.templates = templates

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> Response:
        return error_response(request, exc.status, exc.message)

    @app.exception_handler(pages.SignInRequired)
    async def on_sign_in(request: Request, exc: pages.SignInRequired) -> Response:
        return RedirectResponse(exc.location, status_code=303)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        )
        return error_response(request, 400, f"invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "internal error; the master's log has the details")

    document = app.openapi

    def openapi_without_422() -> dict[str, Any]:
        """Invalid input is a 400 here (FastAPI documents its own 422 on every route)."""
        if app.openapi_schema is None:
            for operations in document()["paths"].values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi_without_422  # type: ignore[method-assign]
    app.include_router(api.router)
    app.include_router(observability.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(
        BodyLimit,  # type: ignore[arg-type]
        upload_limit=settings.max_task_data_size + FORM_OVERHEAD,
        known_caller=upload_refusal,
    )
    app.add_middleware(SecurityHeaders)  # type: ignore[arg-type]
    return app
