"""Fixtures shared by every test: a real Redis, a fresh HIVEMIND_HOME and settings.

``redis_server`` (session) is a redis-server of our own on a free port; ``redis_url``
empties its db 0 before each test; ``hivemind_home`` is a fresh home with its layout;
``settings`` points at both with free ports, and isolates the test from the developer's
``HIVEMIND_*`` variables and ``hivemind.toml`` files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hivemind.config import Settings, load_settings
from hivemind.paths import layout
from hivemind.redis_server import start_redis
from hivemind.supervisor import stop_pid
from tests.helpers import REPO_ROOT, RedisServer, free_port
from tests.nodepool_support import pool  # noqa: F401  (the node pool fixture, for every module)
from tests.sshd import SSHD, SSHDUnavailable, running_sshd


@pytest.fixture(scope="session", autouse=True)
def _children_import_this_checkout() -> Iterator[None]:
    """Child processes (`python -m hivemind …`) import the package from this checkout."""
    with pytest.MonkeyPatch.context() as mp:
        paths = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
        yield


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    root = tmp_path_factory.mktemp("redis-server")
    port = free_port()
    started = start_redis(
        f"redis://127.0.0.1:{port}/0",
        data_dir=root / "data",
        pidfile=root / "redis.pid",
        logfile=root / "redis.log",
    )
    try:
        yield RedisServer(
            url=started.url,
            port=started.port,
            pid=started.pid,
            binary=started.binary,
            data_dir=root / "data",
            pidfile=started.pidfile,
            logfile=started.logfile,
        )
    finally:
        stop_pid(started.pidfile)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session Redis's URL, with db 0 emptied (it is our own server)."""
    client = redis_server.client()
    try:
        client.flushdb()
    finally:
        client.close()
    yield redis_server.url


@pytest.fixture
def free_port_factory() -> Callable[[], int]:
    """Call it for free ports; the ports it hands out within one test are distinct."""
    given: set[int] = set()

    def next_port() -> int:
        port = free_port()
        while port in given:
            port = free_port()
        given.add(port)
        return port

    return next_port


@pytest.fixture
def hivemind_home(tmp_path: Path) -> Path:
    home = layout(tmp_path / "home").ensure()
    return home.root


@pytest.fixture
def settings(
    hivemind_home: Path,
    redis_url: str,
    free_port_factory: Callable[[], int],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Settings:
    # load_settings also looks at $HIVEMIND_CONFIG, ./hivemind.toml and
    # $HIVEMIND_HOME/hivemind.toml; none of the developer's may leak in.
    for var in list(os.environ):
        if var.startswith("HIVEMIND_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("HIVEMIND_HOME", str(hivemind_home))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return load_settings(
        environ={},
        home=hivemind_home,
        redis_url=redis_url,
        grpc_port=free_port_factory(),
        master_port=free_port_factory(),
        nodepool_metrics_port=free_port_factory(),
        worker_metrics_port=free_port_factory(),
        doctor_metrics_port=free_port_factory(),
        heartbeat_interval=0.5,
    )


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHD]:
    """A real sshd on 127.0.0.1; the test fails (never skips) when it cannot start."""
    try:
        with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
            yield server
    except SSHDUnavailable as exc:
        pytest.fail(f"the sshd fixture could not start sshd: {exc}", pytrace=False)
