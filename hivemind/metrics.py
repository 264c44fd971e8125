"""The Prometheus metrics of the node pool and the workers: every name, in one place.

Each daemon keeps its metrics in a registry of its own (not prometheus_client's global one)
and serves it on its metrics port: the node pool on NODEPOOL_METRICS_PORT, a worker on the
first free port from WORKER_METRICS_PORT up (it records the one it bound in its worker
record, ``metrics_port``). 0 turns a daemon's metrics off. A port that cannot be bound is a
warning in the daemon's log, not a reason to stop running tasks.

Node pool (``hivemind_nodepool_*``):

- ``rpc_total{method,code}``, ``rpc_duration_seconds{method}``: every gRPC call; an exchange
  on a lease stream counts as ``LeaseStream.exchange``
- ``heartbeats_total``: heartbeats and registrations recorded
- ``lease_expiries_total{action}``: leases the housekeeper found expired, by what became of
  the task (``requeued``, ``failed``, ``cancelled``, ``timeout``)
- ``requeues_total{reason}``: tasks back in the queue (``lease_expired``, ``released``)
- ``tasks_finished_total{status}``, ``task_duration_seconds{status}``: outcomes recorded by
  this node pool, and how long each task ran (start to end of its last attempt)
- ``redis_duration_seconds{script}``: each task-store script's round trip to Redis
- ``queue_depth``, ``tasks_running``: read from Redis at each scrape

Worker (``hivemind_worker_*``, label ``node``):

- ``tasks_total{outcome}``, ``task_duration_seconds{outcome}``: tasks this worker ran
- ``tasks_running``, ``heartbeats_total``
- ``task_cpu_seconds``, ``task_memory_bytes``: CPU time and resident memory of the running
  tasks' processes (read at each scrape)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

log = logging.getLogger(__name__)
# No ``*_created`` series: a counter's start time doubles every series for little use.
disable_created_metrics()

#: Latency buckets (seconds) for calls and Redis round trips: 0.1 ms to 30 s.
CALL_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: Task run time buckets (seconds): 1 ms to an hour.
TASK_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
#: Ports a worker tries from WORKER_METRICS_PORT up, for several workers on one host.
WORKER_PORT_TRIES = 64


class NodePoolMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.rpc_total = Counter(
            "hivemind_nodepool_rpc",
            "gRPC calls, by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "hivemind_nodepool_rpc_duration_seconds",
            "Seconds a gRPC call took, by method.",
            ["method"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.heartbeats = Counter(
            "hivemind_nodepool_heartbeats",
            "Worker heartbeats and registrations recorded.",
            registry=r,
        )
        self.lease_expiries = Counter(
            "hivemind_nodepool_lease_expiries",
            "Expired leases, by what became of the task.",
            ["action"],
            registry=r,
        )
        self.requeues = Counter(
            "hivemind_nodepool_requeues",
            "Tasks put back in the queue, by reason.",
            ["reason"],
            registry=r,
        )
        self.tasks_finished = Counter(
            "hivemind_nodepool_tasks_finished",
            "Task outcomes recorded, by final status.",
            ["status"],
            registry=r,
        )
        self.task_seconds = Histogram(
            "hivemind_nodepool_task_duration_seconds",
            "Seconds a task's last attempt ran, by final status.",
            ["status"],
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.redis_seconds = Histogram(
            "hivemind_nodepool_redis_duration_seconds",
            "Seconds a task-store script took in Redis, round trip, by script.",
            ["script"],
            buckets=CALL_BUCKETS,
            registry=r,
        )

    def observe_script(self, script: str, seconds: float) -> None:
        self.redis_seconds.labels(script).observe(seconds)

    def watch_queue(self, read: Callable[[], dict[str, int]]) -> None:
        """Gauges read at each scrape: ``read()`` gives ``queued`` and ``running``."""
        self.registry.register(_Reading(read))  # type: ignore[arg-type]

    def finished(self, status: str, record: dict[str, str]) -> None:
        """One outcome recorded, with the task's hash after it."""
        self.tasks_finished.labels(status).inc()
        try:
            ran = float(record.get("finished_at") or 0) - float(record.get("start_time") or 0)
        except ValueError:
            return
        if ran >= 0 and record.get("start_time"):
            self.task_seconds.labels(status).observe(ran)


class _Reading:
    """Queue depth and running tasks, read from Redis when scraped (none when it is down)."""

    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self.read = read

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            counts = self.read()
        except Exception as exc:  # Redis down: the scrape still answers, without these
            log.debug("metrics: cannot read the queue: %s", exc)
            return
        yield GaugeMetricFamily(
            "hivemind_nodepool_queue_depth", "Tasks waiting in the queue.", counts["queued"]
        )
        yield GaugeMetricFamily(
            "hivemind_nodepool_tasks_running", "Tasks holding a lease.", counts["running"]
        )


class WorkerMetrics:
    """``running()``: tasks held now; ``task_processes()``: the psutil processes of them."""

    def __init__(
        self, node_id: str, running: Callable[[], int], task_processes: Callable[[], list[Any]]
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r, node = self.registry, {"node": node_id}
        self.tasks = Counter(
            "hivemind_worker_tasks",
            "Tasks this worker ran, by outcome.",
            ["node", "outcome"],
            registry=r,
        )
        self.task_seconds = Histogram(
            "hivemind_worker_task_duration_seconds",
            "Seconds a task ran here, by outcome.",
            ["node", "outcome"],
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.heartbeats = Counter(
            "hivemind_worker_heartbeats", "Heartbeats sent.", ["node"], registry=r
        ).labels(**node)
        Gauge(
            "hivemind_worker_tasks_running",
            "Tasks held now (running, or ended and not yet reported).",
            ["node"],
            registry=r,
        ).labels(**node).set_function(running)
        self.node_id = node_id
        r.register(_TaskProcesses(node_id, task_processes))  # type: ignore[arg-type]

    def ran(self, outcome: str, seconds: float) -> None:
        self.tasks.labels(self.node_id, outcome).inc()
        self.task_seconds.labels(self.node_id, outcome).observe(max(0.0, seconds))


class _TaskProcesses:
    """CPU and memory of the running tasks' processes (psutil), read when scraped."""

    def __init__(self, node_id: str, processes: Callable[[], list[Any]]) -> None:
        self.node_id = node_id
        self.processes = processes

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        import psutil
        from prometheus_client.core import GaugeMetricFamily

        cpu = memory = 0.0
        for process in self.processes():
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    cpu += times.user + times.system
                    memory += process.memory_info().rss
            except psutil.Error:
                continue  # it ended meanwhile
        labels = ["node"]
        cpu_family = GaugeMetricFamily(
            "hivemind_worker_task_cpu_seconds",
            "CPU seconds used so far by the running tasks' processes.",
            labels=labels,
        )
        cpu_family.add_metric([self.node_id], cpu)
        memory_family = GaugeMetricFamily(
            "hivemind_worker_task_memory_bytes",
            "Resident memory of the running tasks' processes.",
            labels=labels,
        )
        memory_family.add_metric([self.node_id], memory)
        yield from (cpu_family, memory_family)


class MetricsServer:
    """A registry served over HTTP (``/metrics``) in a daemon thread."""

    def __init__(self, server: Any, port: int) -> None:
        self._server = server
        self.port = port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(
    registry: CollectorRegistry, host: str, port: int, tries: int = 1
) -> MetricsServer | None:
    """Serve ``registry`` on ``host`` at ``port`` (or, with ``tries``, the next free one up);
    None when ``port`` is 0, or no port was free (then it is logged)."""
    if port == 0:
        return None
    from prometheus_client import start_http_server

    last: OSError | None = None
    for candidate in range(port, min(65536, port + tries)):
        try:
            server, _thread = start_http_server(candidate, addr=host, registry=registry)
        except OSError as exc:
            last = exc
            continue
        return MetricsServer(server, candidate)
    log.warning(
        "metrics not served: cannot bind %s:%d%s: %s",
        host,
        port,
        f" (nor the next {tries - 1} ports)" if tries > 1 else "",
        (last.strerror if last else None) or last,
    )
    return None
