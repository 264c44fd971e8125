"""The master's REST API against a real node pool: auth, tasks, errors, stats and metrics."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hivemind.config import Settings
from tests.master_support import Console, console_for


@pytest.fixture
def console(settings: Settings) -> Iterator[Console]:
    with console_for(settings) as c:
        yield c


def zip_bytes(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


def test_login_gives_a_bearer_token_that_scripts_use(console: Console) -> None:
    api = console.api("alice")
    me = api.get("/api/me")
    assert me.status_code == 200
    assert me.json()["username"] == "alice" and me.json()["role"] == "user"


def test_wrong_password_is_401_and_missing_token_is_401(console: Console) -> None:
    console.add_user("alice")
    http = console.http()
    reply = http.post("/api/auth/login", json={"username": "alice", "password": "nope"})
    assert reply.status_code == 401 and "wrong username or password" in reply.json()["error"]
    assert http.get("/api/tasks").status_code == 401
    forged = http.get("/api/tasks", headers={"authorization": "Bearer forged.token"})
    assert forged.status_code == 401


def test_submit_a_function_then_list_get_and_cancel(console: Console) -> None:
    api = console.api("alice")
    reply = api.post(
        "/api/tasks",
        data={
            "function": "hivemind.examples:add",
            "args": "[2, 3]",
            "name": "adder",
            "retries": "1",
            "timeout": "60",
            "labels": "fast, small",
        },
    )
    assert reply.status_code == 201, reply.text
    task_id = reply.json()["task_id"]
    task = api.get(f"/api/tasks/{task_id}").json()
    assert task["name"] == "adder" and task["status"] == "QUEUED" and task["retries"] == 1
    assert task["requirements"]["labels"] == ["fast", "small"]
    listed = api.get("/api/tasks", params={"status": "QUEUED", "name": "add"}).json()["tasks"]
    assert [t["id"] for t in listed] == [task_id]
    assert api.get("/api/tasks", params={"name": "nothing-like-it"}).json()["tasks"] == []
    cancelled = api.post(f"/api/tasks/{task_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    again = api.post(f"/api/tasks/{task_id}/cancel")
    assert again.status_code == 409 and "error" in again.json()


def test_submit_a_bundle_upload(console: Console) -> None:
    api = console.api("alice")
    bundle = zip_bytes({"main.py": "print('hi')\n"})
    reply = api.post("/api/tasks", files={"bundle": ("job.zip", bundle, "application/zip")})
    assert reply.status_code == 201, reply.text
    task = api.get(f"/api/tasks/{reply.json()['task_id']}").json()
    assert task["kind"] == "bundle" and len(task["bundle_id"]) == 64


@pytest.mark.parametrize(
    ("form", "files", "message"),
    [
        ({}, None, "give a bundle zip"),
        ({"function": "not a function"}, None, "module:function"),
        ({"function": "m:f", "args": "{"}, None, "JSON array"),
        ({"function": "m:f", "args": '{"a": 1}'}, None, "JSON array"),
        ({"function": "m:f", "retries": "1000"}, None, "retries"),
        ({"function": "m:f", "cpu": "-1"}, None, "cpu"),
        ({"function": "m:f", "labels": "bad label!"}, None, "label"),
        ({}, {"bundle": ("x.zip", b"not a zip", "application/zip")}, "not a zip"),
        ({}, {"bundle": ("x.zip", b"", "application/zip")}, "empty"),
    ],
)
def test_bad_submissions_are_400_with_a_reason(
    console: Console, form: dict[str, str], files: object, message: str
) -> None:
    api = console.api("alice")
    reply = api.post("/api/tasks", data=form, files=files)  # type: ignore[arg-type]
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]


def test_oversized_upload_is_413(settings: Settings) -> None:
    with console_for(settings.replace(max_task_data_size=1000)) as console:
        api = console.api("alice")
        big = zip_bytes({"main.py": "x = 1\n" * 10, "data.bin": "y" * 200_000})
        reply = api.post("/api/tasks", files={"bundle": ("big.zip", big, "application/zip")})
        assert reply.status_code == 413 and "bytes" in reply.json()["error"]


def test_someone_elses_task_is_403_and_a_missing_route_404(console: Console) -> None:
    alice, bob = console.api("alice"), console.api("bob")
    task_id = alice.post("/api/tasks", data={"function": "hivemind.examples:add"}).json()["task_id"]
    for path in (
        f"/api/tasks/{task_id}",
        f"/api/tasks/{task_id}/log",
        f"/api/tasks/{task_id}/result",
    ):
        reply = bob.get(path)
        assert reply.status_code == 403, (path, reply.text)
        assert "hivemind.examples" not in reply.text
    assert bob.post(f"/api/tasks/{task_id}/cancel").status_code == 403
    assert bob.get("/api/tasks", params={"all_users": "true"}).status_code == 403
    admin = console.api("root", admin=True)
    assert admin.get(f"/api/tasks/{task_id}").status_code == 200
    assert admin.get("/api/tasks/0000000000000000").status_code == 404
    assert bob.get("/api/nothing-here").status_code == 404


def test_admin_endpoints_refuse_normal_users_with_403(console: Console) -> None:
    bob = console.api("bob")
    assert bob.get("/api/users").status_code == 403
    assert bob.post("/api/users", json={"username": "x", "password": "12345678"}).status_code == 403
    assert bob.get("/api/doctor").status_code == 403


def test_admin_manages_users_through_the_api(console: Console) -> None:
    admin = console.api("root", admin=True)
    created = admin.post(
        "/api/users", json={"username": "carol", "password": "carol-password", "credits": 5}
    )
    assert created.status_code == 201 and created.json()["credits"] == 5
    dup = admin.post("/api/users", json={"username": "carol", "password": "carol-password"})
    assert dup.status_code == 409
    short = admin.post("/api/users/carol/password", json={"password": "short"})
    assert short.status_code == 400 and "8 characters" in short.json()["error"]
    assert admin.post("/api/users/carol/password", json={"password": "new-password"}).is_success
    granted = admin.post("/api/users/carol/credits", json={"amount": 10})
    assert granted.json()["credits"] == 15
    assert admin.post("/api/users/carol/credits", json={"amount": -100}).status_code == 400
    assert admin.post("/api/users/nobody/disable").status_code == 404
    assert admin.post("/api/users/carol/disable").json()["disabled"] is True
    login = console.http().post(
        "/api/auth/login", json={"username": "carol", "password": "new-password"}
    )
    assert login.status_code == 401  # a disabled account signs in no more


def test_worker_tokens_cannot_use_the_api(console: Console) -> None:
    from hivemind.auth import issue_worker_token

    token = issue_worker_token(console.settings, "w1")
    reply = console.http().get("/api/tasks", headers={"authorization": f"Bearer {token}"})
    assert reply.status_code == 403


def test_stats_and_metrics_count_what_happened(console: Console) -> None:
    api = console.api("alice")
    ids = [
        api.post("/api/tasks", data={"function": "hivemind.examples:add"}).json()["task_id"]
        for _ in range(3)
    ]
    api.post(f"/api/tasks/{ids[0]}/cancel")
    stats = api.get("/api/stats").json()
    assert stats["queued"] == 2 and stats["running"] == 0 and stats["cancelled"] == 1
    assert len(stats["finished_per_minute"]) == 60 and stats["finished_per_minute"][-1] == 1
    metrics = console.http().get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert "hivemind_queue_length 2" in text
    assert 'hivemind_tasks_finished_total{status="CANCELLED"} 1' in text
    assert "hivemind_workers_live 0" in text and "hivemind_tasks_per_second" in text


def test_metrics_show_workers_and_their_heartbeat_age(console: Console) -> None:
    from hivemind.auth import issue_worker_token
    from hivemind.proto import hivemind_pb2 as pb
    from hivemind.worker.connection import WorkerConnection

    conn = WorkerConnection(
        console.settings.client_address, "w1", issue_worker_token(console.settings, "w1")
    )
    conn.register(pb.WorkerResources(cpu=2, memory_mb=1024, capacity=4), [])
    time.sleep(0.2)
    text = console.http().get("/metrics").text
    assert "hivemind_workers_live 1" in text
    [line] = [x for x in text.splitlines() if x.startswith("hivemind_worker_heartbeat_age")]
    assert 'node="w1"' in line and 0 < float(line.split()[-1]) < 5
    workers = console.api("alice").get("/api/workers").json()["workers"]
    assert workers[0]["node_id"] == "w1" and workers[0]["capacity"] == 4


def test_healthz_and_openapi(console: Console) -> None:
    http = console.http()
    health = http.get("/healthz")
    assert health.status_code == 200 and health.json()["nodepool"] == "ok"
    doc = http.get("/openapi.json").json()
    assert {"/api/tasks", "/api/auth/login", "/api/doctor", "/healthz", "/metrics"} <= set(
        doc["paths"]
    )
    assert not any(p.startswith(("/login", "/users")) for p in doc["paths"])


def test_healthz_says_when_the_node_pool_is_down(settings: Settings) -> None:
    from hivemind.master import create_app
    from tests.helpers import free_port

    app = create_app(settings.replace(grpc_port=free_port()))
    from fastapi.testclient import TestClient

    reply = TestClient(app).get("/healthz")
    assert reply.status_code == 200 and reply.json()["nodepool"].startswith("unreachable")
    api = TestClient(app).post("/api/auth/login", json={"username": "a", "password": "b"})
    assert api.status_code == 503 and "cannot reach the node pool" in api.json()["error"]


def test_doctor_for_admins_has_the_cli_schema(console: Console) -> None:
    admin = console.api("root", admin=True)
    reply = admin.get("/api/doctor", params={"only": ["ports"]})
    assert reply.status_code == 200, reply.text
    report = reply.json()
    assert report["schema"] == 1 and set(report["summary"]) == {
        "ok",
        "warn",
        "fail",
        "skip",
        "error",
    }
    ids = {c["id"] for c in report["checks"]}
    assert "ports.nodepool" in ids and "ports.redis" in ids
    for check in report["checks"]:
        assert {"id", "category", "title", "status", "summary", "evidence", "fix", "guide"} <= set(
            check
        )
    unknown = admin.get("/api/doctor", params={"only": "no.such.check"})
    assert unknown.status_code == 400 and "no.such.check" in unknown.json()["error"]


def test_doctor_page_shows_the_same_ids_and_hints(console: Console) -> None:
    from tests.master_support import password_of, sign_in

    console.add_user("root", admin=True)
    http = console.http()
    sign_in(http, "root", password_of("root"))
    page = http.get("/doctor")
    assert page.status_code == 200
    report = console.api("root", admin=True).get("/api/doctor").json()
    for check in report["checks"]:
        assert check["id"] in page.text
    failing = [c for c in report["checks"] if c["status"] in ("warn", "fail") and c["fix"]]
    if failing:  # a test home has no master and no workers: some checks warn, with fixes
        assert "Fix" in page.text


def test_metrics_without_the_signing_secret_say_what_is_missing(
    console: Console, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from hivemind.master import create_app

    elsewhere = create_app(console.settings.replace(home=tmp_path / "another-host"))
    reply = TestClient(elsewhere).get("/metrics")
    assert reply.status_code == 503 and "signing secret" in reply.json()["error"]
    assert "SECRET_KEY" in reply.json()["error"]
