"""Logs, live events and results through the master, with a worker speaking real gRPC; and
`hivemind master` as the daemon systemd runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx2
import pytest

from hivemind.auth import issue_worker_token
from hivemind.config import Settings
from hivemind.proto import hivemind_pb2 as pb
from hivemind.worker.connection import WorkerConnection
from tests.helpers import free_port, wait_until
from tests.master_support import Console, console_for, password_of, serving


@pytest.fixture
def console(settings: Settings) -> Iterator[Console]:
    with console_for(settings) as c:
        yield c


def lease_one(console: Console) -> tuple[WorkerConnection, pb.LeasedTask]:
    conn = WorkerConnection(
        console.settings.client_address, "w1", issue_worker_token(console.settings, "w1")
    )
    conn.register(pb.WorkerResources(cpu=2, memory_mb=1024, capacity=2), [])
    [leased] = conn.lease(1, wait=2).tasks
    return conn, leased


def parse_sse(text: str) -> list[tuple[str | None, str, dict[str, object]]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
    return events


def test_log_events_and_result_of_a_finished_task(console: Console) -> None:
    api = console.api("alice")
    task_id = api.post(
        "/api/tasks", data={"function": "hivemind.examples:add", "args": "[2, 3]"}
    ).json()["task_id"]
    conn, leased = lease_one(console)
    assert api.get(f"/api/tasks/{task_id}/result").status_code == 409  # not finished yet
    for line in ("first line\n", "second <b>line</b>\n"):
        assert conn.append_log(task_id, leased.attempt, line)
    ok = pb.TaskResult(ref=conn.ref(task_id, leased.attempt), outcome=pb.SUCCEEDED, result_json="5")
    assert conn.complete([ok])[0].accepted

    log = api.get(f"/api/tasks/{task_id}/log")
    assert log.status_code == 200 and log.text == "first line\nsecond <b>line</b>\n"
    assert log.headers["content-type"].startswith("text/plain")
    events = parse_sse(api.get(f"/api/tasks/{task_id}/events").text)
    assert [(i, e) for i, e, _ in events] == [
        ("0", "log"),
        ("1", "log"),
        (None, "task"),
        (None, "end"),
    ]
    assert events[1][2] == {"text": "second <b>line</b>\n"}
    assert events[3][2]["status"] == "SUCCEEDED"
    # A reconnecting browser sends the last id it saw and gets only what came after.
    resumed = parse_sse(
        api.get(f"/api/tasks/{task_id}/events", headers={"last-event-id": "0"}).text
    )
    assert [e for _, e, _ in resumed] == ["log", "task", "end"] and resumed[0][0] == "1"
    result = api.get(f"/api/tasks/{task_id}/result")
    assert result.status_code == 200 and result.json()["result_json"] == "5"
    page = console.browser("alice").get(f"/tasks/{task_id}")
    assert "second &lt;b&gt;line&lt;/b&gt;" in page.text and 'data-live="0"' in page.text
    assert 'id="result-download"' in page.text


def test_followed_log_streams_lines_as_they_are_written(console: Console) -> None:
    api = console.api("alice")
    task_id = api.post("/api/tasks", data={"function": "hivemind.examples:add"}).json()["task_id"]
    conn, leased = lease_one(console)
    token = api.headers["authorization"]

    def worker() -> None:
        for i in range(3):
            time.sleep(0.4)
            conn.append_log(task_id, leased.attempt, f"tick {i}\n")
        ref = conn.ref(task_id, leased.attempt)
        conn.complete([pb.TaskResult(ref=ref, outcome=pb.FAILED, error_message="boom")])

    with serving(console.app) as base:
        writer = threading.Thread(target=worker)
        writer.start()
        seen: list[tuple[float, str]] = []
        began = time.monotonic()
        with httpx2.stream(
            "GET",
            f"{base}/api/tasks/{task_id}/log",
            params={"follow": "true"},
            headers={"authorization": token},
            timeout=30,
        ) as reply:
            for piece in reply.iter_text():
                seen.append((time.monotonic() - began, piece))
        writer.join()
    assert "".join(p for _, p in seen) == "tick 0\ntick 1\ntick 2\n"
    # It arrived piece by piece while the task ran, not in one lump at the end.
    assert seen[0][0] < seen[-1][0] - 0.5
    failed = api.get(f"/api/tasks/{task_id}").json()
    assert failed["status"] == "FAILED" and failed["error_message"] == "boom"
    assert api.get(f"/api/tasks/{task_id}/result").status_code == 404


def test_hivemind_master_daemon_serves_and_stops_on_sigterm(console: Console) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
    env.update(
        HIVEMIND_HOME=str(console.settings.home),
        HIVEMIND_GRPC_PORT=str(console.settings.grpc_port),
        HIVEMIND_REDIS_URL=console.settings.redis_url,
        HIVEMIND_MASTER_HOST="127.0.0.1",
        HIVEMIND_MASTER_PORT=str(port),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hivemind", "master"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx2.get(f"{base}/healthz").json()["nodepool"] == "ok"
            except httpx2.HTTPError:
                return False

        assert wait_until(healthy, timeout=20)
        console.add_user("alice")
        login = httpx2.post(
            f"{base}/api/auth/login", json={"username": "alice", "password": password_of("alice")}
        )
        assert login.status_code == 200
        log_file = console.settings.home / "master" / "logs" / "master.log"
        assert f"master listening on http://127.0.0.1:{port}" in log_file.read_text()
        # A second master on the same port says so in one line and exits 1.
        busy = subprocess.run(
            [sys.executable, "-m", "hivemind", "master", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert busy.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr
        assert "Traceback" not in busy.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
