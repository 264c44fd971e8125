"""The peers HiveMind is measured against: Celery, RQ, Dramatiq and Dask."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.processes import Child
from bench.system import SAMPLE_TIMEOUT, BatchOutcome, _outcome

#: Python modules each system needs, and how to install them.
REQUIREMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "celery": (("celery",), "pip install celery"),
    "rq": (("rq",), "pip install rq"),
    "dramatiq": (("dramatiq", "redis"), "pip install 'dramatiq[redis]'"),
    "dask": (("distributed",), "pip install distributed"),
}


def missing_peers(sections: Sequence[str]) -> dict[str, str]:
    """Each selected peer whose modules are not importable, with how to install it."""
    missing = {}
    for name in sections:
        if name in REQUIREMENTS:
            modules, install = REQUIREMENTS[name]
            if any(importlib.util.find_spec(m) is None for m in modules):
                missing[name] = install
    return missing


class PeerWorkers:
    """Worker processes of a peer, with logs in the run's directory."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.children: list[Child] = []

    def spawn(self, name: str, argv: Sequence[str]) -> None:
        self.children.append(Child(name, argv, self.env, self.workdir / f"{name}.log"))

    def check(self) -> None:
        for child in self.children:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited; see {child.log}")

    def stop(self) -> None:
        for child in self.children:
            child.stop()


class CeleryPeer:
    name = "celery"
    setup = "prefork pool, concurrency 2 (1 worker, 2 child processes)"

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workers = PeerWorkers(workdir, env)

    def start(self) -> None:
        self.workers.spawn(
            "celery-worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.peer_tasks:celery_app",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                "2",
                "--loglevel",
                "WARNING",
                "--hostname",
                "bench@%h",
            ],
        )

    def one(self) -> None:
        from bench.peer_tasks import celery_noop

        celery_noop.delay().get(timeout=SAMPLE_TIMEOUT)

    def batch(self, count: int, timeout: float) -> BatchOutcome:
        from celery import group
        from celery.exceptions import TimeoutError as CeleryTimeout

        from bench.peer_tasks import celery_noop

        job = group(celery_noop.s() for _ in range(count))
        started = time.perf_counter()
        deadline = started + timeout
        result = job.apply_async()
        submitted_at = time.perf_counter()
        try:
            values = result.get(timeout=timeout, propagate=False)
        except CeleryTimeout:
            values = None
        finished_at = time.perf_counter()
        if values is None:
            succeeded = result.completed_count()
            other = 0
        else:
            other = sum(isinstance(v, BaseException) for v in values)
            succeeded = len(values) - other
        return _outcome(count, succeeded, started, submitted_at, finished_at, deadline, other)

    def stop(self) -> None:
        self.workers.stop()


class RqPeer:
    name = "rq"

    def __init__(self, workdir: Path, env: dict[str, str], worker_class: str) -> None:
        self.workers = PeerWorkers(workdir, env)
        self.worker_class = worker_class
        self.setup = f"2 x `rq worker` ({worker_class.rsplit('.', 1)[-1]})"
        self.queue: Any = None

    def start(self) -> None:
        import redis
        from rq import Queue

        from bench.peer_tasks import QUEUE, RQ_DB, redis_url

        url = redis_url(RQ_DB)
        for number in (1, 2):
            self.workers.spawn(
                f"rq-worker-{number}",
                [
                    sys.executable,
                    "-m",
                    "rq.cli",
                    "worker",
                    "--url",
                    url,
                    "--worker-class",
                    self.worker_class,
                    "--name",
                    f"bench-{number}",
                    QUEUE,
                ],
            )
        self.queue = Queue(QUEUE, connection=redis.Redis.from_url(url))

    def _result(self, job: Any, timeout: float) -> bool:
        result = job.latest_result(timeout=max(1, math.ceil(timeout)))
        if result is None:
            return False
        if result.type != result.Type.SUCCESSFUL:
            raise RuntimeError(f"rq job {job.id} failed: {result.exc_string}")
        return True

    def one(self) -> None:
        from bench.peer_tasks import rq_noop

        job = self.queue.enqueue(rq_noop)
        if not self._result(job, SAMPLE_TIMEOUT):
            raise RuntimeError(f"rq job {job.id} gave no result in {SAMPLE_TIMEOUT:.0f} s")

    def batch(self, count: int, timeout: float) -> BatchOutcome:
        from rq import Queue

        from bench.peer_tasks import rq_noop

        data = [Queue.prepare_data(rq_noop) for _ in range(count)]
        started = time.perf_counter()
        deadline = started + timeout
        with self.queue.connection.pipeline() as pipe:
            jobs = self.queue.enqueue_many(data, pipeline=pipe)
            pipe.execute()
        submitted_at = time.perf_counter()
        succeeded = 0
        for job in jobs:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not self._result(job, remaining):
                break
            succeeded += 1
        finished_at = time.perf_counter()
        return _outcome(count, succeeded, started, submitted_at, finished_at, deadline)

    def stop(self) -> None:
        self.workers.stop()
        if self.queue is not None:
            self.queue.connection.close()


class DramatiqPeer:
    name = "dramatiq"
    setup = "2 processes x 8 threads, Redis broker, Results middleware"

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workers = PeerWorkers(workdir, env)

    def start(self) -> None:
        self.workers.spawn(
            "dramatiq-worker",
            [
                sys.executable,
                "-m",
                "dramatiq",
                "bench.peer_tasks",
                "--processes",
                "2",
                "--threads",
                "8",
            ],
        )

    def one(self) -> None:
        from bench.peer_tasks import dramatiq_noop

        dramatiq_noop.send().get_result(block=True, timeout=int(SAMPLE_TIMEOUT * 1000))

    def batch(self, count: int, timeout: float) -> BatchOutcome:
        from dramatiq.results import ResultTimeout

        from bench.peer_tasks import dramatiq_noop

        broker = dramatiq_noop.broker
        messages = [dramatiq_noop.message() for _ in range(count)]
        started = time.perf_counter()
        deadline = started + timeout
        for message in messages:
            broker.enqueue(message)
        submitted_at = time.perf_counter()
        succeeded = 0
        for message in messages:
            # The Redis results backend waits in whole seconds.
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                message.get_result(block=True, timeout=max(1000, int(remaining * 1000)))
            except ResultTimeout:
                break
            succeeded += 1
        finished_at = time.perf_counter()
        return _outcome(count, succeeded, started, submitted_at, finished_at, deadline)

    def stop(self) -> None:
        self.workers.stop()


class DaskPeer:
    """Dask's ``distributed``: a scheduler process and worker processes, driven through its
    futures (``Client.submit``/``map``, ``gather``): the peer of HiveMind's Python API."""

    name = "dask"
    setup = "dask scheduler + 2 worker processes x 2 threads, Client.map + gather"

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workers = PeerWorkers(workdir, env)
        self.client: Any = None

    def start(self) -> None:
        from distributed import Client

        from bench.processes import free_ports

        [port] = free_ports(1)
        address = f"tcp://127.0.0.1:{port}"
        scheduler = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
        self.workers.spawn(
            "dask-scheduler",
            [*scheduler, "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        )
        self.workers.spawn(
            "dask-workers",
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                address,
                "--nworkers",
                "2",
                "--nthreads",
                "2",
                "--no-dashboard",
                "--host",
                "127.0.0.1",
            ],
        )
        self.client = Client(address, timeout=60)
        self.client.wait_for_workers(2, timeout=60)

    def one(self) -> None:
        from bench.peer_tasks import dask_noop

        self.client.submit(dask_noop, pure=False).result(timeout=SAMPLE_TIMEOUT)

    def batch(self, count: int, timeout: float) -> BatchOutcome:
        from distributed import wait

        from bench.peer_tasks import dask_noop

        started = time.perf_counter()
        deadline = started + timeout
        futures = self.client.map(dask_noop, range(count), pure=False)
        submitted_at = time.perf_counter()
        done, _pending = wait(futures, timeout=timeout)
        finished_at = time.perf_counter()
        succeeded = sum(f.status == "finished" for f in done)
        other = len(done) - succeeded
        self.client.cancel(futures)
        return _outcome(count, succeeded, started, submitted_at, finished_at, deadline, other)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.workers.stop()
