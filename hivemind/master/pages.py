"""The console's server-rendered pages. Every form works without JavaScript; the task page's
live log and the ages that tick are the only scripted parts (static/console.js)."""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from hivemind.master.api import INT32, fetch_tasks
from hivemind.master.auth import (
    Caller,
    LoginThrottled,
    caller_from_session,
    change_own_password,
    check_login_rate,
    nodepool_login,
    password_was_reset,
    session_of,
)
from hivemind.master.doctor_view import run_doctor_report
from hivemind.master.gateway import ApiError, Gateway
from hivemind.master.sessions import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    SessionStore,
    same_token,
)
from hivemind.master.submit import SubmitForm, submit_task
from hivemind.master.views import (
    stats_view,
    task_view,
    throughput_svg,
    user_view,
    worker_view,
)
from hivemind.proto import hivemind_pb2 as pb
from hivemind.states import TaskState

router = APIRouter(include_in_schema=False)
#: Paths whose errors are pages rather than JSON.
PAGE_PREFIXES = (
    "/login",
    "/logout",
    "/password",
    "/tasks",
    "/submit",
    "/workers",
    "/doctor",
    "/users",
)
TaskId = Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
Username = Path(min_length=1, max_length=64)


#: Workers the dashboard lists; the workers page has them all.
DASHBOARD_WORKERS = 20


def needing_attention(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lost or offline workers first, then the stalest heartbeats, then the busiest."""
    return sorted(
        workers,
        key=lambda w: (w["status"] == "online", -(w["heartbeat_age"] or 0) // 5, -w["load"]),
    )


class SignInRequired(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


def page_caller(request: Request) -> Caller:
    session = session_of(request)
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(f"/login?next={quote(target, safe='')}")
    return caller_from_session(session)


def form_caller(request: Request, csrf_token: str = Form("")) -> Caller:
    """A signed-in caller whose form carries this session's CSRF token."""
    caller = page_caller(request)
    assert caller.session is not None
    if not same_token(csrf_token, caller.session.csrf):
        raise ApiError(403, "this form is stale or came from another site; reload and retry")
    return caller


def admin_page_caller(caller: Caller = Depends(page_caller)) -> Caller:
    if not caller.is_admin:
        raise ApiError(403, "only admins may open this page")
    return caller


def admin_form_caller(caller: Caller = Depends(form_caller)) -> Caller:
    if not caller.is_admin:
        raise ApiError(403, "only admins may do this")
    return caller


def render(
    request: Request, template: str, caller: Caller | None, status: int = 200, **context: Any
) -> Response:
    templates: Jinja2Templates = request.app.state.templates
    context.update(session=caller.session if caller else None, caller=caller, now=time.time())
    return templates.TemplateResponse(request, template, context, status_code=status)


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


def safe_next(target: str) -> str:
    """Only a path on this site: never an open redirect."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


def notice_redirect(path: str, notice: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?notice={quote(notice)}", status_code=303)


# -- sign in and out -----------------------------------------------------------------------------
def _login_page(request: Request, next_path: str, error: str = "", status: int = 200) -> Response:
    token = secrets.token_urlsafe(32)
    response = render(
        request, "login.html", None, status, csrf=token, next_path=safe_next(next_path), error=error
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/login",
    )
    return response


@router.get("/login")
def login_form(request: Request, next: str = Query("/", max_length=2000)) -> Response:
    if session_of(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _login_page(request, next)


@router.post("/login")
def login(
    request: Request,
    username: str = Form("", max_length=64),
    password: str = Form("", max_length=1024),
    csrf_token: str = Form(""),
    next: str = Form("/", max_length=2000),
) -> Response:
    try:
        check_login_rate(request)
    except LoginThrottled as exc:
        return _throttled(_login_page(request, next, exc.message, 429), exc)
    if not same_token(csrf_token, request.cookies.get(LOGIN_CSRF_COOKIE, "")):
        return _login_page(request, next, "The form expired; please sign in again.", 403)
    if not username or not password:
        return _login_page(request, next, "Enter a username and a password.", 400)
    try:
        reply = nodepool_login(request, username, password)
    except LoginThrottled as exc:
        return _throttled(_login_page(request, next, exc.message, 429), exc)
    except ApiError as exc:
        return _login_page(request, next, exc.message, exc.status)
    store: SessionStore = request.app.state.sessions
    session = store.create(username, reply.user.role, reply.token, reply.expires_at)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session.id,
        max_age=max(1, int(session.expires_at - time.time())),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


def _throttled(response: Response, exc: LoginThrottled) -> Response:
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


@router.get("/password")
def password_form(request: Request, caller: Caller = Depends(page_caller)) -> Response:
    return render(
        request, "password.html", caller, error="", notice=request.query_params.get("notice", "")
    )


@router.post("/password")
def change_password_page(
    request: Request,
    caller: Caller = Depends(form_caller),
    old_password: str = Form("", max_length=1024),
    new_password: str = Form("", max_length=1024),
    repeat_password: str = Form("", max_length=1024),
) -> Response:
    """Change one's own password: the current one first. The session goes on with a new
    token; every other session and token of the user stops working."""

    def again(error: str, status: int) -> Response:
        return render(request, "password.html", caller, status, error=error, notice="")

    if not old_password or not new_password:
        return again("Enter your current password and a new one.", 400)
    if new_password != repeat_password:
        return again("The new password and its repetition differ.", 400)
    try:
        change_own_password(request, caller, old_password, new_password)
    except LoginThrottled as exc:
        return _throttled(again(exc.message, 429), exc)
    except ApiError as exc:
        return again(exc.message, exc.status)
    return notice_redirect("/password", "password changed; your other sessions were signed out")


@router.post("/logout")
def logout(request: Request, caller: Caller = Depends(form_caller)) -> Response:
    store: SessionStore = request.app.state.sessions
    assert caller.session is not None
    store.end(caller.session.id)
    gateway_of(request).forget(caller.token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- dashboard, tasks, workers --------------------------------------------------------------------
@router.get("/")
def dashboard(request: Request, caller: Caller = Depends(page_caller)) -> Response:
    stats, found, recent = gateway_of(request).parallel(
        caller.token,
        ("tasks", "GetStats", pb.Empty()),
        ("workers", "ListWorkers", pb.Empty()),
        ("tasks", "ListTasks", pb.ListTasksRequest(limit=10)),
        is_admin=caller.is_admin,
    )
    now = time.time()
    workers = [worker_view(w, now) for w in found.workers]
    summary = stats_view(stats, workers)
    return render(
        request,
        "dashboard.html",
        caller,
        stats=summary,
        workers=needing_attention(workers)[:DASHBOARD_WORKERS],
        recent=[task_view(t) for t in recent.tasks],
        chart=throughput_svg(summary["finished_per_minute"]),
    )


@router.get("/tasks")
def tasks_page(
    request: Request,
    caller: Caller = Depends(page_caller),
    status: str = Query("", max_length=20),
    name: str = Query("", max_length=200),
    owner: str = Query("", max_length=64),
    all_users: bool = Query(False),
    limit: int = Query(50, ge=1, le=1000),
) -> Response:
    chosen = TaskState(status) if status in TaskState.__members__ else None
    found = fetch_tasks(request, caller, chosen, name, owner, all_users, limit)
    return render(
        request,
        "tasks.html",
        caller,
        tasks=[task_view(t) for t in found],
        statuses=list(TaskState.__members__),
        filters={
            "status": chosen.value if chosen else "",
            "name": name,
            "owner": owner,
            "all_users": all_users,
            "limit": limit,
        },
    )


@router.get("/tasks/{task_id}")
def task_page(
    request: Request, task_id: str = TaskId, caller: Caller = Depends(page_caller)
) -> Response:
    with gateway_of(request).calling(caller.token, is_admin=caller.is_admin) as client:
        task = client.get(task_id)
        chunks = client.log_chunks(task_id)
    log_text = "".join(c.text for c in chunks)
    offset = chunks[-1].index + 1 if chunks else 0
    return render(
        request,
        "task.html",
        caller,
        task=task_view(task),
        log_text=log_text,
        log_offset=offset,
        notice=request.query_params.get("notice", ""),
    )


@router.post("/tasks/{task_id}/cancel")
def cancel_page(
    request: Request, task_id: str = TaskId, caller: Caller = Depends(form_caller)
) -> Response:
    with gateway_of(request).calling(caller.token, is_admin=caller.is_admin) as client:
        client.cancel(task_id)
    return notice_redirect(f"/tasks/{task_id}", "cancel requested")


@router.get("/submit")
def submit_form(request: Request, caller: Caller = Depends(page_caller)) -> Response:
    return render(request, "submit.html", caller)


@router.post("/submit")
def submit_page(
    request: Request,
    caller: Caller = Depends(form_caller),
    bundle: UploadFile | None = File(None),
    function: str = Form("", max_length=300),
    args: str = Form("", max_length=1_000_000),
    name: str = Form("", max_length=200),
    timeout: float = Form(0, ge=0, le=7 * 24 * 3600),
    retries: int = Form(-1, ge=-1, le=100),
    priority: int = Form(0, ge=-1000, le=1000),
    cpu: int = Form(0, ge=0, le=INT32),
    memory_mb: int = Form(0, ge=0, le=2**53),
    gpu: int = Form(0, ge=0, le=INT32),
    labels: str = Form("", max_length=2000),
) -> Response:
    form = SubmitForm.from_fields(
        name, function, args, timeout, retries, priority, cpu, memory_mb, gpu, labels
    )
    upload = bundle.file if bundle is not None and bundle.filename else None
    limit = request.app.state.settings.max_task_data_size
    with gateway_of(request).calling(caller.token, is_admin=caller.is_admin) as client:
        task_id = submit_task(client, form, upload, limit)
    return notice_redirect(f"/tasks/{task_id}", "submitted")


@router.get("/workers")
def workers_page(request: Request, caller: Caller = Depends(page_caller)) -> Response:
    with gateway_of(request).calling(caller.token, is_admin=caller.is_admin) as client:
        found = client.workers()
    now = time.time()
    return render(request, "workers.html", caller, workers=[worker_view(w, now) for w in found])


# -- admins ---------------------------------------------------------------------------------------
@router.get("/doctor")
def doctor_page(request: Request, caller: Caller = Depends(admin_page_caller)) -> Response:
    report = run_doctor_report(request.app.state.settings)
    categories: dict[str, list[dict[str, Any]]] = {}
    for check in report.get("checks", []):
        categories.setdefault(str(check.get("category", "other")), []).append(check)
    return render(request, "doctor.html", caller, report=report, categories=categories)


@router.get("/users")
def users_page(request: Request, caller: Caller = Depends(admin_page_caller)) -> Response:
    with gateway_of(request).calling(caller.token, is_admin=True) as client:
        users = [user_view(u) for u in client.list_users()]
    return render(
        request, "users.html", caller, users=users, notice=request.query_params.get("notice", "")
    )


@router.post("/users")
def create_user_page(
    request: Request,
    caller: Caller = Depends(admin_form_caller),
    username: str = Form(..., min_length=1, max_length=64),
    password: str = Form(..., min_length=1, max_length=1024),
    role: str = Form("user", pattern="^(user|admin)$"),
    credits: int = Form(0, ge=0, le=2**53),
) -> Response:
    with gateway_of(request).calling(caller.token, is_admin=True) as client:
        client.create_user(username, password, role, credits)
    return notice_redirect("/users", f"created {username}")


@router.post("/users/{username}/disable")
def disable_user_page(
    request: Request, username: str = Username, caller: Caller = Depends(admin_form_caller)
) -> Response:
    with gateway_of(request).calling(caller.token, is_admin=True) as client:
        client.disable_user(username)
    return notice_redirect("/users", f"disabled {username}")


@router.post("/users/{username}/password")
def password_page(
    request: Request,
    username: str = Username,
    caller: Caller = Depends(admin_form_caller),
    password: str = Form(..., min_length=1, max_length=1024),
) -> Response:
    if username == caller.username:
        raise ApiError(400, "change your own password on the Password page, with the current one")
    with gateway_of(request).calling(caller.token, is_admin=True) as client:
        client.set_password(username, password)
    password_was_reset(request, username)
    return notice_redirect("/users", f"password of {username} reset; their sessions ended")


@router.post("/users/{username}/credits")
def credits_page(
    request: Request,
    username: str = Username,
    caller: Caller = Depends(admin_form_caller),
    amount: int = Form(..., ge=-(2**53), le=2**53),
) -> Response:
    with gateway_of(request).calling(caller.token, is_admin=True) as client:
        user = client.grant_credits(username, amount)
    return notice_redirect("/users", f"{username} now has {user.credits} credits")
