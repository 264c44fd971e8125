"""The JSON REST API under /api/: what scripts use with a bearer token."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from hivemind.master.auth import (
    Caller,
    LoginThrottled,
    admin_caller,
    api_caller,
    change_own_password,
    check_login_rate,
    nodepool_login,
    password_was_reset,
)
from hivemind.master.doctor_view import run_doctor_report
from hivemind.master.gateway import ApiError, Gateway
from hivemind.master.live import log_text_stream, sse_stream
from hivemind.master.results import result_response
from hivemind.master.submit import SubmitForm, submit_task
from hivemind.master.views import stats_view, task_view, user_view, worker_view
from hivemind.states import TaskState


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, fit to show a user")


#: The refusals every route may answer with, documented once for /openapi.json.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": meaning}
    for status, meaning in {
        400: "bad input",
        401: "not signed in, or the token expired",
        403: "not allowed: an admin route, or a task that is not yours",
        404: "no such thing",
        409: "the task's state does not allow it (e.g. cancel a finished task)",
        413: "the body is over MAX_TASK_DATA_SIZE",
        429: "too many sign-in attempts, or failed logins from this address (see Retry-After)",
        503: "the node pool cannot be reached",
    }.items()
}

router = APIRouter(prefix="/api", tags=["api"], responses=ERRORS)

TaskId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Username = Annotated[str, Path(min_length=1, max_length=64)]
INT32 = 2**31 - 1


class Credentials(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class NewUser(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    role: str = Field(default="user", pattern="^(user|admin)$")
    credits: int = Field(default=0, ge=0, le=2**53)


class NewPassword(BaseModel):
    password: str = Field(min_length=1, max_length=1024)


class PasswordChange(BaseModel):
    old_password: str = Field(min_length=1, max_length=1024, description="the current one")
    new_password: str = Field(min_length=1, max_length=1024, description="8 characters or more")


#: The 429 of the sign-in routes, with its header.
THROTTLED: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorBody,
        "description": "too many sign-in attempts, or failed logins from this address",
        "headers": {
            "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
        },
    }
}


class Grant(BaseModel):
    amount: int = Field(ge=-(2**53), le=2**53)


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


@router.post("/auth/login", summary="Log in for a bearer token", responses=THROTTLED)
def login(credentials: Credentials, request: Request) -> Any:
    try:
        check_login_rate(request)
        reply = nodepool_login(request, credentials.username, credentials.password)
    except LoginThrottled as exc:
        return exc.json_response()
    user = credentials.username
    return {
        "token": reply.token,
        "expires_at": reply.expires_at,
        "username": user,
        "role": reply.user.role,
    }


@router.post(
    "/me/password",
    summary="Change your own password; your older tokens stop working",
    responses=THROTTLED,
)
def change_password(
    request: Request, body: PasswordChange, caller: Caller = Depends(api_caller)
) -> Any:
    """Needs the current password. A bearer caller gets its new token in the answer; a console
    session goes on with its new one (which stays in the master)."""
    try:
        reply = change_own_password(request, caller, body.old_password, body.new_password)
    except LoginThrottled as exc:
        return exc.json_response()
    answer = {"username": caller.username, "role": reply.user.role, "expires_at": reply.expires_at}
    return answer if caller.session is not None else {"token": reply.token, **answer}


@router.get("/me", summary="Who the token or session belongs to")
def me(request: Request, caller: Caller = Depends(api_caller)) -> dict[str, Any]:
    with gateway_of(request).calling(caller.token) as client:
        return user_view(client.whoami())


@router.get("/tasks", summary="List tasks, newest first")
def list_tasks(
    request: Request,
    caller: Caller = Depends(api_caller),
    status: TaskState | None = None,
    name: str = Query("", max_length=200, description="Only tasks whose name contains this"),
    owner: str = Query("", max_length=64, description="Admins: only this user's tasks"),
    all_users: bool = Query(False, description="Admins: everyone's tasks"),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    tasks = fetch_tasks(request, caller, status, name, owner, all_users, limit)
    return {"tasks": [task_view(t) for t in tasks]}


def fetch_tasks(
    request: Request,
    caller: Caller,
    status: TaskState | None,
    name: str,
    owner: str,
    all_users: bool,
    limit: int,
) -> list[Any]:
    everyone = (all_users or bool(owner)) and caller.is_admin
    if not caller.is_admin and (all_users or owner not in ("", caller.username)):
        raise ApiError(403, "only an admin lists other users' tasks")
    # Name and owner filters apply to what the node pool returns: ask for more to fill the page.
    fetch = min(1000, limit * 5) if (name or owner) else limit
    with gateway_of(request).calling(caller.token, is_admin=caller.is_admin) as client:
        tasks = client.list(status=status.value if status else "", limit=fetch, all_users=everyone)
    if name:
        tasks = [t for t in tasks if name.lower() in t.spec.name.lower()]
    if owner:
        tasks = [t for t in tasks if t.owner == owner]
    return tasks[:limit]


@router.post("/tasks", status_code=201, summary="Submit a task: a bundle zip or a function")
def submit(
    request: Request,
    caller: Caller = Depends(api_caller),
    bundle: UploadFile | None = File(None, description="A zip with task.json or main.py"),
    function: str = Form("", max_length=300, description="module:function"),
    args: str = Form("", max_length=1_000_000, description="JSON array of arguments"),
    name: str = Form("", max_length=200),
    timeout: float = Form(0, ge=0, le=7 * 24 * 3600, description="seconds; 0: TASK_TIMEOUT"),
    retries: int = Form(-1, ge=-1, le=100, description="-1: DEFAULT_RETRIES"),
    priority: int = Form(0, ge=-1000, le=1000),
    cpu: int = Form(0, ge=0, le=INT32),
    memory_mb: int = Form(0, ge=0, le=2**53),
    gpu: int = Form(0, ge=0, le=INT32),
    labels: str = Form("", max_length=2000, description="comma-separated"),
) -> dict[str, Any]:
    form = SubmitForm.from_fields(
        name, function, args, timeout, retries, priority, cpu, memory_mb, gpu, labels
    )
    limit = request.app.state.settings.max_task_data_size
    upload = bundle.file if bundle is not None and bundle.filename else None
    with gateway_of(request).calling(caller.token, is_admin=caller.is_admin) as client:
        task_id = submit_task(client, form, upload, limit)
    return {"task_id": task_id}


@router.get("/tasks/{task_id}", summary="One task, with its attempt history")
def get_task(request: Request, task_id: TaskId, caller: Caller = Depends(api_caller)) -> Any:
    with gateway_of(request).calling(caller.token, is_admin=caller.is_admin) as client:
        return task_view(client.get(task_id))


@router.post("/tasks/{task_id}/cancel", summary="Cancel a queued or running task")
def cancel_task(request: Request, task_id: TaskId, caller: Caller = Depends(api_caller)) -> Any:
    with gateway_of(request).calling(caller.token, is_admin=caller.is_admin) as client:
        return task_view(client.cancel(task_id))


@router.get(
    "/tasks/{task_id}/log",
    summary="The task's log as text; follow=true streams it until the task ends",
    response_class=StreamingResponse,
)
def task_log(
    request: Request,
    task_id: TaskId,
    caller: Caller = Depends(api_caller),
    follow: bool = False,
) -> Response:
    gateway = gateway_of(request)
    with gateway.calling(caller.token, is_admin=caller.is_admin) as client:
        first = client.log_chunks(task_id)  # refusals surface here, before any byte is sent
    stream = log_text_stream(gateway, caller, task_id, first, follow)
    return StreamingResponse(stream, media_type="text/plain; charset=utf-8")


@router.get(
    "/tasks/{task_id}/events",
    summary="Server-sent events: log lines and status changes, until the task ends",
    response_class=StreamingResponse,
)
def task_events(
    request: Request,
    task_id: TaskId,
    caller: Caller = Depends(api_caller),
    offset: int = Query(0, ge=0, le=2**31, description="log chunk to start from"),
) -> Response:
    gateway = gateway_of(request)
    with gateway.calling(caller.token, is_admin=caller.is_admin) as client:
        client.get(task_id)
    resume = request.headers.get("last-event-id", "")
    if resume.isdigit():
        offset = int(resume) + 1
    return StreamingResponse(
        sse_stream(gateway, caller, task_id, offset),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/tasks/{task_id}/result",
    summary="The result: a zip of output/ for bundles, JSON for functions",
    responses={200: {"content": {"application/zip": {}, "application/json": {}}}},
)
def task_result(request: Request, task_id: TaskId, caller: Caller = Depends(api_caller)) -> Any:
    return result_response(gateway_of(request), caller, task_id)


@router.get("/workers", summary="Workers, with heartbeat age and load")
def workers(request: Request, caller: Caller = Depends(api_caller)) -> dict[str, Any]:
    with gateway_of(request).calling(caller.token, is_admin=caller.is_admin) as client:
        found = client.workers()
    now = time.time()
    return {"workers": [worker_view(w, now) for w in found]}


@router.get("/stats", summary="Queue, running and finished counts, and throughput")
def stats(request: Request, caller: Caller = Depends(api_caller)) -> dict[str, Any]:
    with gateway_of(request).calling(caller.token, is_admin=caller.is_admin) as client:
        found, workers_now = client.stats(), client.workers()
    return stats_view(found, [worker_view(w) for w in workers_now])


# -- admins ----------------------------------------------------------------------------------
@router.get("/users", summary="Admins: every user")
def list_users(request: Request, caller: Caller = Depends(admin_caller)) -> dict[str, Any]:
    with gateway_of(request).calling(caller.token, is_admin=True) as client:
        return {"users": [user_view(u) for u in client.list_users()]}


@router.post("/users", status_code=201, summary="Admins: create a user")
def create_user(
    request: Request, new: NewUser, caller: Caller = Depends(admin_caller)
) -> dict[str, Any]:
    with gateway_of(request).calling(caller.token, is_admin=True) as client:
        return user_view(client.create_user(new.username, new.password, new.role, new.credits))


@router.post("/users/{username}/disable", summary="Admins: disable a user")
def disable_user(
    request: Request, username: Username, caller: Caller = Depends(admin_caller)
) -> dict[str, Any]:
    with gateway_of(request).calling(caller.token, is_admin=True) as client:
        return user_view(client.disable_user(username))


@router.post(
    "/users/{username}/password",
    summary="Admins: reset another user's password; their tokens stop working",
)
def reset_password(
    request: Request, username: Username, body: NewPassword, caller: Caller = Depends(admin_caller)
) -> dict[str, Any]:
    if username == caller.username:
        raise ApiError(
            400, "to change your own password, POST /api/me/password with your current one"
        )
    with gateway_of(request).calling(caller.token, is_admin=True) as client:
        user = client.set_password(username, body.password)
    password_was_reset(request, username)
    return user_view(user)


@router.post("/users/{username}/credits", summary="Admins: add (or take away) credits")
def grant_credits(
    request: Request, username: Username, body: Grant, caller: Caller = Depends(admin_caller)
) -> dict[str, Any]:
    with gateway_of(request).calling(caller.token, is_admin=True) as client:
        return user_view(client.grant_credits(username, body.amount))


@router.get("/doctor", summary="Admins: run the doctor's checks (the same ids as the CLI)")
def doctor(
    request: Request,
    caller: Caller = Depends(admin_caller),
    only: list[str] = Query([]),
    skip: list[str] = Query([]),
) -> JSONResponse:
    return JSONResponse(run_doctor_report(request.app.state.settings, only, skip))
