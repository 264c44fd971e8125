"""Processes, ports and the Redis server the benchmark starts."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from bench.machine import RUN_ID, RUN_MARK

ROOT = Path(__file__).resolve().parent.parent


# -- processes, ports and Redis ----------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def base_environment() -> dict[str, str]:
    """This environment without any HIVEMIND_ setting, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env[RUN_MARK] = RUN_ID
    return env


class Child:
    """A process we start in its own session, so that stopping it stops its children too."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                list(argv),
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the child's process group, SIGKILL after ``timeout``."""
        if self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def redis_binary() -> str:
    """A real ``redis-server`` binary (not a pyenv shim), as HiveMind itself finds one."""
    from hivemind.redis_server import find_redis_server

    found = find_redis_server()
    if found is None:
        raise SystemExit("error: no redis-server binary found (apt-get install redis-server)")
    return str(found)


def start_redis(workdir: Path, port: int) -> Child:
    import redis

    child = Child(
        "redis",
        [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
        ],
        base_environment(),
        workdir / "redis.log",
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            return child
        except redis.RedisError:
            if time.monotonic() > deadline or not child.alive():
                child.stop()
                raise SystemExit(f"error: redis-server did not start; see {child.log}") from None
            time.sleep(0.05)
        finally:
            client.close()


def flush_db(port: int, db: int) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, db=db)
    try:
        client.flushdb()
    finally:
        client.close()


def pin_process(pid: int, cpus: set[int]) -> dict[int, set[int]]:
    """Pin every thread of ``pid`` to ``cpus``; returns the previous affinity per thread.

    ``sched_setaffinity`` acts on one thread; threads started later inherit it.
    """
    previous: dict[int, set[int]] = {}
    for entry in Path(f"/proc/{pid}/task").iterdir():
        tid = int(entry.name)
        with contextlib.suppress(OSError):
            previous[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
    return previous


def unpin(pid: int) -> None:
    """Let every thread of ``pid`` run on all CPUs again."""
    everything = set(range(os.cpu_count() or 1))
    if Path(f"/proc/{pid}/task").is_dir():
        pin_process(pid, everything)
