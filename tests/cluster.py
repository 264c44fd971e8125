"""A real local cluster for end-to-end tests: `hivemind up` in a temp home, driven by the CLI."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from hivemind.client import Client
from hivemind.config import Settings, effective_redis_url
from hivemind.credentials import load_token
from hivemind.tls import ChannelSecurity, client_security
from tests.helpers import REPO_ROOT, RedisServer, free_port

TERMINAL = ("SUCCEEDED", "FAILED", "TIMEOUT", "CANCELLED")


@dataclass
class Cluster:
    home: Path
    env: dict[str, str]
    address: str
    redis_url: str

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "hivemind", *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"hivemind {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def client(self) -> Client:
        old = os.environ.get("XDG_CONFIG_HOME")
        os.environ["XDG_CONFIG_HOME"] = self.env["XDG_CONFIG_HOME"]
        try:
            return Client(self.address, load_token(self.address), security=self.security())
        finally:
            if old is None:
                del os.environ["XDG_CONFIG_HOME"]
            else:
                os.environ["XDG_CONFIG_HOME"] = old

    def security(self) -> ChannelSecurity | None:
        """What this cluster's own clients trust (None: it serves plaintext)."""
        settings = Settings(
            home=self.home,
            grpc_host=self.env["HIVEMIND_GRPC_HOST"],
            tls=self.env.get("HIVEMIND_TLS", "auto"),
        )
        return client_security(settings)

    def pid(self, service: str) -> int:
        data = json.loads((self.home / "run" / f"{service}.pid").read_text())
        return int(data["pid"])

    def redis(self) -> redis.Redis:
        """A client with the password the cluster's own processes send (none for an
        outside Redis without one)."""
        return redis.Redis.from_url(self.effective_redis_url(), decode_responses=True)

    def effective_redis_url(self) -> str:
        return effective_redis_url(Settings(home=self.home, redis_url=self.redis_url))

    def terminal_events(self, task_id: str) -> list[str]:
        """The terminal events in a task's history: exactly one for a task that ended."""
        history = self.redis().lrange(f"task:{task_id}:history", 0, -1)
        events = [json.loads(e)["event"] for e in history]
        return [e for e in events if e in ("succeeded", "failed", "timeout", "cancelled")]

    def wait_all(self, ids: list[str], timeout: float) -> list[Any]:
        """The tasks ``ids`` once all ended, or as they are at ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                tasks = client.wait(ids, timeout=10)
                if all(t.status in TERMINAL for t in tasks) or time.monotonic() > deadline:
                    return tasks

    def up(self, workers: int = 2) -> subprocess.CompletedProcess[str]:
        return self.cli("up", "--workers", str(workers), timeout=180)

    def down(self) -> None:
        self.cli("down", check=False, timeout=120)


def make_cluster(root: Path, redis_url: str, **settings: str) -> Cluster:
    home = root / "home"
    home.mkdir(parents=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
    env.update(
        HIVEMIND_HOME=str(home),
        HIVEMIND_REDIS_URL=redis_url,
        HIVEMIND_GRPC_PORT=str(port),
        HIVEMIND_GRPC_HOST="127.0.0.1",
        HIVEMIND_MASTER_PORT=str(free_port()),
        HIVEMIND_NODEPOOL_METRICS_PORT=str(free_port()),
        HIVEMIND_WORKER_METRICS_PORT=str(free_port()),
        HIVEMIND_DOCTOR_METRICS_PORT=str(free_port()),
        HIVEMIND_HEARTBEAT_INTERVAL="0.5",
        HIVEMIND_MAX_CONCURRENT_TASKS="2",
        HIVEMIND_SHUTDOWN_GRACE="5",
        XDG_CONFIG_HOME=str(root / "xdg"),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
    )
    env.update({f"HIVEMIND_{k.upper()}": v for k, v in settings.items()})
    return Cluster(home=home, env=env, address=f"localhost:{port}", redis_url=redis_url)


# Databases 1-4 are left to other tests; each disruptive test gets one of its own.
_databases = itertools.cycle(range(6, 16))


@contextmanager
def started_cluster(
    redis_server: RedisServer, root: Path, workers: int = 2, **settings: str
) -> Iterator[Cluster]:
    """A cluster of its own on a fresh Redis database, stopped afterwards."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{next(_databases)}"
    redis.Redis.from_url(url).flushdb()
    cluster = make_cluster(root, url, **settings)
    cluster.up(workers=workers)
    try:
        yield cluster
    finally:
        cluster.down()


class Host:
    """A new host: a home of its own and an environment without any HiveMind setting."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        self.home = root / "home"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
        self.env.update(
            HIVEMIND_HOME=str(self.home),
            XDG_CONFIG_HOME=str(root / "xdg"),
            PYTHONPATH=str(REPO_ROOT),
            HIVEMIND_HEARTBEAT_INTERVAL="0.5",
            HIVEMIND_WORKER_METRICS_PORT=str(free_port()),
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hivemind", *args],
            env=self.env,
            cwd=self.home.parent,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def written(self) -> list[Path]:
        """What a join would have written: nothing, for a refused one."""
        config = self.home / "worker" / "config"
        found = [self.home / "hivemind.toml"] if (self.home / "hivemind.toml").exists() else []
        return found + (sorted(config.iterdir()) if config.is_dir() else [])
