"""A real node pool on loopback (real Redis, real users.db) for the node pool's tests, with
helpers that sign in users and register workers. The ``pool`` fixture is in conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from hivemind.auth import issue_worker_token
from hivemind.client import Client
from hivemind.config import Settings
from hivemind.nodepool.server import NodePoolServer
from hivemind.proto import hivemind_pb2 as pb
from hivemind.worker.connection import WorkerConnection


@dataclass
class Pool:
    server: NodePoolServer
    address: str
    settings: Settings

    def user(self, name: str, admin: bool = False) -> Client:
        store = self.server.state.users
        try:
            store.get(name)
        except Exception:
            store.create_user(name, f"{name}-password", "admin" if admin else "user", 100)
        c = Client(self.address)
        c.login(name, f"{name}-password")
        return c

    def worker(self, node_id: str, cpu: int = 2) -> WorkerConnection:
        conn = WorkerConnection(self.address, node_id, issue_worker_token(self.settings, node_id))
        conn.register(pb.WorkerResources(cpu=cpu, memory_mb=4096, capacity=4), [])
        return conn


@pytest.fixture
def pool(settings: Settings) -> Iterator[Pool]:
    s = settings.replace(grpc_host="127.0.0.1")
    server = NodePoolServer(s)
    server.start()
    try:
        yield Pool(server, s.client_address, s)
    finally:
        server.stop(grace=1)


@contextmanager
def node_pool_serving(settings: Settings, alice: bool = False) -> Iterator[NodePoolServer]:
    """A node pool in this process for ``settings`` (with user alice, password
    alice-password-1, if asked), stopped afterwards."""
    server = NodePoolServer(settings)
    server.start()
    if alice:
        server.state.users.create_user("alice", "alice-password-1", "user", 10)
    try:
        yield server
    finally:
        server.stop(grace=1)
