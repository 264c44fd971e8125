"""Helpers shared by the tests (the fixtures built on them are in ``conftest.py``)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The developer's own Redis; no test may touch it.
RESERVED_PORTS = frozenset({6379})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)
    return True


@dataclass(frozen=True)
class RedisServer:
    """A redis-server the test session started (and owns)."""

    url: str
    port: int
    pid: int
    binary: Path
    data_dir: Path
    pidfile: Path
    logfile: Path

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)
