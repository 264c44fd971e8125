"""The live cluster as the doctor reads it from Redis: workers, queue, running tasks.

Reads only. Every read is a pipeline, so a large cluster costs a few round trips, and each is
shared between the checks of one run through :meth:`Context.shared`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from doctor.context import Context
from hivemind import keys
from hivemind.worker_records import WorkerCaps, caps_from_record

#: Most task records one check reads; a bigger backlog is sampled from the newest.
TASK_SCAN_LIMIT = 50_000


@dataclass(frozen=True)
class WorkerRow:
    node_id: str
    status: str
    last_heartbeat: float
    #: As the node pool recorded it: gRPC's peer form (``ipv4:10.0.0.5:41234``).
    address: str
    hostname: str
    caps: WorkerCaps
    #: Tasks the worker's own set says it holds.
    tasks: frozenset[str] = field(default_factory=frozenset)
    #: Where it serves Prometheus metrics (0: it does not say).
    metrics_port: int = 0

    def heartbeat_age(self, now: float) -> float:
        return max(0.0, now - self.last_heartbeat) if self.last_heartbeat else float("inf")

    def live(self, now: float, lease_timeout: float) -> bool:
        return self.status == "online" and self.heartbeat_age(now) <= lease_timeout


def field_float(value: Any) -> float:
    """A Redis hash field as a number; missing or malformed is 0 (never a crash)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def workers(ctx: Context) -> list[WorkerRow]:
    """Every worker listed in ``worker_nodes``, with its ``worker:<id>`` hash and task set."""

    def read() -> list[WorkerRow]:
        client = ctx.redis()
        summaries = client.hgetall(keys.WORKER_NODES)
        ids = sorted(summaries)
        pipe = client.pipeline(transaction=False)
        for node_id in ids:
            pipe.hgetall(keys.worker_key(node_id))
            pipe.smembers(keys.worker_tasks_key(node_id))
        replies = pipe.execute()
        rows = []
        for index, node_id in enumerate(ids):
            record, tasks = replies[2 * index], replies[2 * index + 1]
            try:
                summary = json.loads(summaries[node_id])
            except ValueError:
                summary = {}
            rows.append(
                WorkerRow(
                    node_id=node_id,
                    status=record.get("status") or str(summary.get("status") or "unknown"),
                    last_heartbeat=field_float(
                        record.get("last_heartbeat") or summary.get("last_heartbeat")
                    ),
                    address=record.get("address") or "",
                    hostname=record.get("hostname") or "",
                    caps=caps_from_record(record),
                    tasks=frozenset(tasks),
                    metrics_port=int(field_float(record.get("metrics_port"))),
                )
            )
        return rows

    return ctx.shared("cluster.workers", read)


def live_workers(ctx: Context) -> list[WorkerRow]:
    now, lease = ctx.now(), ctx.settings.effective_lease_timeout
    return [row for row in workers(ctx) if row.live(now, lease)]


TASK_FIELDS = (
    "status",
    "owner",
    "name",
    "worker",
    "attempt",
    "created_at",
    "start_time",
    "last_update",
    "finished_at",
    "timeout",
    "error_message",
    "req_cpu",
    "req_memory_mb",
    "req_gpu",
    "req_labels",
    "unschedulable_reason",
)


def task_records(ctx: Context, task_ids: list[str]) -> dict[str, dict[str, str]]:
    """``task_id -> fields`` for the ids that have a record (missing ids are left out)."""
    client = ctx.redis()
    pipe = client.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.hmget(keys.task_key(task_id), TASK_FIELDS)
    records = {}
    for task_id, values in zip(task_ids, pipe.execute(), strict=True):
        if values[0] is not None:
            records[task_id] = dict(zip(TASK_FIELDS, (v or "" for v in values), strict=True))
    return records


@dataclass(frozen=True)
class QueueView:
    #: ``task_queue``, oldest first (the guide's `llen task_queue`).
    queued_ids: list[str]
    records: dict[str, dict[str, str]]


def queue(ctx: Context) -> QueueView:
    def read() -> QueueView:
        ids = ctx.redis().lrange(keys.TASK_QUEUE, 0, TASK_SCAN_LIMIT - 1)
        return QueueView(ids, task_records(ctx, ids))

    return ctx.shared("cluster.queue", read)


@dataclass(frozen=True)
class RunningView:
    #: RUNNING task id -> lease expiry (unix seconds), from ``leases``.
    leases: dict[str, float]
    records: dict[str, dict[str, str]]


def running(ctx: Context) -> RunningView:
    """Leased tasks with their records, plus any task a worker's set names."""

    def read() -> RunningView:
        client = ctx.redis()
        leased = client.zrange(keys.LEASES, 0, TASK_SCAN_LIMIT - 1, withscores=True)
        leases = {task_id: score / 1000 for task_id, score in leased}
        held = {task_id for row in workers(ctx) for task_id in row.tasks}
        ids = sorted(set(leases) | held)
        return RunningView(leases, task_records(ctx, ids))

    return ctx.shared("cluster.running", read)


def recent_tasks(ctx: Context, since: float) -> dict[str, dict[str, str]]:
    """Records of the tasks created since ``since`` (unix seconds), newest first, capped."""
    client = ctx.redis()
    ids = client.zrevrangebyscore(
        keys.TASKS_ALL, "+inf", int(since * 1000), start=0, num=TASK_SCAN_LIMIT
    )
    return task_records(ctx, ids)


def all_task_statuses(ctx: Context) -> dict[str, str]:
    """``task_id -> status`` for the newest tasks of ``tasks:all`` (missing records too, as '')."""

    def read() -> dict[str, str]:
        client = ctx.redis()
        ids = client.zrevrange(keys.TASKS_ALL, 0, TASK_SCAN_LIMIT - 1)
        pipe = client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hget(keys.task_key(task_id), "status")
        return {task_id: status or "" for task_id, status in zip(ids, pipe.execute(), strict=True)}

    return ctx.shared("cluster.statuses", read)


def requirements(record: dict[str, str]) -> dict[str, Any]:
    """A task record's requirements in the shape the node pool's matcher takes."""
    return {
        "cpu": int(field_float(record.get("req_cpu"))),
        "memory_mb": int(field_float(record.get("req_memory_mb"))),
        "gpu": int(field_float(record.get("req_gpu"))),
        "labels": [x for x in (record.get("req_labels") or "").split(",") if x],
    }
