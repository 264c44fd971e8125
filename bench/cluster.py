"""Several node pools on one Redis, with real workers: the cluster bench/scale.py measures.

Every node pool is `python -m hivemind nodepool` with its own GRPC_PORT and metrics off; all
share one HIVEMIND_HOME (users.db, secret key) and one Redis database, as
tests/test_nodepool_peers.py runs them. Workers are `python -m hivemind worker`, each
pointed at one node pool.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.processes import Child, base_environment, free_ports

USER, PASSWORD = "bench", "bench-password-1"


def wait_for(check: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll ``check`` until it is true; SystemExit naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s")


@dataclass
class NodePool:
    child: Child
    address: str


class Cluster:
    """A home, node pools and workers against one Redis database (started elsewhere)."""

    def __init__(
        self,
        workdir: Path,
        redis_port: int,
        db: int,
        concurrency: int = 2,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.redis_url = f"redis://127.0.0.1:{redis_port}/{db}"
        self.env = base_environment()
        self.env.update(
            HIVEMIND_HOME=str(workdir / "home"),
            HIVEMIND_REDIS_URL=self.redis_url,
            HIVEMIND_GRPC_HOST="127.0.0.1",
            HIVEMIND_TLS="off",
            HIVEMIND_NODEPOOL_METRICS_PORT="0",
            HIVEMIND_WORKER_METRICS_PORT="0",
            HIVEMIND_MAX_CONCURRENT_TASKS=str(concurrency),
            **(extra_env or {}),
        )
        self.nodepools: list[NodePool] = []
        self.workers: list[Child] = []
        self._prepare_home()

    def settings(self, **overrides: Any) -> Any:
        from hivemind.config import load_settings

        hivemind_env = {k: v for k, v in self.env.items() if k.startswith("HIVEMIND_")}
        return load_settings(environ=hivemind_env, **overrides)

    def _prepare_home(self) -> None:
        """The bench user in users.db, and the secret key made before any node pool starts
        (two starting at once would each make one)."""
        from hivemind.auth import signer_for
        from hivemind.paths import layout
        from hivemind.userdb import UserStore

        settings = self.settings()
        store = UserStore(layout(settings.home).ensure().users_db)
        try:
            store.create_user(USER, PASSWORD, "admin", 10**9)
        finally:
            store.close()
        signer_for(settings)

    @property
    def addresses(self) -> list[str]:
        return [pool.address for pool in self.nodepools]

    def start_nodepools(self, count: int, timeout: float = 60.0) -> None:
        from hivemind.service_health import grpc_serving

        for port in free_ports(count):
            number = len(self.nodepools) + 1
            env = dict(self.env, HIVEMIND_GRPC_PORT=str(port))
            child = Child(
                f"nodepool-{number}",
                [sys.executable, "-m", "hivemind", "nodepool"],
                env,
                self.workdir / f"nodepool-{number}.out",
            )
            address = f"127.0.0.1:{port}"
            self.nodepools.append(NodePool(child, address))
            wait_for(lambda a=address, c=child: c.alive() and grpc_serving(a), child.name, timeout)

    def start_workers(self, count: int, timeout: float = 90.0) -> None:
        """``count`` workers, dealt round-robin over the node pools."""
        from hivemind.auth import issue_worker_token
        from hivemind.service_health import worker_online

        settings = self.settings()
        started = []
        for n in range(count):
            node_id = f"scale-{len(self.workers) + 1}"
            env = dict(
                self.env,
                HIVEMIND_WORKER_TOKEN=issue_worker_token(settings, node_id),
                HIVEMIND_NODEPOOL_ADDRESS=self.addresses[n % len(self.nodepools)],
            )
            argv = [sys.executable, "-m", "hivemind", "worker", "--node-id", node_id]
            child = Child(node_id, argv, env, self.workdir / f"{node_id}.out")
            self.workers.append(child)
            started.append((node_id, child))
        for node_id, child in started:
            wait_for(
                lambda n=node_id, c=child: c.alive() and worker_online(settings, n),
                f"worker {node_id}",
                timeout,
            )

    def login(self, address: str) -> str:
        """A token for the bench user, from the node pool at ``address``."""
        from hivemind.client import Client

        client = Client(address)
        try:
            client.login(USER, PASSWORD)
            return str(client.token)
        finally:
            client.close()

    def housekeeper_pid(self) -> int | None:
        """The pid of the node pool that holds ``housekeeping:lock`` (host:pid:nonce)."""
        import redis

        from hivemind import keys

        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            holder = client.get(keys.HOUSEKEEPING_LOCK) or ""
        finally:
            client.close()
        parts = holder.split(":")
        return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None

    def stop(self) -> None:
        for child in reversed(self.workers):
            child.stop()
        for pool in reversed(self.nodepools):
            pool.child.stop()
        self.workers.clear()
        self.nodepools.clear()


# -- Redis's own counters ----------------------------------------------------------------------


@dataclass(frozen=True)
class RedisCounters:
    """What INFO says about the server's CPU and the commands it ran, at one moment."""

    cpu_seconds: float
    commands: int
    #: command name -> calls (script-internal calls included, as INFO counts them).
    calls: dict[str, int]

    @classmethod
    def read(cls, client: Any) -> RedisCounters:
        cpu = client.info("cpu")
        stats = client.info("commandstats")
        calls = {
            name.removeprefix("cmdstat_"): int(fields["calls"]) for name, fields in stats.items()
        }
        return cls(
            cpu_seconds=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            commands=int(client.info("stats")["total_commands_processed"]),
            calls=calls,
        )

    def minus(self, before: RedisCounters) -> RedisCounters:
        calls = {k: v - before.calls.get(k, 0) for k, v in self.calls.items()}
        return RedisCounters(
            self.cpu_seconds - before.cpu_seconds,
            self.commands - before.commands,
            {k: v for k, v in calls.items() if v},
        )

    def scaled(self, factor: float) -> RedisCounters:
        return RedisCounters(
            self.cpu_seconds * factor,
            round(self.commands * factor),
            {k: round(v * factor) for k, v in self.calls.items()},
        )


def cpu_seconds_of(pids: Iterable[int]) -> dict[int, float]:
    """User + system CPU seconds so far of each process in ``pids`` (gone ones left out)."""
    import psutil

    seconds = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            seconds[pid] = times.user + times.system
    return seconds


def tree_cpu_seconds(pids: Sequence[int]) -> float:
    """CPU seconds so far of ``pids`` and all their descendants (a worker's pool processes)."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            for member in (process, *process.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    times = member.cpu_times()
                    # children_*: descendants already reaped (a pool process replaced).
                    total += times.user + times.system + times.children_user
                    total += times.children_system
    return total
