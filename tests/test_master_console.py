"""The master's console pages and its security: sessions, CSRF, rate limits, escaping, secrets."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from hivemind.auth import load_secret
from hivemind.config import Settings
from hivemind.master.sessions import LOGIN_ATTEMPTS_MAX, SESSION_COOKIE
from tests.master_support import Console, console_for, csrf_of, password_of, sign_in

EVIL = "<script>alert('pwned')</script>"


@pytest.fixture
def console(settings: Settings) -> Iterator[Console]:
    with console_for(settings) as c:
        yield c


def test_pages_need_a_sign_in_and_return_where_they_were(console: Console) -> None:
    http = console.http()
    reply = http.get("/tasks?status=QUEUED")
    assert reply.status_code == 303
    assert reply.headers["location"] == "/login?next=%2Ftasks%3Fstatus%3DQUEUED"
    console.add_user("alice")
    page = http.get(reply.headers["location"])
    assert page.status_code == 200 and 'value="/tasks?status=QUEUED"' in page.text
    signed = http.post(
        "/login",
        data={
            "username": "alice",
            "password": password_of("alice"),
            "csrf_token": csrf_of(page.text),
            "next": "/tasks?status=QUEUED",
        },
    )
    assert signed.status_code == 303 and signed.headers["location"] == "/tasks?status=QUEUED"
    assert http.get("/tasks?status=QUEUED").status_code == 200


def test_session_cookie_is_httponly_samesite_and_holds_no_token(console: Console) -> None:
    console.add_user("alice")
    http = console.http()
    reply = sign_in(http, "alice", password_of("alice"))
    cookie = reply.headers["set-cookie"]  # type: ignore[attr-defined]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert "httponly" in flags and "samesite=lax" in flags and "path=/" in flags
    assert any(f.startswith("max-age=") for f in flags)
    # The cookie is a random id: the node pool token never leaves the master.
    session_id = http.cookies[SESSION_COOKIE]
    [session] = console.app.state.sessions._sessions.values()
    assert session.id == session_id and session.token not in cookie


def test_open_redirects_are_refused(console: Console) -> None:
    console.add_user("alice")
    http = console.http()
    page = http.get("/login")
    reply = http.post(
        "/login",
        data={
            "username": "alice",
            "password": password_of("alice"),
            "csrf_token": csrf_of(page.text),
            "next": "//evil.example/",
        },
    )
    assert reply.headers["location"] == "/"


def test_wrong_password_shows_the_form_again_with_401(console: Console) -> None:
    console.add_user("alice")
    reply = sign_in(console.http(), "alice", "wrong")
    assert reply.status_code == 401  # type: ignore[attr-defined]
    assert "wrong username or password" in reply.text  # type: ignore[attr-defined]


def test_sign_in_without_the_form_csrf_token_is_refused(console: Console) -> None:
    console.add_user("alice")
    reply = console.http().post(
        "/login", data={"username": "alice", "password": password_of("alice")}
    )
    assert reply.status_code == 403 and SESSION_COOKIE not in reply.headers.get("set-cookie", "")


def test_sign_in_is_rate_limited_per_client(console: Console) -> None:
    console.add_user("alice")
    http = console.http()
    codes = [
        http.post("/api/auth/login", json={"username": f"u{i}", "password": "x"}).status_code
        for i in range(LOGIN_ATTEMPTS_MAX)
    ]
    assert set(codes) == {401}
    # Even the right password waits now, on the form as on the API.
    limited = sign_in(http, "alice", password_of("alice"))
    assert limited.status_code == 429  # type: ignore[attr-defined]
    assert "too many sign-in attempts" in limited.text  # type: ignore[attr-defined]
    api = http.post("/api/auth/login", json={"username": "alice", "password": "alice-password"})
    assert api.status_code == 429


def test_sessions_expire(settings: Settings) -> None:
    with console_for(settings.replace(master_session_ttl=1.0)) as console:
        http = console.browser("alice")
        assert http.get("/").status_code == 200
        assert http.get("/api/me").status_code == 200
        time.sleep(1.3)
        assert http.get("/").status_code == 303
        assert http.get("/api/me").status_code == 401


def test_sign_out_ends_the_session(console: Console) -> None:
    http = console.browser("alice")
    page = http.get("/")
    assert http.post("/logout", data={}).status_code == 403  # no CSRF token: refused
    assert http.post("/logout", data={"csrf_token": csrf_of(page.text)}).status_code == 303
    assert http.get("/").status_code == 303


def test_forms_and_cookie_api_calls_need_the_csrf_token(console: Console) -> None:
    http = console.browser("alice")
    page = http.get("/submit")
    form = {"function": "hivemind.examples:add", "args": "[1, 2]"}
    assert http.post("/submit", data=form).status_code == 403
    assert http.post("/submit", data={**form, "csrf_token": "forged"}).status_code == 403
    # The same session calling the API: a cookie alone may read, not write.
    assert http.get("/api/tasks").status_code == 200
    assert http.post("/api/tasks", data=form).status_code == 403
    token = csrf_of(page.text)
    ok = http.post("/api/tasks", data=form, headers={"x-csrf-token": token})
    assert ok.status_code == 201


def test_submit_through_the_form_then_see_and_cancel_it(console: Console) -> None:
    http = console.browser("alice")
    token = csrf_of(http.get("/submit").text)
    reply = http.post(
        "/submit",
        data={
            "csrf_token": token,
            "function": "hivemind.examples:add",
            "args": "[2, 3]",
            "name": "form-task",
            "timeout": "30",
            "retries": "0",
            "cpu": "1",
            "labels": "demo",
        },
    )
    assert reply.status_code == 303
    location = reply.headers["location"]
    assert location.startswith("/tasks/")
    page = http.get(location)
    assert page.status_code == 200 and "form-task" in page.text and "QUEUED" in page.text
    assert "submitted" in page.text
    listing = http.get("/tasks", params={"name": "form"})
    assert location.split("?")[0].removeprefix("/tasks/") in listing.text
    task_id = location.split("?")[0].removeprefix("/tasks/")
    cancelled = http.post(f"/tasks/{task_id}/cancel", data={"csrf_token": token})
    assert cancelled.status_code == 303
    assert "CANCELLED" in http.get(f"/tasks/{task_id}").text


def test_bad_form_input_is_a_400_page_not_a_500(console: Console) -> None:
    http = console.browser("alice")
    token = csrf_of(http.get("/submit").text)
    for data in (
        {"function": "hivemind.examples:add", "args": "not json"},
        {"function": "hivemind.examples:add", "timeout": "soon"},
        {"function": "hivemind.examples:add", "retries": "99999999999999999999"},
    ):
        reply = http.post("/submit", data={**data, "csrf_token": token})
        assert reply.status_code == 400, reply.text
        assert reply.headers["content-type"].startswith("text/html")
    assert http.get("/tasks", params={"limit": "zero"}).status_code == 400


def test_user_strings_are_escaped_everywhere(console: Console) -> None:
    alice = console.api("alice")
    task_id = alice.post(
        "/api/tasks",
        data={"function": "hivemind.examples:add", "name": EVIL, "args": f'["{EVIL}"]'},
    ).json()["task_id"]
    http = console.browser("alice")
    for path in ("/", "/tasks", f"/tasks/{task_id}", f"/tasks?name={EVIL}"):
        page = http.get(path)
        assert page.status_code == 200, path
        assert EVIL not in page.text, path
    assert (
        "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in http.get(f"/tasks/{task_id}").text
    )
    # A notice in the address is text, too; and the page forbids inline scripts outright.
    page = http.get(f"/tasks/{task_id}?notice={EVIL}")
    assert EVIL not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


def test_refusals_that_echo_user_input_escape_it(console: Console) -> None:
    http = console.browser("root", admin=True)
    token = csrf_of(http.get("/users").text)
    form = {"csrf_token": token, "username": "<b>mallory</b>", "password": "x" * 8}
    page = http.post("/users", data=form)
    assert page.status_code == 400 and "may hold only letters" in page.text
    assert "<b>mallory</b>" not in page.text and "&lt;b&gt;mallory&lt;/b&gt;" in page.text


def test_no_secret_appears_in_any_page(console: Console) -> None:
    http = console.browser("root", admin=True)
    console.api("alice").post("/api/tasks", data={"function": "hivemind.examples:add"})
    [session] = console.app.state.sessions._sessions.values()
    secrets = [session.token, load_secret(console.settings).decode(), password_of("root")]
    for path in (
        "/",
        "/tasks?all_users=true",
        "/workers",
        "/users",
        "/submit",
        "/api/me",
        "/api/stats",
        "/metrics",
        "/healthz",
        "/openapi.json",
    ):
        page = http.get(path)
        assert page.status_code in (200, 503), path
        for secret in secrets:
            assert secret not in page.text, (path, "leaks a secret")


def test_normal_users_get_403_on_admin_pages_and_others_tasks(console: Console) -> None:
    task_id = (
        console.api("alice")
        .post("/api/tasks", data={"function": "hivemind.examples:add", "name": "alices-own"})
        .json()["task_id"]
    )
    bob = console.browser("bob")
    for path in ("/users", "/doctor", f"/tasks/{task_id}"):
        page = bob.get(path)
        assert page.status_code == 403, path
        assert page.headers["content-type"].startswith("text/html")
        assert "alices-own" not in page.text
    token = csrf_of(bob.get("/").text)
    assert bob.post(f"/tasks/{task_id}/cancel", data={"csrf_token": token}).status_code == 403
    form = {"csrf_token": token, "username": "eve", "password": "eve-password"}
    assert bob.post("/users", data=form).status_code == 403
    assert "Users" not in bob.get("/").text.split("<main>")[0]  # no admin links in the nav


def test_admin_manages_users_through_the_page(console: Console) -> None:
    http = console.browser("root", admin=True)
    token = csrf_of(http.get("/users").text)
    created = http.post(
        "/users",
        data={"csrf_token": token, "username": "carol", "password": "carol-pass", "credits": "3"},
    )
    assert created.status_code == 303 and "created" in http.get(created.headers["location"]).text
    http.post("/users/carol/credits", data={"csrf_token": token, "amount": "7"})
    http.post("/users/carol/password", data={"csrf_token": token, "password": "carol-new-pass"})
    assert sign_in(console.http(), "carol", "carol-new-pass").status_code == 303  # type: ignore[attr-defined]
    http.post("/users/carol/disable", data={"csrf_token": token})
    users = console.api("root", admin=True).get("/api/users").json()["users"]
    carol = next(u for u in users if u["username"] == "carol")
    assert carol["credits"] == 10 and carol["disabled"] is True
    dup = http.post(
        "/users", data={"csrf_token": token, "username": "carol", "password": "carol-pass"}
    )
    assert dup.status_code == 409 and "already exists" in dup.text


def test_dashboard_shows_counts_workers_and_the_chart(console: Console) -> None:
    from hivemind.auth import issue_worker_token
    from hivemind.proto import hivemind_pb2 as pb
    from hivemind.worker.connection import WorkerConnection

    conn = WorkerConnection(
        console.settings.client_address,
        "gpu-box-1",
        issue_worker_token(console.settings, "gpu-box-1"),
    )
    conn.register(pb.WorkerResources(cpu=8, memory_mb=16384, gpu=1, capacity=4), [])
    api = console.api("alice")
    for _ in range(2):
        api.post("/api/tasks", data={"function": "hivemind.examples:add"})
    page = console.browser("alice").get("/")
    assert page.status_code == 200
    text = page.text
    assert 'data-stat="queued">2<' in text and "gpu-box-1" in text and "online" in text
    assert "<svg" in text and "tasks finished per minute" in text
    assert 'class="age" data-since=' in text  # the heartbeat age, ticking with the script
    workers = console.browser("alice").get("/workers")
    assert "gpu-box-1" in workers.text and "0/4" in workers.text
