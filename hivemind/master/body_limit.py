"""Request bodies are counted as they arrive, and uploads are read only for a known caller.

A Content-Length check alone lets a chunked body through: this middleware counts the bytes
``receive`` hands the app, chunked or not, and answers 413 at the route's limit without
reading the rest (the server then closes the connection). An upload route's multipart body
would be spooled to disk before the route's own authentication ran, so an upload without a
valid bearer token or a live console session is refused before its first byte is read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import HTTPException
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Largest body of a route that takes no upload (JSON, console forms), in bytes.
SMALL_BODY_LIMIT = 16 * 1024
#: Routes that take a bundle upload: the API's and the console's submit.
UPLOAD_ROUTES = frozenset({("POST", "/api/tasks"), ("POST", "/submit")})


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over {limit} bytes")


class BodyLimit:
    """413 past ``upload_limit`` bytes on upload routes and :data:`SMALL_BODY_LIMIT` elsewhere.

    ``known_caller`` (run in a thread, as it may call the node pool) gets the request's
    headers and returns None for a caller it knows, or the response that refuses the upload.
    """

    def __init__(
        self,
        app: ASGIApp,
        upload_limit: int,
        known_caller: Callable[[Request], Response | None],
    ) -> None:
        self.app = app
        self.upload_limit = upload_limit
        self.known_caller = known_caller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_upload = (scope["method"], scope["path"]) in UPLOAD_ROUTES
        limit = self.upload_limit if is_upload else SMALL_BODY_LIMIT
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        if is_upload:
            refusal = await run_in_threadpool(self.known_caller, Request(scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, _counting(receive, limit), send)


def _counting(receive: Receive, limit: int) -> Callable[[], Awaitable[Message]]:
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                # Raised into whatever reads the body (a form parser, request.json()); the
                # app's handler turns it into the 413 and the rest is never read.
                raise BodyTooLarge(limit)
        return message

    return counted


def _too_large(limit: int) -> Response:
    return JSONResponse({"error": str(BodyTooLarge(limit).detail)}, status_code=413)
