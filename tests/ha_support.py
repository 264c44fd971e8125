"""A real Redis replication set watched by real Sentinels, for the high-availability tests.

:func:`start_redis_set` starts one primary, ``replicas`` replicas (``--replicaof``) and
``sentinels`` Sentinels (``redis-server sentinel.conf --sentinel``) on free loopback ports,
each process in its own folder under ``root`` (its config, data and log), and returns once
every replica has synced and every Sentinel sees the whole set. Nothing touches port 6379.
The processes are this test's own children: :meth:`RedisSet.stop` (or leaving the ``with``
block) ends them all, whatever state a test left them in::

    with start_redis_set(tmp_path) as cluster:
        settings = settings.replace(redis_url=cluster.sentinel_url)
        cluster.kill(cluster.replica_ports[0])

Sentinels use ``down-after-milliseconds 1000`` and ``failover-timeout 5000``, so a killed
primary is replaced within a few seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import redis

from hivemind.redis_server import find_redis_server
from tests.helpers import free_port, wait_until

HOST = "127.0.0.1"
MASTER_NAME = "hivemind"
#: Seconds start-up may take: a full sync plus Sentinel's hello round (every 2 s).
START_TIMEOUT = 20.0


class RedisSetError(RuntimeError):
    """A process of the set did not start or the set did not come together in time."""


@dataclass
class RedisSet:
    """A running primary, its replicas and its Sentinels (ports as they were at start:
    after a failover :meth:`primary` says which data node is the primary now)."""

    root: Path
    master_name: str
    password: str | None
    primary_port: int
    replica_ports: list[int]
    sentinel_ports: list[int]
    _argv: dict[int, list[str]] = field(default_factory=dict, repr=False)
    _procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    # -- addresses ----------------------------------------------------------------------------
    @property
    def data_ports(self) -> list[int]:
        return [self.primary_port, *self.replica_ports]

    @property
    def sentinels(self) -> str:
        """``127.0.0.1:P1,127.0.0.1:P2,…``: a REDIS_SENTINELS value."""
        return ",".join(f"{HOST}:{port}" for port in self.sentinel_ports)

    def sentinel_url(self, master_name: str | None = None, db: int = 0) -> str:
        """A ``redis+sentinel://`` REDIS_URL for the set (with its password)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{auth}{self.sentinels}/{master_name or self.master_name}/{db}"

    def client(self, port: int, timeout: float = 2.0) -> redis.Redis:
        """A client of one process of the set (data node or Sentinel), decoding replies."""
        return redis.Redis(
            host=HOST,
            port=port,
            password=self.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
        )

    def primary(self) -> int:
        """The primary's port as the first answering Sentinel names it."""
        named = self.named_primaries()
        if not named:
            raise RedisSetError("no Sentinel names a primary")
        return named[0]

    def named_primaries(self) -> list[int]:
        """The primary's port as each answering Sentinel names it, in the Sentinels' order.
        Right after a failover they may differ: the others learn of it within a second or
        two, from the Sentinel that ran it."""
        named = []
        for port in self.sentinel_ports:
            if not self.running(port):
                continue
            with self.client(port) as client:
                try:
                    reply = client.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
                    )
                except (redis.RedisError, OSError):
                    continue
            if reply:
                named.append(int(reply[1]))
        return named

    # -- processes ----------------------------------------------------------------------------
    def running(self, port: int) -> bool:
        proc = self._procs.get(port)
        return proc is not None and proc.poll() is None

    def pid(self, port: int) -> int:
        return self._procs[port].pid

    def kill(self, port: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process on ``port``; for SIGKILL/SIGTERM, wait until it ends."""
        proc = self._procs[port]
        if proc.poll() is not None:
            return
        if sig in (signal.SIGKILL, signal.SIGTERM):
            os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        os.kill(proc.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(timeout=10)

    def pause(self, port: int) -> None:
        """SIGSTOP: the process keeps its port but answers nothing (a hung host)."""
        self.kill(port, signal.SIGSTOP)

    def resume(self, port: int) -> None:
        self.kill(port, signal.SIGCONT)

    def restart(self, port: int) -> None:
        """Start a killed process again with its original command line: a former primary
        comes back as a primary, until Sentinel demotes it."""
        if self.running(port):
            raise RedisSetError(f"port {port} still runs")
        self._spawn(port, self._argv[port])
        _wait_answers(self, port)

    def stop(self) -> None:
        """End every process of the set (SIGTERM, then SIGKILL after 5 s)."""
        for proc in self._procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in self._procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def log(self, port: int) -> str:
        """The process's log (for an assertion message)."""
        path = self.root / str(port) / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> RedisSet:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _spawn(self, port: int, argv: list[str]) -> None:
        self._argv[port] = argv
        self._procs[port] = subprocess.Popen(
            argv,
            cwd=self.root / str(port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def start_redis_set(
    root: Path,
    replicas: int = 2,
    sentinels: int = 3,
    password: str | None = None,
    *,
    master_name: str = MASTER_NAME,
    quorum: int | None = None,
) -> RedisSet:
    """Start the set under ``root`` and return it ready (see the module's docstring).

    ``quorum`` defaults to a majority of ``sentinels``. Raises :class:`RedisSetError` (with
    the processes already stopped) when it does not come together within START_TIMEOUT.
    """
    binary = find_redis_server()
    if binary is None:
        raise RedisSetError("no redis-server binary: install Debian's redis-server")
    ports = _distinct_ports(1 + replicas + sentinels)
    cluster = RedisSet(
        root=root,
        master_name=master_name,
        password=password,
        primary_port=ports[0],
        replica_ports=ports[1 : 1 + replicas],
        sentinel_ports=ports[1 + replicas :],
    )
    try:
        for port in cluster.data_ports:
            follows = None if port == cluster.primary_port else cluster.primary_port
            cluster._spawn(port, _data_node_argv(binary, root, port, password, follows))
        for port in cluster.data_ports:
            _wait_answers(cluster, port)
        _wait(
            lambda: all(_link_up(cluster, port) for port in cluster.replica_ports),
            "replicas to sync",
            cluster,
        )
        conf_quorum = quorum or sentinels // 2 + 1
        for port in cluster.sentinel_ports:
            conf = _sentinel_conf(root, port, cluster, conf_quorum)
            cluster._spawn(port, [str(binary), str(conf), "--sentinel"])
        for port in cluster.sentinel_ports:
            _wait_answers(cluster, port)
        _wait(lambda: _sentinels_see_all(cluster), "Sentinels to find each other", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# -- start-up details ---------------------------------------------------------------------------


def _distinct_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _private_file(path: Path, lines: Iterable[str]) -> Path:
    """A config file only we can read: it may hold the password."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _data_node_argv(
    binary: Path, root: Path, port: int, password: str | None, follows: int | None
) -> list[str]:
    folder = root / str(port)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"port {port}", f"bind {HOST}", "daemonize no", f"dir {folder}"]
    lines += [f"logfile {folder / 'redis.log'}", 'save ""', "appendonly no"]
    # A diskless sync with no delay: replicas are in sync a moment after they start.
    lines += ["repl-diskless-sync yes", "repl-diskless-sync-delay 0"]
    if password:
        lines += [f"requirepass {_quoted(password)}", f"masterauth {_quoted(password)}"]
    if follows is not None:
        lines.append(f"replicaof {HOST} {follows}")
    return [str(binary), str(_private_file(folder / "redis.conf", lines))]


def _sentinel_conf(root: Path, port: int, cluster: RedisSet, quorum: int) -> Path:
    folder = root / str(port)
    folder.mkdir(parents=True, exist_ok=True)
    name = cluster.master_name
    lines = [f"port {port}", f"bind {HOST}", "daemonize no", f"dir {folder}"]
    lines += [f"logfile {folder / 'redis.log'}", "sentinel resolve-hostnames no"]
    lines += [
        f"sentinel monitor {name} {HOST} {cluster.primary_port} {quorum}",
        f"sentinel down-after-milliseconds {name} 1000",
        f"sentinel failover-timeout {name} 5000",
        f"sentinel parallel-syncs {name} 1",
    ]
    if cluster.password:
        # The same password guards the Sentinels (HiveMind sends one to both) and the data
        # nodes; a Sentinel with requirepass also uses it towards its peers.
        lines += [
            f"requirepass {_quoted(cluster.password)}",
            f"sentinel auth-pass {name} {_quoted(cluster.password)}",
        ]
    # Sentinel rewrites its config file as it learns the set: it must be writable.
    return _private_file(folder / "sentinel.conf", lines)


def _wait(predicate: Callable[[], bool], what: str, cluster: RedisSet) -> None:
    if not wait_until(predicate, START_TIMEOUT, interval=0.1):
        raise RedisSetError(f"timed out waiting for {what} (logs under {cluster.root})")


def _answers(cluster: RedisSet, port: int) -> bool:
    if not cluster.running(port):
        code = cluster._procs[port].returncode
        raise RedisSetError(f"redis on port {port} exited {code}: {cluster.log(port)[-2000:]}")
    try:
        with cluster.client(port, timeout=0.5) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def _wait_answers(cluster: RedisSet, port: int) -> None:
    _wait(lambda: _answers(cluster, port), f"port {port} to answer PING", cluster)


def _link_up(cluster: RedisSet, port: int) -> bool:
    with cluster.client(port) as client:
        info = client.info("replication")
    return bool(info.get("master_link_status") == "up")


def _sentinels_see_all(cluster: RedisSet) -> bool:
    """Every Sentinel lists every replica and every other Sentinel."""
    for port in cluster.sentinel_ports:
        with cluster.client(port) as client:
            peers = client.execute_command("SENTINEL", "SENTINELS", cluster.master_name)
            known = client.execute_command("SENTINEL", "REPLICAS", cluster.master_name)
        if len(peers) < len(cluster.sentinel_ports) - 1 or len(known) < len(cluster.replica_ports):
            return False
    return True
