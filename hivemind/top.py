"""`hivemind top`: one snapshot of the cluster, read straight from Redis and the services.

A snapshot never raises: with Redis down it still has the services (which say so) and an
error in place of the cluster's state; with the node pool down, Redis still has the workers,
the queue and the running tasks. It is plain data (``to_dict``/``from_dict``), so that
``--host`` can take it on another host (``hivemind top --once --json`` over SSH) and render it
here. :class:`Rates` turns successive snapshots into throughput per second.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from hivemind import keys, redis_client
from hivemind.config import Settings
from hivemind.states import TERMINAL_STATES

#: Most queued tasks whose labels a snapshot reads; a deeper queue is counted, not grouped.
QUEUE_SCAN = 10_000
#: Running tasks shown, slowest first.
SLOWEST_SHOWN = 8
#: Minutes of per-minute counts a snapshot carries (for a sparkline without history).
MINUTES_SHOWN = 15
_TERMINAL = tuple(sorted(state.value for state in TERMINAL_STATES))


@dataclass(frozen=True)
class Service:
    name: str
    state: str  # healthy, running (not healthy), stopped, n/a
    detail: str


@dataclass(frozen=True)
class WorkerLine:
    node_id: str
    status: str
    heartbeat_age: float
    load1: float
    cpu_percent: float
    running: int
    capacity: int
    labels: list[str]
    hostname: str


@dataclass(frozen=True)
class RunningTask:
    task_id: str
    name: str
    owner: str
    worker: str
    running_for: float
    progress: float
    message: str


@dataclass
class Snapshot:
    host: str
    taken_at: float
    services: list[Service]
    redis_error: str = ""  # set when Redis could not be read: the rest is then empty
    workers: list[WorkerLine] = field(default_factory=list)
    queued: int = 0
    queued_by_label: dict[str, int] = field(default_factory=dict)  # "" = no label asked
    running: int = 0
    slowest: list[RunningTask] = field(default_factory=list)
    finished_totals: dict[str, int] = field(default_factory=dict)  # status -> ever
    per_minute: list[dict[str, int]] = field(default_factory=list)  # oldest first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        return cls(
            host=str(data["host"]),
            taken_at=float(data["taken_at"]),
            services=[Service(**s) for s in data["services"]],
            redis_error=str(data.get("redis_error", "")),
            workers=[WorkerLine(**w) for w in data.get("workers", [])],
            queued=int(data.get("queued", 0)),
            queued_by_label={str(k): int(v) for k, v in data.get("queued_by_label", {}).items()},
            running=int(data.get("running", 0)),
            slowest=[RunningTask(**t) for t in data.get("slowest", [])],
            finished_totals={str(k): int(v) for k, v in data.get("finished_totals", {}).items()},
            per_minute=[{str(k): int(v) for k, v in m.items()} for m in data.get("per_minute", [])],
        )

    @property
    def redis_down(self) -> bool:
        return bool(self.redis_error)


def take_snapshot(settings: Settings, timeout: float = 1.0) -> Snapshot:
    """This host's services and the cluster's state in Redis, now."""
    from hivemind import stack

    services = []
    for state in stack.status(settings).services:
        if not state.enabled:
            shown = "n/a"
        else:
            shown = "healthy" if state.healthy else "running" if state.running else "stopped"
        services.append(Service(state.name, shown, state.detail))
    snapshot = Snapshot(socket.gethostname(), time.time(), services)
    client = redis_client.connect(
        settings,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    try:
        _read_cluster(client, snapshot)
    except (redis.RedisError, OSError) as exc:
        snapshot.redis_error = (str(exc) or type(exc).__name__).rstrip(".")
    finally:
        client.close()
    return snapshot


def _read_cluster(client: redis.Redis, snapshot: Snapshot) -> None:
    now = snapshot.taken_at
    this_minute = int(now // 60)
    minutes = range(this_minute - MINUTES_SHOWN + 1, this_minute + 1)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.WORKER_NODES)
    pipe.lrange(keys.TASK_QUEUE, 0, QUEUE_SCAN - 1)
    pipe.llen(keys.TASK_QUEUE)
    pipe.zrange(keys.LEASES, 0, -1)
    pipe.hgetall(keys.STATS_FINISHED)
    for minute in minutes:
        pipe.hgetall(keys.stats_minute_key(minute))
    summaries, queued_ids, queued, leased, totals, *per_minute = pipe.execute()
    snapshot.queued, snapshot.running = int(queued), len(leased)
    snapshot.finished_totals = {s: int(n) for s, n in totals.items()}
    snapshot.per_minute = [{s: int(n) for s, n in m.items()} for m in per_minute]

    node_ids = sorted(summaries)
    task_fields = ("name", "owner", "worker", "start_time", "progress", "progress_message")
    pipe = client.pipeline(transaction=False)
    for node_id in node_ids:
        pipe.hget(keys.worker_key(node_id), "capacity")
    for task_id in queued_ids:
        pipe.hget(keys.task_key(task_id), "req_labels")
    for task_id in leased:
        pipe.hmget(keys.task_key(task_id), task_fields)
    replies = pipe.execute()
    capacities = replies[: len(node_ids)]
    labels = replies[len(node_ids) : len(node_ids) + len(queued_ids)]
    records = replies[len(node_ids) + len(queued_ids) :]

    for node_id, capacity in zip(node_ids, capacities, strict=True):
        summary = _json(summaries[node_id])
        snapshot.workers.append(
            WorkerLine(
                node_id=node_id,
                status=str(summary.get("status") or "unknown"),
                heartbeat_age=round(max(0.0, now - _number(summary.get("last_heartbeat"))), 1),
                load1=_number(summary.get("load1")),
                cpu_percent=_number(summary.get("cpu_percent")),
                running=int(_number(summary.get("running"))),
                capacity=int(_number(capacity)),
                labels=[str(x) for x in summary.get("labels") or []],
                hostname=str(summary.get("hostname") or ""),
            )
        )
    by_label: dict[str, int] = {}
    for text in labels:
        key = ",".join(sorted(x for x in (text or "").split(",") if x))
        by_label[key] = by_label.get(key, 0) + 1
    if queued > len(queued_ids):  # past the scan: counted, not grouped
        by_label["(not read)"] = queued - len(queued_ids)
    snapshot.queued_by_label = dict(sorted(by_label.items(), key=lambda kv: -kv[1]))

    tasks = []
    for task_id, values in zip(leased, records, strict=True):
        record = dict(zip(task_fields, values, strict=True))
        started = _number(record["start_time"])
        tasks.append(
            RunningTask(
                task_id=task_id,
                name=record["name"] or "",
                owner=record["owner"] or "",
                worker=record["worker"] or "",
                running_for=round(max(0.0, now - started), 1) if started else 0.0,
                progress=_number(record["progress"]),
                message=record["progress_message"] or "",
            )
        )
    tasks.sort(key=lambda t: -t.running_for)
    snapshot.slowest = tasks[:SLOWEST_SHOWN]


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


class Rates:
    """Tasks finished per second from successive snapshots' totals, over the last minute."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def add(self, snapshot: Snapshot) -> None:
        if snapshot.redis_down:
            return
        self._samples.append((snapshot.taken_at, dict(snapshot.finished_totals)))
        while self._samples and snapshot.taken_at - self._samples[0][0] > self.window:
            self._samples.popleft()

    def per_second(self) -> list[float]:
        """Finished per second between successive snapshots, oldest first."""
        points = list(self._samples)
        return [
            max(0, sum(b.values()) - sum(a.values())) / max(1e-6, tb - ta)
            for (ta, a), (tb, b) in itertools.pairwise(points)
        ]

    def last_minute(self, snapshot: Snapshot) -> tuple[float, float]:
        """(tasks/s, failed share) over the history held; from the newest full minute's
        count when there is no history yet (a single ``--once`` snapshot)."""
        points = list(self._samples)
        if len(points) >= 2:
            (ta, a), (tb, b) = points[0], points[-1]
            finished = {s: b.get(s, 0) - a.get(s, 0) for s in _TERMINAL}
            seconds = max(1e-6, tb - ta)
        else:
            finished = snapshot.per_minute[-2] if len(snapshot.per_minute) >= 2 else {}
            seconds = 60.0
        total = sum(max(0, n) for n in finished.values())
        failed = total - max(0, finished.get("SUCCEEDED", 0))
        return total / seconds, (failed / total if total else 0.0)


BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    """``values`` as block characters, scaled to their maximum (all lowest when all 0)."""
    top = max(values, default=0.0)
    if top <= 0:
        return BARS[0] * len(values)
    return "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1) + 0.5))] for v in values)


def snapshot_over(runner: Any, hivemind: str, timeout: float = 20.0) -> Snapshot:
    """The snapshot of the host behind ``runner`` (`hivemind top --once --json` there)."""
    from hivemind.errors import RemoteError

    done = runner.run(f"{hivemind} top --once --json", timeout=timeout)
    if done.exit_code != 0:
        stderr = done.stderr.decode(errors="replace").strip()
        reason = f"`hivemind top` exited {done.exit_code}: {stderr[-300:] or '(no output)'}"
        raise RemoteError(runner.host, reason)
    try:
        return Snapshot.from_dict(json.loads(done.stdout))
    except (ValueError, KeyError, TypeError) as exc:
        reason = f"`hivemind top --json` printed no snapshot: {exc}"
        raise RemoteError(runner.host, reason) from None
