"""A real node pool (loopback gRPC, real Redis and users.db) with the master's app in front,
for the master's tests. Pages are fetched through Starlette's TestClient (real ASGI, real
routing, real cookies) or, for the browser tests, through a real uvicorn server."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from hivemind.config import Settings
from hivemind.master import create_app
from hivemind.nodepool.server import NodePoolServer
from tests.helpers import free_port, wait_until

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def password_of(name: str) -> str:
    return f"{name}-password"


@dataclass
class Console:
    pool: NodePoolServer
    settings: Settings
    app: FastAPI

    def add_user(self, name: str, admin: bool = False, credits: int = 100) -> str:
        store = self.pool.state.users
        try:
            store.get(name)
        except Exception:
            store.create_user(name, password_of(name), "admin" if admin else "user", credits)
        return name

    def http(self) -> TestClient:
        return TestClient(self.app, raise_server_exceptions=False, follow_redirects=False)

    def api(self, name: str, admin: bool = False) -> TestClient:
        """A client carrying ``name``'s bearer token, as a script would."""
        self.add_user(name, admin)
        client = self.http()
        reply = client.post(
            "/api/auth/login", json={"username": name, "password": password_of(name)}
        )
        assert reply.status_code == 200, reply.text
        client.headers["authorization"] = f"Bearer {reply.json()['token']}"
        return client

    def browser(self, name: str, admin: bool = False) -> TestClient:
        """A client signed in through the sign-in form, holding the session cookie."""
        self.add_user(name, admin)
        client = self.http()
        sign_in(client, name, password_of(name))
        return client


def csrf_of(html: str) -> str:
    found = CSRF_INPUT.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def sign_in(client: TestClient, name: str, password: str) -> object:
    page = client.get("/login")
    return client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": csrf_of(page.text)},
    )


@contextmanager
def console_for(settings: Settings) -> Iterator[Console]:
    s = settings.replace(grpc_host="127.0.0.1")
    server = NodePoolServer(s)
    server.start()
    try:
        yield Console(server, s, create_app(s))
    finally:
        server.stop(grace=1)


@contextmanager
def serving(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """The app on a real uvicorn server in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, timeout=10)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
