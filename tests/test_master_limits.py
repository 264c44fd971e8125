"""What bounded input cannot do to a real `hivemind master` process: grow it, fill its disk,
or cut a signed-in user's live stream."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx2
import psutil
import pytest

from hivemind.config import Settings
from hivemind.proto import hivemind_pb2 as pb
from tests.helpers import free_port, wait_until
from tests.master_support import Console, console_for, password_of
from tests.test_master_live import lease_one

GIB = 1024**3
MIB = 1024**2
UPLOAD_LIMIT = 4 * MIB


@dataclass
class Master:
    console: Console
    process: subprocess.Popen[str]
    base: str
    port: int
    spool: Path

    def token(self, name: str) -> str:
        self.console.add_user(name)
        reply = httpx2.post(
            f"{self.base}/api/auth/login", json={"username": name, "password": password_of(name)}
        )
        assert reply.status_code == 200, reply.text
        return str(reply.json()["token"])

    def log(self) -> str:
        return (self.console.settings.home / "master" / "logs" / "master.log").read_text()


@pytest.fixture
def master(settings: Settings, tmp_path: Path) -> Iterator[Master]:
    # Leases outlive the junk flood: the test's worker connection does not heartbeat.
    limits = settings.replace(max_task_data_size=UPLOAD_LIMIT, heartbeat_interval=20.0)
    with console_for(limits) as console:
        port = free_port()
        spool = tmp_path / "spool"
        spool.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
        env.update(
            HIVEMIND_HOME=str(console.settings.home),
            HIVEMIND_GRPC_PORT=str(console.settings.grpc_port),
            HIVEMIND_REDIS_URL=console.settings.redis_url,
            HIVEMIND_MASTER_HOST="127.0.0.1",
            HIVEMIND_MASTER_PORT=str(port),
            HIVEMIND_MAX_TASK_DATA_SIZE=str(UPLOAD_LIMIT),
            TMPDIR=str(spool),  # where a form parser would spool an upload
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "hivemind", "master"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx2.get(f"{base}/healthz").json()["nodepool"] == "ok"
            except httpx2.HTTPError:
                return False

        try:
            assert wait_until(healthy, timeout=20)
            yield Master(console, proc, base, port, spool)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


class Watch:
    """Samples the master's RSS and the bytes in its spool folder while a request runs."""

    def __init__(self, pid: int, spool: Path) -> None:
        self.process = psutil.Process(pid)
        self.spool = spool
        self.baseline = self.process.memory_info().rss
        self.peak_rss = self.baseline
        self.peak_spool = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def spooled(self) -> int:
        total = 0
        for path in self.spool.rglob("*"):
            try:
                total += path.stat().st_size if path.is_file() else 0
            except OSError:
                continue  # removed while we looked
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            self.peak_spool = max(self.peak_spool, self.spooled())
            self._stop.wait(0.02)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak_rss - self.baseline


def _complete(answer: bytes) -> bool:
    """Whether ``answer`` holds a whole response: its head and the Content-Length body (the
    body can arrive in a later segment than the head)."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return True


def push_chunked(
    port: int, path: str, headers: dict[str, str], prefix: bytes, total: int = GIB
) -> tuple[int, int, bytes]:
    """Send a chunked body of ``total`` bytes (``prefix``, then filler) until the master
    answers or stops reading; returns (status, bytes sent, response)."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Transfer-Encoding: chunked"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    filler = b"x" * MIB
    sent = 0
    sock.settimeout(3.0)
    try:
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break  # the answer came: stop, as a real client would
            piece = prefix if sent == 0 and prefix else filler
            frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
            try:
                sock.sendall(frame)
            except (TimeoutError, OSError):
                break  # the master stopped reading
            sent += len(piece)
        sock.settimeout(10.0)
        answer = b""
        try:
            while not _complete(answer):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except (TimeoutError, OSError):
            pass
    finally:
        sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, sent, answer


MULTIPART = (
    b'--hm\r\nContent-Disposition: form-data; name="bundle"; filename="b.zip"\r\n'
    b"Content-Type: application/zip\r\n\r\n"
)


def test_a_chunked_gigabyte_to_login_is_a_413_and_never_held(master: Master) -> None:
    with Watch(master.process.pid, master.spool) as watch:
        status, sent, answer = push_chunked(
            master.port,
            "/api/auth/login",
            {"Content-Type": "application/json"},
            b'{"username": "' + b"a" * 1000,
        )
    assert status == 413, answer
    assert b"over 16384 bytes" in answer
    assert sent < 64 * MIB, f"the master read {sent} bytes of a 16 KiB-limited body"
    assert watch.growth < 50 * MIB, f"RSS grew by {watch.growth / MIB:.0f} MiB"
    assert watch.peak_spool == 0


def test_a_chunked_gigabyte_upload_without_a_token_is_refused_before_reading(
    master: Master,
) -> None:
    with Watch(master.process.pid, master.spool) as watch:
        status, sent, answer = push_chunked(
            master.port,
            "/api/tasks",
            {"Content-Type": "multipart/form-data; boundary=hm"},
            MULTIPART,
        )
        junk, _, _ = push_chunked(
            master.port,
            "/api/tasks",
            {"Content-Type": "multipart/form-data; boundary=hm", "Authorization": "Bearer junk"},
            MULTIPART,
        )
    assert status == 401, answer
    assert junk == 401
    assert watch.peak_spool == 0, "an unauthenticated upload was spooled to disk"
    assert watch.growth < 50 * MIB, f"RSS grew by {watch.growth / MIB:.0f} MiB"
    assert sent < 64 * MIB


def test_a_chunked_gigabyte_upload_stops_at_the_limit(master: Master) -> None:
    token = master.token("alice")
    with Watch(master.process.pid, master.spool) as watch:
        status, sent, answer = push_chunked(
            master.port,
            "/api/tasks",
            {
                "Content-Type": "multipart/form-data; boundary=hm",
                "Authorization": f"Bearer {token}",
            },
            MULTIPART,
        )
    assert status == 413, answer
    assert sent < 64 * MIB, f"the master read {sent} bytes of a {UPLOAD_LIMIT}-byte limit"
    assert watch.peak_spool <= UPLOAD_LIMIT + 64 * 1024
    assert watch.growth < 50 * MIB, f"RSS grew by {watch.growth / MIB:.0f} MiB"
    # Nothing is left behind, and the master still serves.
    assert wait_until(lambda: watch.spooled() == 0, 5)
    assert httpx2.get(f"{master.base}/healthz").status_code == 200


def test_junk_tokens_do_not_cut_a_signed_in_users_live_stream(master: Master) -> None:
    token = master.token("alice")
    auth = {"authorization": f"Bearer {token}"}
    reply = httpx2.post(
        f"{master.base}/api/tasks", data={"function": "hivemind.examples:add"}, headers=auth
    )
    task_id = reply.json()["task_id"]
    conn, leased = lease_one(master.console)
    received: list[str] = []
    opened = threading.Event()

    def follow() -> None:
        with httpx2.stream(
            "GET", f"{master.base}/api/tasks/{task_id}/events", headers=auth, timeout=60
        ) as stream:
            opened.set()
            for line in stream.iter_lines():
                received.append(line)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert opened.wait(10)
    assert conn.append_log(task_id, leased.attempt, "before the flood\n")
    assert wait_until(lambda: any("before the flood" in line for line in received), 10)

    def junk(i: int) -> int:
        return httpx2.get(
            f"{master.base}/api/tasks", headers={"authorization": f"Bearer junk-{i}"}
        ).status_code

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(junk, range(1100)))
    flood_seconds = time.monotonic() - started
    assert set(statuses) == {401}, {s: statuses.count(s) for s in set(statuses)}
    assert conn.append_log(task_id, leased.attempt, "after the flood\n")
    ref = conn.ref(task_id, leased.attempt)
    assert conn.complete([pb.TaskResult(ref=ref, outcome=pb.SUCCEEDED, result_json="5")])
    reader.join(20)
    assert not reader.is_alive()
    assert any("after the flood" in line for line in received), received[-5:]
    assert any(line == "event: end" for line in received)
    assert "closed channel" not in master.log()
    print(f"1,100 junk-token requests in {flood_seconds:.1f} s")
