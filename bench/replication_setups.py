"""The two setups of bench/replication.py: a lone Redis (A), and a primary with one replica
and a Sentinel (B), each with the task store a node pool would open on it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.processes import Child, base_environment, free_ports, redis_binary
from hivemind import ha, redis_client, tuning
from hivemind.config import Settings, load_settings
from hivemind.taskstore import TaskStore

HOST = ha.LOCALHOST
#: Seconds a server gets to answer, a replica to sync, the Sentinel to name the primary.
START_TIMEOUT = 20.0


class SetupFailed(RuntimeError):
    """A server did not start, or a setup is not what the bench needs."""


# -- the servers -------------------------------------------------------------------------------


@contextmanager
def _client(port: int, password: str, timeout: float = 2.0) -> Iterator[redis.Redis]:
    """A short-lived client of one server of the run (data node or Sentinel)."""
    client = redis.Redis(
        host=HOST,
        port=port,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
    )
    try:
        yield client
    finally:
        client.close()


class RedisProcesses:
    """The data nodes and Sentinels of the run; :meth:`stop` ends them all, Sentinels first
    (so that none notices a stopping primary)."""

    def __init__(self, workdir: Path, password: str, appendonly: bool) -> None:
        self.workdir = workdir
        self.password = password
        self.appendonly = appendonly
        self.children: list[Child] = []

    def data_node(
        self, name: str, port: int, primary_port: int | None = None, alone: bool = False
    ) -> None:
        """A data node with ``up --ha``'s config: a primary (``primary_port`` None) or a
        replica of one; ``alone``: a primary that will never have a replica (writes without
        one). Returns once it answers, and for a replica once it has synced."""
        folder = self.workdir / name
        folder.mkdir()
        primary = None if primary_port is None else (HOST, primary_port)
        conf = folder / "redis.conf"
        ha.write_once(conf, ha.data_node_conf(port, self.password, primary))
        argv = [redis_binary(), str(conf), "--bind", HOST, "--daemonize", "no",
                "--dir", str(folder), "--logfile", str(folder / "redis.log"),
                "--appendonly", "yes" if self.appendonly else "no",
                "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]  # fmt: skip
        if alone:
            argv += ["--min-replicas-to-write", "0"]
        child = self._start(name, argv, folder)

        def answers() -> bool:
            with _client(port, self.password, 0.5) as client:
                if primary_port is None:
                    return bool(client.ping())
                if client.info("replication").get("master_link_status") != "up":
                    return False
            # The primary takes writes (min-replicas-to-write 1) only once it counts the
            # replica as good: after its first acknowledgement, up to a second after the sync.
            with _client(primary_port, self.password, 0.5) as client:
                return int(client.info("replication").get("min_slaves_good_slaves", 0)) >= 1

        _wait_until(answers, f"{name} on port {port}", child)

    def sentinel(self, name: str, port: int, primary_port: int) -> None:
        """A Sentinel watching ``primary_port``; returns once it names that primary."""
        folder = self.workdir / name
        folder.mkdir()
        conf = folder / "sentinel.conf"
        text = ha.sentinel_conf(
            port, self.password, (HOST, primary_port), tuning.SENTINEL_DOWN_AFTER_MS_LOCAL, HOST
        )
        ha.write_once(conf, text)
        argv = [redis_binary(), str(conf), "--sentinel", "--daemonize", "no",
                "--dir", str(folder), "--logfile", str(folder / "sentinel.log")]  # fmt: skip
        child = self._start(name, argv, folder)

        def names_primary() -> bool:
            with _client(port, self.password, 0.5) as client:
                reply = client.execute_command(
                    "SENTINEL", "get-master-addr-by-name", ha.MASTER_NAME
                )
            return bool(reply) and int(reply[1]) == primary_port

        _wait_until(names_primary, f"{name} on port {port}", child)

    def _start(self, name: str, argv: list[str], folder: Path) -> Child:
        # base_environment() carries the run's mark: their CPU is the run's, not "other".
        child = Child(name, argv, base_environment(), folder / "console.log")
        self.children.append(child)
        return child

    def stop(self) -> None:
        sentinels_first = sorted(self.children, key=lambda c: "sentinel" not in c.name)
        for child in sentinels_first:
            child.stop(timeout=10.0)


def _wait_until(check: Callable[[], bool], what: str, child: Child) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if not child.alive():
            raise SetupFailed(f"{what} exited; see its log in {child.log.parent}")
        if time.monotonic() > deadline:
            raise SetupFailed(f"timed out waiting for {what}; see its log in {child.log.parent}")
        time.sleep(0.05)


# -- the two setups ----------------------------------------------------------------------------


@dataclass
class Setup:
    """One way of reaching Redis: its task store, and a client of its primary for the
    bench's own bookkeeping (flushes, command counts)."""

    name: str
    description: str
    settings: Settings
    store: TaskStore
    primary: redis.Redis
    replicas: int

    def flush(self) -> None:
        """FLUSHDB, and in B wait until the replica has applied it too, so that the flush's
        replication does not spill into the next timed phase."""
        with self.primary.pipeline(transaction=False) as pipe:  # one connection for both
            pipe.flushdb()
            if self.replicas:
                pipe.execute_command("WAIT", self.replicas, 10_000)
            replies = pipe.execute()
        if self.replicas and int(replies[-1]) < self.replicas:
            raise SetupFailed(f"{self.name}: the replica did not apply a FLUSHDB in 10 s")

    def wait_commands(self) -> int:
        """WAIT commands the primary has served so far."""
        stats = self.primary.info("commandstats").get("cmdstat_wait") or {}
        return int(stats.get("calls", 0))

    def close(self) -> None:
        self.store.close()
        self.store.redis.close()
        self.primary.close()


def settings_for(home: Path, redis_url: str, password: str) -> Settings:
    """HiveMind's settings for ``redis_url``, from nothing of this machine's: an empty config
    file, no environment."""
    home.mkdir()
    config = home / "hivemind.toml"
    config.write_text("# bench.replication: every setting is its default but REDIS_URL.\n")
    return load_settings(
        config, environ={}, home=home, redis_url=redis_url, redis_password=password
    )


def open_store(settings: Settings) -> TaskStore:
    """The task store as ``NodePoolState.open`` (hivemind/nodepool/core.py) builds it, without
    its metrics hook."""
    client = redis_client.connect_nodepool(settings)
    return TaskStore(client, None, redis_client.replica_wait(settings))


def start_setups(processes: RedisProcesses, log: Callable[[str], None]) -> tuple[Setup, Setup]:
    lone_port, primary_port, replica_port, sentinel_port = free_ports(4)
    password = processes.password
    processes.data_node("redis-lone", lone_port, alone=True)
    processes.data_node("redis-primary", primary_port)
    processes.data_node("redis-replica", replica_port, primary_port)
    processes.sentinel("sentinel", sentinel_port, primary_port)
    plain_url = f"redis://{HOST}:{lone_port}/0"
    sentinel_url = f"redis+sentinel://{HOST}:{sentinel_port}/{ha.MASTER_NAME}/0"
    plain = settings_for(processes.workdir / "home-A", plain_url, password)
    through_sentinel = settings_for(processes.workdir / "home-B", sentinel_url, password)
    lone = Setup(
        "A",
        f"lone redis-server :{lone_port}, REDIS_URL {plain_url} (no WAIT)",
        plain,
        open_store(plain),
        redis.Redis(host=HOST, port=lone_port, password=password, decode_responses=True),
        replicas=0,
    )
    replicated = Setup(
        "B",
        f"primary :{primary_port} + replica :{replica_port} + Sentinel :{sentinel_port}, "
        f"REDIS_URL {sentinel_url} (WAIT 1 {through_sentinel.redis_wait_ms} ms)",
        through_sentinel,
        open_store(through_sentinel),
        redis.Redis(host=HOST, port=primary_port, password=password, decode_responses=True),
        replicas=1,
    )
    # What the bench is about: A must not wait, B must wait for one replica, and the WAIT
    # must work from B's own connection (the Sentinel hands out this primary).
    expected = {"A": None, "B": (1, through_sentinel.redis_wait_ms)}
    for setup in (lone, replicated):
        durable, wanted = redis_client.replica_wait(setup.settings), expected[setup.name]
        if durable != wanted:
            raise SetupFailed(f"{setup.name}: replica_wait is {durable}, not {wanted}")
        setup.flush()
    with replicated.store.redis.pipeline(transaction=False) as pipe:
        pipe.set("bench:probe", "1")
        pipe.execute_command("WAIT", 1, 5000)
        acked = pipe.execute()[-1]
    if int(acked) != 1:
        raise SetupFailed("B: a write through the Sentinel URL was not acknowledged by the replica")
    log(f"  A: {lone.description}")
    log(f"  B: {replicated.description}")
    return lone, replicated
