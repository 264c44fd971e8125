"""`hivemind service install --ha`: the units and configs of one host of the HA layout.

Two hosts are simulated by two homes and two roots on this machine: a primary and a
replica of it, each with its Sentinel, on free loopback ports. The units are read by
``systemd-analyze verify`` (no systemd manager runs here), then the data nodes and the
Sentinels are started from the units' own ExecStart lines, as systemd would run them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from hivemind.paths import layout
from recovery.systemd import UNIT_DIR
from tests.helpers import free_port, wait_until
from tests.test_join_systemd import _verify

HOST = "127.0.0.1"
HA_UNITS = ("hivemind-redis.service", "hivemind-sentinel.service")


@dataclass(frozen=True)
class Host:
    """One simulated host: its HIVEMIND_HOME, its install root and its ports."""

    home: Path
    root: Path
    redis_port: int
    sentinel_port: int

    @property
    def units(self) -> Path:
        return self.root / UNIT_DIR

    @property
    def redis_conf(self) -> Path:
        return self.home / "ha" / "redis" / "redis.conf"

    @property
    def sentinel_conf(self) -> Path:
        return self.home / "ha" / "sentinel" / "sentinel.conf"

    @property
    def password(self) -> str:
        return layout(self.home).redis_password_file.read_text().strip()

    def exec_start(self, unit: str) -> list[str]:
        lines = (self.units / unit).read_text().splitlines()
        (line,) = [x for x in lines if x.startswith("ExecStart=")]
        return shlex.split(line.removeprefix("ExecStart="))


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # None of the developer's HIVEMIND_* settings may leak into the command.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
    return subprocess.run(
        [sys.executable, "-m", "hivemind", "service", "install", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "HIVEMIND_HOME": str(home), "COLUMNS": "200"},
    )


def _install(host: Host, primary: Host, role: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return _cli(
        host.home,
        *("--root", str(host.root), "--user", "root", "--ha", "--ha-role", role),
        *("--ha-primary", f"{HOST}:{primary.redis_port}"),
        *("--redis-port", str(host.redis_port), "--sentinel-port", str(host.sentinel_port)),
        *("--sentinel-bind", HOST),
        *extra,
    )


def _host(tmp_path: Path, name: str) -> Host:
    home = layout(tmp_path / name / "home").ensure().root
    return Host(home, tmp_path / name / "root", free_port(), free_port())


@pytest.fixture
def hosts(tmp_path: Path) -> tuple[Host, Host]:
    """A primary and a replica, installed as an operator would: the primary first, then
    its password file copied to the replica's home before installing there."""
    primary, replica = _host(tmp_path, "a"), _host(tmp_path, "b")
    done = _install(primary, primary, "primary")
    assert done.returncode == 0, done.stderr
    secret = layout(replica.home).redis_password_file
    secret.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(layout(primary.home).redis_password_file, secret)
    done = _install(replica, primary, "replica")
    assert done.returncode == 0, done.stderr
    assert "HIVEMIND_REDIS_URL=redis+sentinel://h1:" in done.stdout
    assert "HIVEMIND_NODEPOOL_ADDRESS=a:50051,b:50051" in done.stdout
    assert "systemctl enable --now hivemind-redis hivemind-sentinel" in done.stdout
    return primary, replica


def test_the_units_and_configs_of_a_primary_and_a_replica(hosts: tuple[Host, Host]) -> None:
    primary, replica = hosts
    for host in hosts:
        names = sorted(p.name for p in host.units.iterdir())
        assert set(HA_UNITS) <= set(names) and "hivemind-worker@.service" in names
        data = host.exec_start("hivemind-redis.service")
        assert Path(data[0]).name == "redis-server"
        folder = str(host.redis_conf.parent)
        assert data[1:] == [str(host.redis_conf), "--daemonize", "no", "--dir", folder]
        assert host.exec_start("hivemind-sentinel.service")[1:] == [
            str(host.sentinel_conf),
            "--sentinel",
            "--daemonize",
            "no",
        ]
        nodepool = (host.units / "hivemind-nodepool.service").read_text().splitlines()
        assert "After=network-online.target hivemind-redis.service" in nodepool
        assert not any("redis-server.service" in line for line in nodepool)
        for unit in (*HA_UNITS, "hivemind-nodepool.service"):
            verified = _verify(host.units, unit)
            assert verified.returncode == 0, verified.stderr
            assert "Unknown" not in verified.stderr, verified.stderr
        sentinel = host.sentinel_conf.read_text().splitlines()
        assert f"sentinel monitor hivemind {HOST} {primary.redis_port} 2" in sentinel
        assert f"bind {HOST}" in sentinel and f"port {host.sentinel_port}" in sentinel
        # Secrets inside: only the service user may read them.
        assert host.redis_conf.stat().st_mode & 0o077 == 0
        assert host.sentinel_conf.stat().st_mode & 0o077 == 0
    assert primary.password == replica.password
    assert f'requirepass "{primary.password}"' in replica.redis_conf.read_text()
    assert "replicaof" not in primary.redis_conf.read_text()
    replicaof = [x for x in replica.redis_conf.read_text().splitlines() if "replicaof" in x]
    assert replicaof == [f"replicaof {HOST} {primary.redis_port}"]


def test_a_second_install_keeps_the_configs_redis_rewrote(hosts: tuple[Host, Host]) -> None:
    primary, replica = hosts
    confs = (replica.redis_conf, replica.sentinel_conf)
    # What Redis and Sentinel do as the layout changes (CONFIG REWRITE after a failover).
    for conf in confs:
        conf.write_text(conf.read_text() + "# rewritten by Redis\n")
    before = [(c.read_text(), c.stat().st_mtime_ns) for c in confs]
    again = _install(replica, primary, "replica")
    assert again.returncode == 0, again.stderr
    assert f"kept {replica.redis_conf}" in again.stdout
    assert f"kept {replica.sentinel_conf}" in again.stdout
    assert again.stdout.count("unchanged ") == 5
    assert [(c.read_text(), c.stat().st_mtime_ns) for c in confs] == before


def test_a_dry_run_prints_everything_and_writes_nothing(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "root"
    dry = _cli(home, "--root", str(root), "--ha", "--ha-primary", "10.0.0.1:6379", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    for shown in ("hivemind-redis.service", "replicaof 10.0.0.1 6379", "sentinel monitor"):
        assert shown in dry.stdout
    assert 'requirepass "********"' in dry.stdout and "/etc/hivemind/hivemind.env" in dry.stdout
    assert not home.exists() and not root.exists()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--ha"], "--ha needs --ha-primary"),
        (["--ha", "--ha-primary", "db1"], "--ha-primary takes HOST:PORT"),
        (["--ha", "--ha-primary", "db1:6379", "--ha-role", "leader"], "primary or replica"),
        (["--ha", "--ha-primary", "db1:6379", "--sentinel-port", "0"], "1-65535"),
        (["--ha-primary", "db1:6379"], "--ha-primary needs --ha"),
        (["--ha", "--ha-primary", f"{HOST}:6379", "--ha-role", "replica"], "--ha-role primary"),
    ],
)
def test_bad_ha_options_are_one_line_and_exit_2(tmp_path: Path, args: list[str], said: str) -> None:
    done = _cli(tmp_path / "home", "--root", str(tmp_path / "root"), *args)
    assert done.returncode == 2, done.stdout
    assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "root").exists()


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Real processes of the units' ExecStart lines; all killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait(timeout=10)


def _start(host: Host, unit: str, procs: list[subprocess.Popen[bytes]], *extra: str) -> None:
    argv = [*host.exec_start(unit), *extra]
    with (host.home / f"{unit}.log").open("wb") as log:
        procs.append(subprocess.Popen(argv, cwd=host.home, stdout=log, stderr=subprocess.STDOUT))


def _client(port: int, password: str) -> redis.Redis:
    return redis.Redis(HOST, port, password=password, socket_timeout=2, decode_responses=True)


def test_the_written_configs_run_as_a_replicated_set_under_sentinel(
    hosts: tuple[Host, Host], started: list[subprocess.Popen[bytes]]
) -> None:
    primary, replica = hosts
    password = primary.password
    # Loopback only for the test (the unit listens on every interface, with a password).
    for host in hosts:
        _start(host, "hivemind-redis.service", started, "--bind", HOST)

    def replica_synced() -> bool:
        try:
            info = _client(replica.redis_port, password).info("replication")
        except redis.RedisError:
            return False
        return info.get("master_link_status") == "up"

    assert wait_until(replica_synced, timeout=15), replica.home / "hivemind-redis.service.log"
    # The Sentinels start once the replica is in sync, so their first look sees it.
    for host in hosts:
        _start(host, "hivemind-sentinel.service", started)

    def sentinels_agree() -> bool:
        try:
            for host in hosts:
                sentinel = _client(host.sentinel_port, password)
                where = sentinel.execute_command("SENTINEL", "get-master-addr-by-name", "hivemind")
                master = sentinel.sentinel_master("hivemind")
                if where != [HOST, str(primary.redis_port)] or master.get("is_sdown"):
                    return False
                # Each sees the replica and the other Sentinel (the shared password works).
                if master["num-slaves"] < 1 or master["num-other-sentinels"] < 1:
                    return False
        except redis.RedisError:
            return False
        return True

    assert wait_until(sentinels_agree, timeout=15), [
        (h.home / "hivemind-sentinel.service.log").read_text() for h in hosts
    ]
    assert all(proc.poll() is None for proc in started)
