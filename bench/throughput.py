"""HiveMind against the task queues a user would pick instead, on one Redis server.

Run from the repository root (``pip install -e '.[bench]'`` first)::

    python -m bench.throughput                      # everything, about 5 minutes on 2 cores
    python -m bench.throughput --only hivemind,rq --tasks 2000
    python -m bench.throughput --skip-missing       # leave out peers that are not installed

For each system (HiveMind with 2 workers, Celery prefork with 2 processes, RQ with 2 workers,
Dramatiq with 2 processes x 8 threads) it measures, on an otherwise idle machine:

- **latency**: submit one no-op task, block until its result is seen, repeat
  (``--latency-samples``, after ``--warmup`` unrecorded rounds); p50 and p99;
- **throughput**: submit ``--tasks`` no-op tasks as one batch and time until the client has
  seen every result.

Then a fresh HiveMind node pool gets 1,000 simulated workers heartbeating once a second,
pinned to one core, to see whether it keeps up and how much memory it holds.

For every phase it records the CPU stolen by the hypervisor (``/proc/stat``) and the CPU used
by processes outside the run; a phase above ``--max-steal`` or ``--max-other`` per cent is
flagged NOISY and should not be compared (``--wait-quiet`` waits for a quiet machine before
each phase). See bench/README.md for what each figure means and the figures measured so far.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make `bench` and `hivemind` importable
    sys.path.insert(0, str(ROOT))

SYSTEMS = ("hivemind", "celery", "rq", "dramatiq")
SECTIONS = (*SYSTEMS, "heartbeat")
#: Python modules each system needs, and how to install them.
REQUIREMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "celery": (("celery",), "pip install celery"),
    "rq": (("rq",), "pip install rq"),
    "dramatiq": (("dramatiq", "redis"), "pip install 'dramatiq[redis]'"),
}
HIVEMIND_DB = 1
HEARTBEAT_DB = 5
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT"})
#: Seconds a latency sample may take before the phase is abandoned.
SAMPLE_TIMEOUT = 10.0
#: Seconds a system gets to run its first task (start-up included).
START_TIMEOUT = 90.0


# -- machine facts and CPU steal ---------------------------------------------------------------


@dataclass(frozen=True)
class CpuTimes:
    """The aggregate ``cpu`` line of /proc/stat, in clock ticks."""

    total: int
    idle: int
    steal: int

    @classmethod
    def read(cls) -> CpuTimes:
        try:
            with open("/proc/stat") as fh:
                fields = fh.readline().split()
        except OSError:
            return cls(0, 0, 0)
        # cpu user nice system idle iowait irq softirq steal [guest guest_nice]: guest time
        # is already counted in user, so the total is the first eight values.
        values = [int(x) for x in fields[1:9]] + [0] * (8 - len(fields[1:9]))
        return cls(total=sum(values), idle=values[3] + values[4], steal=values[7])


#: Marks every process the benchmark starts (inherited through the environment), so that CPU
#: used by anything else on the machine during a phase can be told apart.
RUN_MARK = "BENCH_RUN_ID"
RUN_ID = f"{os.getpid()}-{time.time_ns()}"


def _environment_has_mark(pid: int) -> bool:
    try:
        data = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{RUN_MARK}={RUN_ID}".encode() in data.split(b"\0")


def own_cpu_seconds() -> dict[int, float]:
    """CPU seconds so far of each process of this run: this one, its descendants and every
    process carrying the run's mark (the HiveMind services outlive `hivemind up`, their
    parent, and are adopted by init)."""
    import psutil

    me = psutil.Process()
    ours = {me, *me.children(recursive=True)}
    for process in psutil.process_iter():
        if process not in ours and _environment_has_mark(process.pid):
            ours.add(process)
    seconds = {}
    for process in ours:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
    return seconds


@dataclass
class PhaseStats:
    name: str
    seconds: float = 0.0
    #: Share of the machine's CPU time the hypervisor stole.
    steal_percent: float = 0.0
    #: Share of the machine's CPU time spent busy, by anything.
    busy_percent: float = 0.0
    #: Share of the machine's CPU time used by processes that are not this run's.
    other_percent: float = 0.0
    noisy: bool = False


@dataclass(frozen=True)
class NoiseLimits:
    max_steal: float
    max_other: float


@contextlib.contextmanager
def phase(name: str, limits: NoiseLimits, log: Callable[[str], None]) -> Iterator[PhaseStats]:
    """Time a phase; record the CPU steal, the busy share and other processes' share."""
    stats = PhaseStats(name)
    own_before = own_cpu_seconds()
    before, started = CpuTimes.read(), time.perf_counter()
    try:
        yield stats
    finally:
        after = CpuTimes.read()
        stats.seconds = time.perf_counter() - started
        own_after = own_cpu_seconds()
        ticks = after.total - before.total
        if ticks > 0:
            hz = os.sysconf("SC_CLK_TCK")
            steal = after.steal - before.steal
            busy = ticks - (after.idle - before.idle) - steal
            own = sum(v - own_before.get(pid, 0.0) for pid, v in own_after.items())
            stats.steal_percent = 100.0 * steal / ticks
            stats.busy_percent = 100.0 * busy / ticks
            stats.other_percent = max(0.0, 100.0 * (busy / hz - own) / (ticks / hz))
        stats.noisy = (stats.steal_percent > limits.max_steal
                       or stats.other_percent > limits.max_other)
        flag = "  NOISY" if stats.noisy else ""
        log(
            f"  {name}: {stats.seconds:.1f} s, steal {stats.steal_percent:.1f} %, "
            f"other processes {stats.other_percent:.0f} %, "
            f"cpu busy {stats.busy_percent:.0f} %{flag}"
        )


def wait_quiet(limits: NoiseLimits, timeout: float, log: Callable[[str], None]) -> None:
    """Wait (at most ``timeout`` seconds) for a 2-second window in which steal and other
    processes stay within ``limits``; on a shared machine this keeps phases comparable."""
    if timeout <= 0:
        return
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        with phase("quiet?", limits, lambda _line: None) as stats:
            time.sleep(2.0)
        if not stats.noisy:
            if waited:
                log("  the machine is quiet again")
            return
        if time.monotonic() >= deadline:
            log(f"  still not quiet after {timeout:.0f} s (steal {stats.steal_percent:.1f} %, "
                f"other processes {stats.other_percent:.0f} %); going on")
            return
        if not waited:
            log(f"  waiting for the machine to be quiet (steal {stats.steal_percent:.1f} %, "
                f"other processes {stats.other_percent:.0f} %) ...")
            waited = True


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


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
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
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
                list(argv), env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
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
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"],
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


# -- the systems -------------------------------------------------------------------------------


@dataclass
class BatchOutcome:
    submitted: int
    succeeded: int
    other: int
    submit_seconds: float
    total_seconds: float
    timed_out: bool


class System(Protocol):
    name: str
    setup: str

    def start(self) -> None: ...

    def one(self) -> None:
        """Submit one no-op task and block until its result is seen."""

    def batch(self, count: int, timeout: float) -> BatchOutcome: ...

    def stop(self) -> None: ...


def _outcome(submitted: int, succeeded: int, started: float, submitted_at: float,
             finished_at: float, deadline: float, other: int = 0) -> BatchOutcome:
    return BatchOutcome(
        submitted=submitted,
        succeeded=succeeded,
        other=other,
        submit_seconds=submitted_at - started,
        total_seconds=finished_at - started,
        timed_out=succeeded + other < submitted and finished_at >= deadline,
    )


class HiveMindStack:
    """A local stack started with the CLI (`hivemind up`) in a temporary home."""

    def __init__(self, workdir: Path, redis_port: int, db: int, workers: int,
                 concurrency: int) -> None:
        self.home = workdir / "home"
        self.xdg = workdir / "xdg"
        self.workers = workers
        self.grpc_port, self.master_port = free_ports(2)
        self.address = f"localhost:{self.grpc_port}"
        self.log = workdir / "cli.log"
        self.env = base_environment()
        self.env.update(
            HIVEMIND_HOME=str(self.home),
            HIVEMIND_REDIS_URL=f"redis://127.0.0.1:{redis_port}/{db}",
            HIVEMIND_GRPC_HOST="127.0.0.1",
            HIVEMIND_GRPC_PORT=str(self.grpc_port),
            HIVEMIND_MASTER_HOST="127.0.0.1",
            HIVEMIND_MASTER_PORT=str(self.master_port),
            HIVEMIND_MAX_CONCURRENT_TASKS=str(concurrency),
            XDG_CONFIG_HOME=str(self.xdg),
        )

    def _cli(self, *args: str, timeout: float) -> None:
        with self.log.open("ab") as out:
            code = subprocess.run(
                [sys.executable, "-m", "hivemind", *args], env=self.env, cwd=ROOT,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                timeout=timeout, check=False,
            ).returncode
        if code != 0:
            raise RuntimeError(f"`hivemind {' '.join(args)}` exited {code}; see {self.log}")

    def up(self) -> None:
        self._cli("up", "--workers", str(self.workers), timeout=180)

    def down(self) -> None:
        self._cli("down", timeout=180)

    def token(self) -> str:
        from hivemind.credentials import load_token

        saved = os.environ.get("XDG_CONFIG_HOME")
        os.environ["XDG_CONFIG_HOME"] = str(self.xdg)
        try:
            return load_token(self.address)
        finally:
            if saved is None:
                os.environ.pop("XDG_CONFIG_HOME", None)
            else:
                os.environ["XDG_CONFIG_HOME"] = saved

    def nodepool_pid(self) -> int:
        return int(json.loads((self.home / "run" / "nodepool.pid").read_text())["pid"])

    def settings(self) -> Any:
        from hivemind.config import load_settings

        return load_settings(environ={k: v for k, v in self.env.items()
                                      if k.startswith("HIVEMIND_")})


class HiveMind:
    name = "hivemind"

    def __init__(self, workdir: Path, redis_port: int, concurrency: int) -> None:
        self.stack = HiveMindStack(workdir, redis_port, HIVEMIND_DB, 2, concurrency)
        self.setup = f"2 workers x {concurrency} slots (MAX_CONCURRENT_TASKS={concurrency})"
        self.client: Any = None
        self.started = False

    def start(self) -> None:
        from hivemind.client import Client

        self.started = True
        self.stack.up()
        self.client = Client(self.stack.address, self.stack.token())

    def _spec(self) -> Any:
        from hivemind.client import function_spec

        return function_spec("hivemind.examples:noop")

    def one(self) -> None:
        [task_id] = self.client.submit([self._spec()])
        [task] = self.client.wait([task_id], SAMPLE_TIMEOUT)
        if task.status != "SUCCEEDED":
            raise RuntimeError(f"task {task_id} ended {task.status}: {task.error_message}")

    def batch(self, count: int, timeout: float) -> BatchOutcome:
        specs = [self._spec() for _ in range(count)]
        started = time.perf_counter()
        deadline = started + timeout
        ids = self.client.submit(specs)
        submitted_at = time.perf_counter()
        succeeded = other = 0
        for start in range(0, len(ids), 1000):
            part = ids[start : start + 1000]
            tasks: list[Any] = []
            while time.perf_counter() < deadline:
                wait = max(1.0, min(60.0, deadline - time.perf_counter()))
                tasks = self.client.wait(part, wait)
                if all(t.status in TERMINAL for t in tasks):
                    break
            succeeded += sum(t.status == "SUCCEEDED" for t in tasks)
            other += sum(t.status in TERMINAL and t.status != "SUCCEEDED" for t in tasks)
        finished_at = time.perf_counter()
        return _outcome(len(ids), succeeded, started, submitted_at, finished_at, deadline, other)

    def nodepool_rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.stack.nodepool_pid()).memory_info().rss / 2**20

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.started:
            self.stack.down()


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
            [sys.executable, "-m", "celery", "-A", "bench.peer_tasks:celery_app", "worker",
             "--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING",
             "--hostname", "bench@%h"],
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
                [sys.executable, "-m", "rq.cli", "worker", "--url", url,
                 "--worker-class", self.worker_class, "--name", f"bench-{number}", QUEUE],
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
            [sys.executable, "-m", "dramatiq", "bench.peer_tasks", "--processes", "2",
             "--threads", "8"],
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


# -- task phases -------------------------------------------------------------------------------


@dataclass
class SystemResult:
    system: str
    setup: str
    latency_ms: list[float] = field(default_factory=list)
    latency_phase: PhaseStats | None = None
    batch: BatchOutcome | None = None
    batch_phase: PhaseStats | None = None
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return percentile(self.latency_ms, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.latency_ms, 0.99)

    @property
    def throughput(self) -> float:
        if self.batch is None or self.batch.total_seconds <= 0:
            return math.nan
        return self.batch.succeeded / self.batch.total_seconds


def run_system(system: System, args: argparse.Namespace,
               log: Callable[[str], None]) -> SystemResult:
    result = SystemResult(system.name, system.setup)
    log(f"\n== {system.name}: {system.setup}")
    try:
        system.start()
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # the first task proves the workers are up
            try:
                system.one()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        wait_quiet(args.limits, args.wait_quiet, log)
        for _ in range(args.warmup):
            system.one()
        with phase(f"{system.name} latency", args.limits, log) as stats:
            for _ in range(args.latency_samples):
                started = time.perf_counter()
                system.one()
                result.latency_ms.append((time.perf_counter() - started) * 1000)
        result.latency_phase = stats
        time.sleep(1.0)  # let background work settle before the batch
        wait_quiet(args.limits, args.wait_quiet, log)
        with phase(f"{system.name} batch", args.limits, log) as stats:
            result.batch = system.batch(args.tasks, args.batch_timeout)
        result.batch_phase = stats
        if result.batch.timed_out:
            result.notes.append(
                f"batch timed out after {args.batch_timeout:.0f} s: "
                f"{result.batch.succeeded}/{result.batch.submitted} results seen"
            )
        if isinstance(system, HiveMind):
            result.notes.append(
                f"node pool RSS after the batch: {system.nodepool_rss_mb():.0f} MB"
            )
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"  FAILED: {result.error}")
    finally:
        try:
            system.stop()
        except Exception as exc:
            log(f"  stopping {system.name} failed: {exc}")
    return result


# -- heartbeat load ----------------------------------------------------------------------------


@dataclass
class ShardReport:
    #: (due time relative to the start, latency in seconds) of each answered heartbeat.
    answered: list[tuple[float, float]] = field(default_factory=list)
    #: (due time relative to the start, status code, seconds until it failed) of each failure.
    failed: list[tuple[float, str, float]] = field(default_factory=list)
    #: Seconds each send left after its due time (how far the generator fell behind).
    lags: list[float] = field(default_factory=list)


def heartbeat_shard(
    address: str,
    workers: list[tuple[str, str, float]],
    start_at: float,
    rounds: int,
    cpus: list[int] | None,
    conn: Connection,
) -> None:
    """Process entry point: heartbeat ``workers`` (node id, token, offset) once a second.

    Sends are open-loop (each worker's next heartbeat is due one second after the previous
    one, answered or not), so a node pool that cannot keep up shows as growing latency and
    errors, not as a slower generator. ``start_at`` is on the monotonic clock, which Linux
    shares across processes.
    """
    if cpus:
        os.sched_setaffinity(0, set(cpus))
    from hivemind.client import open_channel
    from hivemind.proto import hivemind_pb2 as pb
    from hivemind.proto import hivemind_pb2_grpc as pb_grpc

    # One channel for all of this shard's workers; each call carries its worker's token.
    channel = open_channel(address)
    stub = pb_grpc.WorkerServiceStub(channel)
    items = sorted(
        (
            (offset, pb.HeartbeatRequest(node_id=node_id, metrics=pb.Metrics()),
             (("authorization", f"Bearer {token}"),))
            for node_id, token, offset in workers
        ),
        key=lambda item: item[0],
    )
    report = ShardReport()
    lock = threading.Lock()
    done = threading.Semaphore(0)

    def answered(due: float, sent_at: float, future: Any) -> None:
        latency = time.monotonic() - sent_at
        error = future.exception()
        with lock:
            if error is None:
                report.answered.append((due, latency))
            else:
                code = error.code().name if hasattr(error, "code") else type(error).__name__
                details = error.details() if hasattr(error, "details") else str(error)
                if details and details != code:
                    code = f"{code} ({details})"
                report.failed.append((due, code, latency))
        done.release()

    conn.send("ready")
    sent = 0
    for round_number in range(rounds):
        for offset, request, metadata in items:
            due = round_number + offset
            delay = start_at + due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent_at = time.monotonic()
            report.lags.append(sent_at - start_at - due)
            future = stub.Heartbeat.future(request, metadata=metadata, timeout=5.0)
            sent += 1
            future.add_done_callback(lambda f, d=due, t=sent_at: answered(d, t, f))
    deadline = time.monotonic() + 10.0
    for _ in range(sent):
        if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
            break
    channel.close()
    with lock:
        conn.send(asdict(report))
    conn.close()


@dataclass
class HeartbeatResult:
    workers: int
    seconds: float
    warmup: float
    pinned: str
    offered_per_s: float = 0.0
    sent: int = 0
    achieved_per_s: float = 0.0
    worst_second_per_s: float = 0.0
    answered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    generator_lag_p99_ms: float = math.nan
    #: Median time from sending a heartbeat that failed until it failed.
    failed_after_p50_ms: float = math.nan
    nodepool_cpu_percent: float = math.nan
    generator_cpu_percent: float = math.nan
    redis_cpu_percent: float = math.nan
    rss_idle_mb: float = math.nan
    rss_registered_mb: float = math.nan
    rss_peak_mb: float = math.nan
    rss_end_mb: float = math.nan
    register_seconds: float = math.nan
    online_after: int = 0
    phase: PhaseStats | None = None
    keeps_up: bool = False
    error: str = ""


def run_heartbeat(workdir: Path, redis_server: Child, redis_port: int, args: argparse.Namespace,
                  log: Callable[[str], None]) -> HeartbeatResult:
    import psutil

    from hivemind.auth import issue_worker_token
    from hivemind.client import Client
    from hivemind.worker.connection import WorkerConnection

    count, seconds, warmup = args.heartbeat_workers, args.heartbeat_seconds, 2.0
    ncpu = os.cpu_count() or 1
    pin = ncpu >= 2 and not args.no_pin
    pinned = ("node pool pinned to CPU 0; Redis and the load generator to CPU 1"
              if pin else "not pinned (one CPU, or --no-pin)")
    result = HeartbeatResult(count, seconds, warmup, pinned)
    log(f"\n== heartbeat load: {count} simulated workers x 1/s for {seconds:.0f} s; {pinned}")
    stack = HiveMindStack(workdir, redis_port, HEARTBEAT_DB, 0, 1)
    flush_db(redis_port, HEARTBEAT_DB)
    shards: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    nodepool_pid = 0
    try:
        stack.up()
        nodepool_pid = stack.nodepool_pid()
        nodepool = psutil.Process(nodepool_pid)
        if pin:
            pin_process(nodepool_pid, {0})
            pin_process(redis_server.pid, {1})
        time.sleep(1.0)
        result.rss_idle_mb = nodepool.memory_info().rss / 2**20

        settings = stack.settings()
        started = time.perf_counter()
        tokens = [(f"sim-{n:04d}", issue_worker_token(settings, f"sim-{n:04d}"))
                  for n in range(count)]
        from hivemind.proto import hivemind_pb2 as pb

        resources = pb.WorkerResources(cpu=2, memory_mb=4096, capacity=2)
        for node_id, token in tokens:
            conn = WorkerConnection(stack.address, node_id, token)
            try:
                conn.register(resources, [])
            finally:
                conn.close()
        result.register_seconds = time.perf_counter() - started
        result.rss_registered_mb = nodepool.memory_info().rss / 2**20
        log(f"  registered {count} workers in {result.register_seconds:.1f} s; node pool RSS "
            f"{result.rss_registered_mb:.0f} MB (idle before: {result.rss_idle_mb:.0f} MB)")

        wait_quiet(args.limits, args.wait_quiet, log)
        context = multiprocessing.get_context("spawn")
        nshards = max(1, args.heartbeat_processes)
        rounds = math.ceil(warmup + seconds)
        start_at = time.monotonic() + 3.0 + nshards
        for index in range(nshards):
            mine = [(node, token, n / count) for n, (node, token) in enumerate(tokens)
                    if n % nshards == index]
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=heartbeat_shard,
                args=(stack.address, mine, start_at, rounds, [1] if pin else None, child_end),
                daemon=True,
            )
            process.start()
            child_end.close()
            shards.append((process, parent_end))
        for process, parent_end in shards:
            if not parent_end.poll(start_at - time.monotonic()) or parent_end.recv() != "ready":
                raise RuntimeError(f"load generator {process.pid} did not start in time")

        rss_peak = result.rss_registered_mb
        time.sleep(max(0.0, start_at + warmup - time.monotonic()))
        watched = {
            "nodepool": [nodepool],
            "generator": [psutil.Process(p.pid) for p, _ in shards],
            "redis": [psutil.Process(redis_server.pid)],
        }
        with phase("heartbeat load", args.limits, log) as stats:
            cpu_before = {k: _cpu_seconds(v) for k, v in watched.items()}
            measured_from = time.monotonic()
            while time.monotonic() < start_at + warmup + seconds:
                rss_peak = max(rss_peak, nodepool.memory_info().rss / 2**20)
                time.sleep(0.25)
            elapsed = time.monotonic() - measured_from
            cpu = {k: 100.0 * (_cpu_seconds(v) - cpu_before[k]) / elapsed
                   for k, v in watched.items()}
        result.phase = stats
        result.nodepool_cpu_percent = cpu["nodepool"]
        result.generator_cpu_percent = cpu["generator"]
        result.redis_cpu_percent = cpu["redis"]
        reports = []
        for process, parent_end in shards:
            if not parent_end.poll(30.0):
                raise RuntimeError(f"load generator {process.pid} did not report")
            reports.append(ShardReport(**parent_end.recv()))
        result.rss_peak_mb = max(rss_peak, nodepool.memory_info().rss / 2**20)
        result.rss_end_mb = nodepool.memory_info().rss / 2**20
        _summarise_heartbeats(result, reports, warmup, seconds)
        admin = Client(stack.address, stack.token())
        try:
            result.online_after = sum(w.status == "online" for w in admin.workers())
        finally:
            admin.close()
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"  FAILED: {result.error}")
    finally:
        for process, parent_end in shards:
            process.join(15.0)
            if process.is_alive():
                process.kill()
                process.join(5.0)
            parent_end.close()
        if nodepool_pid and pin:
            with contextlib.suppress(OSError):
                unpin(nodepool_pid)
        if pin:
            with contextlib.suppress(OSError):
                unpin(redis_server.pid)
        try:
            stack.down()
        except Exception as exc:
            log(f"  stopping the heartbeat stack failed: {exc}")
    return result


def _cpu_seconds(processes: Sequence[Any]) -> float:
    """User + system CPU seconds of psutil processes so far."""
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def _summarise_heartbeats(result: HeartbeatResult, reports: list[ShardReport], warmup: float,
                          seconds: float) -> None:
    """Statistics over the heartbeats due after the warm-up."""
    window = [(due - warmup, latency) for r in reports for due, latency in r.answered
              if due >= warmup]
    errors = Counter(code for r in reports for due, code, _ in r.failed if due >= warmup)
    failed_after = [latency * 1000 for r in reports for due, _, latency in r.failed
                    if due >= warmup]
    result.failed_after_p50_ms = percentile(failed_after, 0.50)
    latencies = [latency * 1000 for _, latency in window]
    result.sent = len(window) + sum(errors.values())
    result.answered = len(window)
    result.errors = dict(errors)
    result.offered_per_s = result.sent / seconds
    # The answers to the measured heartbeats arrive from the window's start until the last
    # one is back: a node pool that falls behind stretches that span.
    span = max((due + latency for due, latency in window), default=seconds)
    result.achieved_per_s = len(window) / max(seconds, span)
    per_second = Counter(int(due + latency) for due, latency in window)
    full_seconds = [per_second.get(s, 0) for s in range(1, int(seconds) - 1)]
    result.worst_second_per_s = float(min(full_seconds)) if full_seconds else math.nan
    result.p50_ms = percentile(latencies, 0.50)
    result.p99_ms = percentile(latencies, 0.99)
    result.max_ms = max(latencies) if latencies else math.nan
    lags = [lag * 1000 for r in reports for lag in r.lags]
    result.generator_lag_p99_ms = percentile(lags, 0.99)
    result.keeps_up = (
        not errors
        and result.answered >= 0.98 * result.workers * seconds
        and result.achieved_per_s >= 0.98 * result.offered_per_s
        and result.p99_ms < 1000.0
    )


# -- report ------------------------------------------------------------------------------------


def _fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _ratio(value: float, reference: float) -> str:
    if math.isnan(value) or math.isnan(reference) or reference == 0:
        return "-"
    return f"{value / reference:.2f}x"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain text, the first column left-aligned and the others right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _noise(stats: PhaseStats | None, limits: NoiseLimits) -> list[str]:
    """The steal and other-processes cells of a phase, NOISY marking the one over its limit."""
    if stats is None:
        return ["-", "-"]
    steal, other = f"{stats.steal_percent:.1f}", f"{stats.other_percent:.0f}"
    if stats.steal_percent > limits.max_steal:
        steal += " NOISY"
    if stats.other_percent > limits.max_other:
        other += " NOISY"
    return [steal, other]


def render(results: list[SystemResult], heartbeat: HeartbeatResult | None,
           args: argparse.Namespace, header: dict[str, str]) -> str:
    out = ["", "=" * 100, "HiveMind throughput benchmark"]
    out += [f"  {k}: {v}" for k, v in header.items()]
    reference = next((r for r in results if r.system == "hivemind" and not r.error), None)
    if results:
        out += ["", "Setups:"] + [f"  {r.system:<9} {r.setup}" for r in results]
        ref_tp = reference.throughput if reference else math.nan
        rows = []
        for r in results:
            b = r.batch
            rows.append([
                r.system,
                _fmt(r.throughput, 0),
                _fmt(b.total_seconds, 2) if b else "-",
                _fmt(b.submit_seconds, 2) if b else "-",
                f"{b.succeeded}/{b.submitted}" if b else "-",
                *_noise(r.batch_phase, args.limits),
                _ratio(r.throughput, ref_tp),
            ])
        out += ["", f"Batch throughput: {args.tasks:,} no-op tasks submitted at once, "
                "timed until the client has seen every result",
                _table(["system", "tasks/s", "total s", "submit s", "ok", "steal %",
                        "other %", "vs HiveMind"], rows)]
        ref50 = reference.p50 if reference else math.nan
        ref99 = reference.p99 if reference else math.nan
        rows = []
        for r in results:
            rows.append([
                r.system, _fmt(r.p50, 2), _fmt(r.p99, 2),
                _fmt(statistics.fmean(r.latency_ms), 2) if r.latency_ms else "-",
                str(len(r.latency_ms)), *_noise(r.latency_phase, args.limits),
                _ratio(r.p50, ref50), _ratio(r.p99, ref99),
            ])
        out += ["", "Latency: one task at a time on an idle cluster, submit -> result seen "
                f"({args.latency_samples} samples after {args.warmup} warm-up)",
                _table(["system", "p50 ms", "p99 ms", "mean ms", "n", "steal %", "other %",
                        "p50 vs HM", "p99 vs HM"], rows)]
        out += [
            "  vs HiveMind (HM) = the system's figure / HiveMind's: above 1x means more "
            "tasks/s (better)",
            "  in the first table and a slower round trip (worse) in the second. steal % = "
            "CPU stolen by",
            "  the hypervisor; other % = CPU used by processes outside this run; both as a "
            "share of the machine.",
        ]
        for r in results:
            for note in r.notes:
                out.append(f"  {r.system}: {note}")
            if r.error:
                out.append(f"  {r.system}: FAILED: {r.error}")
    if heartbeat is not None:
        h = heartbeat
        out += ["", f"Heartbeat load: {h.workers} simulated workers, 1 heartbeat/s each, "
                f"{h.seconds:.0f} s measured after {h.warmup:.0f} s warm-up;", f"  {h.pinned}"]
        if h.error:
            out.append(f"  FAILED: {h.error}")
        errors = ", ".join(f"{k} {v}" for k, v in sorted(h.errors.items())) or "none"
        rss_ok = "PASS" if h.rss_peak_mb <= 150.0 else "FAIL"
        out += [
            f"  offered       {_fmt(h.offered_per_s)} heartbeats/s ({h.sent} sent)",
            f"  achieved      {_fmt(h.achieved_per_s)} heartbeats/s (worst full second "
            f"{_fmt(h.worst_second_per_s, 0)}); answered {h.answered}",
            f"  errors        {errors}" + (
                f" (median {_fmt(h.failed_after_p50_ms, 0)} ms after sending)"
                if h.errors else ""),
            f"  RPC latency   p50 {_fmt(h.p50_ms, 2)} ms, p99 {_fmt(h.p99_ms, 2)} ms, "
            f"max {_fmt(h.max_ms, 2)} ms",
            f"  generator     send lag p99 {_fmt(h.generator_lag_p99_ms, 2)} ms "
            "(how late the load generator sent)",
            f"  CPU           node pool {_fmt(h.nodepool_cpu_percent)} %, Redis "
            f"{_fmt(h.redis_cpu_percent)} %, load generator "
            f"{_fmt(h.generator_cpu_percent)} % (100 % = one core)",
            f"  RSS           node pool idle {_fmt(h.rss_idle_mb, 0)} MB, with {h.workers} "
            f"registered {_fmt(h.rss_registered_mb, 0)} MB, peak under load "
            f"{_fmt(h.rss_peak_mb, 0)} MB, end {_fmt(h.rss_end_mb, 0)} MB",
            f"                target <= 150 MB: {rss_ok}",
            f"  registration  {_fmt(h.register_seconds, 1)} s for {h.workers} workers; "
            f"online afterwards: {h.online_after}",
            "  noise         " + (
                f"steal {h.phase.steal_percent:.1f} %, other processes "
                f"{h.phase.other_percent:.0f} %" + (" NOISY" if h.phase.noisy else "")
                if h.phase else "-"),
            "  keeps up      " + ("YES" if h.keeps_up else "NO") +
            " (= no errors, every heartbeat answered, achieved >= 98 % of offered, p99 < 1 s)",
        ]
    phases = [p for r in results for p in (r.latency_phase, r.batch_phase) if p is not None]
    if heartbeat is not None and heartbeat.phase is not None:
        phases.append(heartbeat.phase)
    noisy = [p.name for p in phases if p.noisy]
    out.append("")
    limits = args.limits
    if noisy:
        out.append(f"NOISY (steal > {limits.max_steal:g} % or other processes > "
                   f"{limits.max_other:g} %): {', '.join(noisy)}.")
        out.append("Do not compare these rows; run again when the machine is quiet.")
    elif phases:
        out.append(f"Steal <= {limits.max_steal:g} % and other processes <= "
                   f"{limits.max_other:g} % in every phase: the figures are comparable.")
    return "\n".join(out)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description="Batch throughput and idle latency of no-op tasks through HiveMind, "
        "Celery, RQ and Dramatiq on one Redis server, and the node pool under 1,000 "
        "heartbeating workers.",
    )
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the batch")
    parser.add_argument("--latency-samples", type=int, default=300,
                        help="recorded one-at-a-time round trips")
    parser.add_argument("--warmup", type=int, default=30,
                        help="unrecorded round trips before the latency samples")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--skip-missing", action="store_true",
                        help="leave out peers that are not installed instead of failing")
    parser.add_argument("--hivemind-concurrency", type=int, default=2,
                        help="MAX_CONCURRENT_TASKS of each HiveMind worker")
    parser.add_argument("--rq-worker-class", default="rq.worker.SimpleWorker",
                        help="`rq worker --worker-class`; rq.Worker forks a work horse per job")
    parser.add_argument("--batch-timeout", type=float, default=400.0,
                        help="seconds a batch may take before it is cut short")
    parser.add_argument("--heartbeat-workers", type=int, default=1000)
    parser.add_argument("--heartbeat-seconds", type=float, default=20.0)
    parser.add_argument("--heartbeat-processes", type=int, default=2,
                        help="load-generator processes")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the node pool to one CPU for the heartbeat load")
    parser.add_argument("--max-steal", type=float, default=5.0,
                        help="steal percentage above which a phase is flagged NOISY")
    parser.add_argument("--max-other", type=float, default=10.0,
                        help="percentage of the machine used by processes outside the run "
                        "above which a phase is flagged NOISY")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each phase, wait up to SECONDS for a 2-second window "
                        "within --max-steal and --max-other (for shared machines)")
    parser.add_argument("--json", type=Path, help="also write the raw results to this file")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (logs) after the run")
    args = parser.parse_args(argv)
    args.limits = NoiseLimits(args.max_steal, args.max_other)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if min(args.tasks, args.latency_samples, args.heartbeat_workers) < 1 or args.warmup < 0:
        parser.error("--tasks, --latency-samples and --heartbeat-workers must be positive")
    if args.heartbeat_seconds < 3:
        parser.error("--heartbeat-seconds must be at least 3")
    return args


def missing_peers(sections: Sequence[str]) -> dict[str, str]:
    """Each selected peer whose modules are not importable, with how to install it."""
    missing = {}
    for name in sections:
        if name in REQUIREMENTS:
            modules, install = REQUIREMENTS[name]
            if any(importlib.util.find_spec(m) is None for m in modules):
                missing[name] = install
    return missing


def machine_header(args: argparse.Namespace) -> dict[str, str]:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, {cpu_model()}, {platform.system()} "
                   f"{platform.release()}",
        "python": platform.python_version(),
        "versions": ", ".join(
            f"{d} {version_of(d)}" for d in ("grpcio", "redis", "celery", "rq", "dramatiq")
        ),
        "hivemind": hivemind_revision(),
        "options": f"--tasks {args.tasks} --latency-samples {args.latency_samples} "
                   f"--warmup {args.warmup} --hivemind-concurrency {args.hivemind_concurrency} "
                   f"--rq-worker-class {args.rq_worker_class}",
    }


def hivemind_revision() -> str:
    """The commit measured, and whether hivemind/ differed from it."""
    def git(*command: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(ROOT), *command], capture_output=True, text=True,
                timeout=10, check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    if not git("status", "--porcelain", "--", "hivemind"):
        return f"commit {commit}"
    digest = hashlib.sha256(git("diff", "HEAD", "--", "hivemind").encode()).hexdigest()[:12]
    return f"commit {commit} + uncommitted changes in hivemind/ (diff sha256 {digest})"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_peers(args.sections)
    if missing:
        lines = [f"  {name}: not installed ({install})" for name, install in missing.items()]
        if not args.skip_missing:
            print("error: peers not installed (or run with --skip-missing, or `pip install -e "
                  "'.[bench]'`):\n" + "\n".join(lines), file=sys.stderr)
            return 2
        print("note: skipping peers that are not installed:\n" + "\n".join(lines))
        args.sections = [s for s in args.sections if s not in missing]
        if not args.sections:
            print("error: nothing left to run", file=sys.stderr)
            return 2

    def log(line: str) -> None:
        print(line, flush=True)

    header = machine_header(args)
    workdir = Path(tempfile.mkdtemp(prefix="hivemind-bench-"))
    log(f"working in {workdir}")
    redis_port = free_ports(1)[0]
    redis = start_redis(workdir, redis_port)
    header["redis"] = f"one redis-server on 127.0.0.1:{redis_port} (HiveMind db {HIVEMIND_DB}, " \
        "Celery db 2, RQ db 3, Dramatiq db 4, heartbeat stack db 5)"
    os.environ["HIVEMIND_BENCH_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}"
    peer_env = base_environment()
    peer_env["HIVEMIND_BENCH_REDIS_URL"] = os.environ["HIVEMIND_BENCH_REDIS_URL"]
    results: list[SystemResult] = []
    heartbeat: HeartbeatResult | None = None
    started = time.monotonic()
    try:
        with phase("quiet check (3 s idle)", args.limits, log) as quiet:
            time.sleep(3.0)
        header["before the run"] = (f"steal {quiet.steal_percent:.1f} %, other processes "
                                    f"{quiet.other_percent:.0f} % of the machine")
        if quiet.noisy:
            log("  warning: the machine is not quiet; expect NOISY phases")
        for name in SYSTEMS:
            if name not in args.sections:
                continue
            sysdir = workdir / name
            sysdir.mkdir()
            system: System
            if name == "hivemind":
                flush_db(redis_port, HIVEMIND_DB)
                system = HiveMind(sysdir, redis_port, args.hivemind_concurrency)
            elif name == "celery":
                flush_db(redis_port, 2)
                system = CeleryPeer(sysdir, peer_env)
            elif name == "rq":
                flush_db(redis_port, 3)
                system = RqPeer(sysdir, peer_env, args.rq_worker_class)
            else:
                flush_db(redis_port, 4)
                system = DramatiqPeer(sysdir, peer_env)
            results.append(run_system(system, args, log))
        if "heartbeat" in args.sections:
            hbdir = workdir / "heartbeat"
            hbdir.mkdir()
            heartbeat = run_heartbeat(hbdir, redis, redis_port, args, log)
    except KeyboardInterrupt:
        log("interrupted; stopping")
        return 130
    finally:
        redis.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    header["run time"] = f"{time.monotonic() - started:.0f} s"
    print(render(results, heartbeat, args, header))
    if args.json:
        args.json.write_text(json.dumps(
            {"header": header, "systems": [asdict(r) | {"p50_ms": r.p50, "p99_ms": r.p99,
                                                        "tasks_per_s": r.throughput}
                                           for r in results],
             "heartbeat": asdict(heartbeat) if heartbeat else None},
            indent=2, default=str))
    failed = [r.system for r in results if r.error]
    if heartbeat is not None and heartbeat.error:
        failed.append("heartbeat")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
