"""Node pool messages as plain data: the JSON the API returns and what the pages render."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from hivemind.proto import hivemind_pb2 as pb
from hivemind.states import TaskState, is_terminal

KIND_NAMES = {pb.BUNDLE: "bundle", pb.FUNCTION: "function"}


def task_view(task: pb.Task) -> dict[str, Any]:
    spec = task.spec
    req = spec.requirements
    return {
        "id": task.id,
        "name": spec.name,
        "kind": KIND_NAMES.get(spec.kind, "unknown"),
        "function": spec.function,
        "args_json": spec.args_json,
        "bundle_id": spec.bundle_id,
        "status": task.status,
        "owner": task.owner,
        "worker": task.worker,
        "attempt": task.attempt,
        "progress": task.progress,
        "progress_message": task.progress_message,
        "error_message": task.error_message,
        "timeout": spec.timeout,
        "retries": spec.retries,
        "priority": spec.priority,
        "requirements": {
            "cpu": req.cpu,
            "memory_mb": req.memory_mb,
            "gpu": req.gpu,
            "labels": list(req.labels),
        },
        "created_at": task.created_at,
        "start_time": task.start_time,
        "last_update": task.last_update,
        "finished_at": task.finished_at,
        "result": json.loads(task.result_json) if task.result_json else None,
        "has_result_archive": task.has_result_archive,
        "unschedulable_reason": task.unschedulable_reason,
        "cancel_requested": task.cancel_requested,
        "finished": is_terminal(task.status),
        "history": [
            {
                "attempt": e.attempt,
                "event": e.event,
                "worker": e.worker,
                "at": e.at,
                "detail": e.detail,
            }
            for e in task.history
        ],
    }


def worker_view(worker: pb.WorkerInfo, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    res, metrics = worker.resources, worker.metrics
    capacity = res.capacity or 1
    return {
        "node_id": worker.node_id,
        "status": worker.status,
        "last_heartbeat": worker.last_heartbeat,
        "heartbeat_age": round(max(0.0, now - worker.last_heartbeat), 3)
        if worker.last_heartbeat
        else None,
        "hostname": res.hostname,
        "address": res.address,
        "version": res.version,
        "cpu": res.cpu,
        "memory_mb": res.memory_mb,
        "gpu": res.gpu,
        "labels": list(res.labels),
        "capacity": res.capacity,
        "running": len(worker.running_task_ids),
        "running_task_ids": list(worker.running_task_ids),
        "load": round(len(worker.running_task_ids) / capacity, 3),
        "cpu_percent": metrics.cpu_percent,
        "memory_percent": metrics.memory_percent,
        "load1": metrics.load1,
    }


def stats_view(stats: pb.ClusterStats, workers: list[dict[str, Any]]) -> dict[str, Any]:
    per_minute = list(stats.finished_per_minute)
    # Tasks per second over the last full minutes (the current one is still filling).
    full = per_minute[-6:-1]
    return {
        "at": stats.at,
        "queued": stats.queued,
        "running": stats.running,
        # One counter per final state, keyed by its lower-case name ("succeeded", "timeout", ...).
        **{s.value.lower(): stats.finished_total.get(s.value, 0) for s in TaskState if s.terminal},
        "tasks_per_second": round(sum(full) / (60.0 * len(full)), 3) if full else 0.0,
        "finished_per_minute": per_minute,
        "workers_online": sum(1 for w in workers if w["status"] == "online"),
        "workers_total": len(workers),
    }


def user_view(user: pb.User) -> dict[str, Any]:
    return {
        "username": user.username,
        "role": user.role,
        "credits": user.credits,
        "created_at": user.created_at,
        "disabled": user.disabled,
    }


def when(ts: float) -> str:
    """A timestamp as UTC text, for pages."""
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def throughput_svg(per_minute: list[int], width: int = 600, height: int = 120) -> str:
    """A bar chart of tasks finished per minute, as inline SVG (numbers only, no user text)."""
    top = max(per_minute or [0]) or 1
    bar = width / max(1, len(per_minute))
    bars = []
    for i, count in enumerate(per_minute):
        h = (height - 20) * count / top
        minutes_ago = len(per_minute) - 1 - i
        bars.append(
            f'<rect x="{i * bar:.1f}" y="{height - 14 - h:.1f}" width="{max(1.0, bar - 1):.1f}" '
            f'height="{h:.1f}" class="bar"><title>{count} tasks, {minutes_ago} min ago'
            "</title></rect>"
        )
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="tasks finished per minute, last hour (peak {top})">'
        f'<text x="0" y="10" class="axis">peak {top}/min</text>'
        f"{''.join(bars)}"
        f'<text x="0" y="{height - 2}" class="axis">60 min ago</text>'
        f'<text x="{width}" y="{height - 2}" class="axis" text-anchor="end">now</text></svg>'
    )
